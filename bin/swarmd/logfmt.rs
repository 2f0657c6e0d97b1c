//! Log lines in the shape SwarmKit's logrus text formatter gives them:
//! `time="2026-11-22T07:18:11Z" level=info msg="node is ready" node.id=abc`, on stderr.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the subscriber at `level` (`debug`, `info`, `warn`, `error`, `fatal`, `panic`).
pub fn init(level: &str) -> Result<(), String> {
    let directive = match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => return Err(format!("not a valid logrus Level: \"{level}\"")),
    };
    // Dependencies (h2, hyper, openraft) are chatty at debug; keep them one level quieter.
    let filter = EnvFilter::new(format!(
        "{directive},h2=warn,hyper=warn,tower=warn,openraft=warn"
    ));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(LogrusFormat)
        .init();
    Ok(())
}

struct LogrusFormat;

/// Collects the message and the other fields of one event.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
    level_override: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.record_text(field, text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_text(field, value.to_string());
    }
}

impl Fields {
    fn record_text(&mut self, field: &Field, text: String) {
        match field.name() {
            "message" => self.message = text,
            "level" => self.level_override = Some(text),
            name => self.rest.push((name.to_string(), text)),
        }
    }
}

/// Quotes a value the way logrus does when it holds anything but plain characters.
fn quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+:".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

impl<S, N> FormatEvent<S, N> for LogrusFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let level = fields
            .level_override
            .unwrap_or_else(|| level_name(event.metadata().level()).to_string());
        let mut line = format!(
            "time=\"{now}\" level={level} msg={}",
            format_args!("{:?}", fields.message)
        );
        let module = event.metadata().target().split("::").next().unwrap_or("");
        if !module.is_empty() && module != "swarmd" {
            let _ = write!(line, " module={module}");
        }
        for (k, v) in fields.rest {
            let _ = write!(line, " {k}={}", quoted(&v));
        }
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn quoting_follows_logrus() {
        assert_eq!(quoted("abc123"), "abc123");
        assert_eq!(quoted("0.0.0.0:4242"), "0.0.0.0:4242");
        assert_eq!(quoted("two words"), "\"two words\"");
        assert_eq!(quoted(""), "\"\"");
    }
}
