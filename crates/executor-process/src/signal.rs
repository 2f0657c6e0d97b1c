//! Stop signals as a container spec names them (`SIGTERM`, `TERM`, `sigint`, `15`), parsed the
//! way moby's `signal.ParseSignal` does: a number, or a name with or without `SIG` in any case.
//! Sending them is the controller's business.

use rustix::process::Signal;

use crate::Error;

/// The signals a stop signal may name, by their names without `SIG`.
const NAMES: &[(&str, Signal)] = &[
    ("HUP", Signal::HUP),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("ILL", Signal::ILL),
    ("TRAP", Signal::TRAP),
    ("ABRT", Signal::ABORT),
    ("IOT", Signal::ABORT),
    ("BUS", Signal::BUS),
    ("FPE", Signal::FPE),
    ("KILL", Signal::KILL),
    ("USR1", Signal::USR1),
    ("SEGV", Signal::SEGV),
    ("USR2", Signal::USR2),
    ("PIPE", Signal::PIPE),
    ("ALRM", Signal::ALARM),
    ("TERM", Signal::TERM),
    ("CHLD", Signal::CHILD),
    ("CONT", Signal::CONT),
    ("STOP", Signal::STOP),
    ("TSTP", Signal::TSTP),
    ("TTIN", Signal::TTIN),
    ("TTOU", Signal::TTOU),
    ("URG", Signal::URG),
    ("XCPU", Signal::XCPU),
    ("XFSZ", Signal::XFSZ),
    ("VTALRM", Signal::VTALARM),
    ("PROF", Signal::PROF),
    ("WINCH", Signal::WINCH),
    ("IO", Signal::IO),
    ("SYS", Signal::SYS),
];

/// The signal `raw` names: a number (`15`) or a name (`SIGTERM`, `TERM`, `term`). Real-time
/// signals are not supported.
pub fn parse_signal(raw: &str) -> Result<Signal, Error> {
    let invalid = || Error::InvalidSignal(raw.to_string());
    let trimmed = raw.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return Signal::from_named_raw(number).ok_or_else(invalid);
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Option<Signal>) {
        assert_eq!(parse_signal(raw).ok(), expected, "{raw:?}");
    }

    #[test]
    fn names_with_and_without_sig_in_any_case() {
        check("SIGTERM", Some(Signal::TERM));
        check("TERM", Some(Signal::TERM));
        check("sigint", Some(Signal::INT));
        check("Hup", Some(Signal::HUP));
        check("SIGKILL", Some(Signal::KILL));
        check("SIGUSR1", Some(Signal::USR1));
    }

    #[test]
    fn numbers() {
        check("15", Some(Signal::TERM));
        check("9", Some(Signal::KILL));
        check("2", Some(Signal::INT));
    }

    #[test]
    fn rejects_what_names_no_signal() {
        check("", None);
        check("SIG", None);
        check("SIGFOO", None);
        check("0", None);
        check("-15", None);
        check("999", None);
        assert_eq!(
            parse_signal("SIGFOO").unwrap_err().to_string(),
            "process executor: invalid stop signal \"SIGFOO\""
        );
    }
}
