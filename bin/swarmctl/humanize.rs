//! Human-readable renderings that must match the reference client character for character:
//! go-humanize relative times and IEC sizes and Go's RFC 3339 timestamps with nanoseconds (spec 1.1
//! "Relative times", "Sizes", "Timestamps"); Go's duration text is `api::gofmt`.

use std::time::{SystemTime, UNIX_EPOCH};

const SECOND: i128 = 1_000_000_000;
const MINUTE: i128 = 60 * SECOND;
const HOUR: i128 = 60 * MINUTE;
const DAY: i128 = 24 * HOUR;
const WEEK: i128 = 7 * DAY;
const MONTH: i128 = 30 * DAY;
const YEAR: i128 = 12 * MONTH;
const LONG_TIME: i128 = 37 * YEAR;

/// go-humanize's magnitudes: (upper bound exclusive, format, divisor). `{}` is the count,
/// `%s` the label.
const MAGNITUDES: &[(i128, &str, i128)] = &[
    (SECOND, "now", 1),
    (2 * SECOND, "1 second %s", 1),
    (MINUTE, "{} seconds %s", SECOND),
    (2 * MINUTE, "1 minute %s", 1),
    (HOUR, "{} minutes %s", MINUTE),
    (2 * HOUR, "1 hour %s", 1),
    (DAY, "{} hours %s", HOUR),
    (2 * DAY, "1 day %s", 1),
    (WEEK, "{} days %s", DAY),
    (2 * WEEK, "1 week %s", 1),
    (MONTH, "{} weeks %s", WEEK),
    (2 * MONTH, "1 month %s", 1),
    (YEAR, "{} months %s", MONTH),
    (18 * MONTH, "1 year %s", 1),
    (2 * YEAR, "2 years %s", 1),
    (LONG_TIME, "{} years %s", YEAR),
    (i128::MAX, "a long while %s", 1),
];

/// `ts` relative to `now`: "now", "4 seconds ago", "2 weeks from now"...
pub fn relative_time_at(ts: &prost_types::Timestamp, now: SystemTime) -> String {
    let then = i128::from(ts.seconds) * SECOND + i128::from(ts.nanos);
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let (diff, label) = if then > now {
        (then - now, "from now")
    } else {
        (now - then, "ago")
    };
    let &(_, format, div) = MAGNITUDES
        .iter()
        .find(|(bound, _, _)| *bound > diff)
        .unwrap_or(&MAGNITUDES[MAGNITUDES.len() - 1]);
    format
        .replace("{}", &(diff / div).to_string())
        .replace("%s", label)
}

/// go-humanize `IBytes`: "9 B", "1.0 KiB", "256 MiB", "8.0 GiB". Negative values are read as
/// the unsigned 64-bit number Go would see.
pub fn iec_bytes(n: i64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let s = n as u64;
    if s < 10 {
        return format!("{s} B");
    }
    let v = s as f64;
    // Go computes floor(log(s)/log(1024)) in floating point.
    let e = (v.ln() / 1024f64.ln()).floor() as i32;
    let val = (v / 1024f64.powi(e) * 10.0 + 0.5).floor() / 10.0;
    let unit = UNITS[e.clamp(0, 6) as usize];
    if val < 10.0 {
        format!("{val:.1} {unit}")
    } else {
        format!("{val:.0} {unit}")
    }
}

/// Go's `time.RFC3339Nano` in UTC: `2026-11-22T07:18:11.942543956Z`, fraction trimmed of
/// trailing zeros and omitted when zero.
pub fn rfc3339_nanos(ts: &prost_types::Timestamp) -> String {
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if ts.nanos > 0 {
        let frac = format!("{:09}", ts.nanos);
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ago(diff_ns: i128) -> String {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let then = 2_000_000_000i128 * SECOND - diff_ns;
        let ts = prost_types::Timestamp {
            seconds: then.div_euclid(SECOND) as i64,
            nanos: then.rem_euclid(SECOND) as i32,
        };
        relative_time_at(&ts, now)
    }

    #[test]
    fn relative_time_boundaries() {
        let cases: &[(i128, &str)] = &[
            (0, "now"),
            (SECOND - 1, "now"),
            (SECOND, "1 second ago"),
            (2 * SECOND - 1, "1 second ago"),
            (2 * SECOND, "2 seconds ago"),
            (59 * SECOND + 999, "59 seconds ago"),
            (MINUTE, "1 minute ago"),
            (2 * MINUTE, "2 minutes ago"),
            (HOUR - 1, "59 minutes ago"),
            (HOUR, "1 hour ago"),
            (2 * HOUR, "2 hours ago"),
            (DAY - 1, "23 hours ago"),
            (DAY, "1 day ago"),
            (2 * DAY, "2 days ago"),
            (WEEK - 1, "6 days ago"),
            (WEEK, "1 week ago"),
            (2 * WEEK, "2 weeks ago"),
            (29 * DAY, "4 weeks ago"),
            (MONTH, "1 month ago"),
            (2 * MONTH, "2 months ago"),
            (YEAR - 1, "11 months ago"),
            (YEAR, "1 year ago"),
            (18 * MONTH, "2 years ago"),
            (2 * YEAR, "2 years ago"),
            (3 * YEAR, "3 years ago"),
            (LONG_TIME, "a long while ago"),
            (-5 * SECOND, "5 seconds from now"),
            (-(SECOND / 2), "now"),
        ];
        for &(diff, want) in cases {
            assert_eq!(ago(diff), want, "diff {diff}ns");
        }
    }

    #[test]
    fn iec_bytes_boundaries() {
        let cases: &[(i64, &str)] = &[
            (0, "0 B"),
            (9, "9 B"),
            (10, "10 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (10 * 1024 - 1, "10 KiB"),
            (256 * 1024 * 1024, "256 MiB"),
            (8 * 1024 * 1024 * 1024, "8.0 GiB"),
            (1024 * 1024 * 1024, "1.0 GiB"),
            (1024i64.pow(4), "1.0 TiB"),
            (1024i64.pow(5), "1.0 PiB"),
            (1024i64.pow(6), "1.0 EiB"),
            (4 * 1024 * 1024 + 1, "4.0 MiB"),
        ];
        for &(n, want) in cases {
            assert_eq!(iec_bytes(n), want, "{n}");
        }
    }

    #[test]
    fn rfc3339_nanos_trims_fraction() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(rfc3339_nanos(&ts(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_nanos(&ts(1_795_331_891, 942_543_956)),
            "2026-11-22T07:18:11.942543956Z"
        );
        assert_eq!(
            rfc3339_nanos(&ts(951_782_400, 500_000_000)),
            "2000-02-29T00:00:00.5Z"
        );
        assert_eq!(rfc3339_nanos(&ts(-1, 10)), "1969-12-31T23:59:59.00000001Z");
    }
}
