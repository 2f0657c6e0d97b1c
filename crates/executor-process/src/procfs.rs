//! What this crate reads from /proc (Linux only): a process's start time and state, which tell a
//! live process from a gone one whose PID was reused, and the host's name and memory for
//! `describe`. Parsing is kept apart from reading so that tests can feed it text.

use std::io;
use std::path::Path;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    /// Field 22: clock ticks after boot at which the process started; with the PID it names one
    /// process for the life of the host.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether it has ended and only waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// `/proc/<pid>/stat` of `pid`; `None` when there is no such process.
pub fn read_stat(pid: i32) -> io::Result<Option<ProcStat>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable /proc/{pid}/stat: {text:?}"),
            )
        }),
        // ESRCH shows when the process goes between open and read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may itself
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state), so field 22 is the 19th after it.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// The host's name, from the kernel.
pub fn hostname() -> io::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_string())
}

/// Total memory in bytes, from /proc/meminfo.
pub fn memory_total() -> io::Result<i64> {
    let path = Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path)?;
    parse_meminfo_total(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no MemTotal in {}", path.display()),
        )
    })
}

/// `MemTotal:  16318412 kB` in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: i64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (we ird) (name) S 1 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 2342912 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (cut) S 1 2"), None);
    }

    #[test]
    fn our_own_stat_reads() {
        let me = read_stat(std::process::id() as i32)
            .expect("read")
            .expect("exists");
        assert!(!me.is_zombie() && me.start_time > 0, "{me:?}");
        // PIDs are below 2^22 on Linux.
        assert_eq!(read_stat(i32::MAX).expect("read"), None);
    }

    #[test]
    fn meminfo_total_is_in_bytes() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(16318412 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert!(memory_total().expect("meminfo") > 0);
    }
}
