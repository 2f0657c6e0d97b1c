//! Go's text formats where SwarmKit's users see them, in one place for swarmctl and the control
//! API alike: `time.ParseDuration` and `time.Duration.String`, `strconv.FormatFloat(v, 'g', -1,
//! 64)` (what `%g` prints), `strconv.Quote` (what `%q` prints) and one `encoding/csv` record
//! (pflag's `StringSlice`, SwarmKit's generic resource lists). Pure functions; the test tables
//! are Go's own.

use unicode_general_category::{GeneralCategory, get_general_category};

const SECOND: u64 = 1_000_000_000;

/// Go's `strconv.Quote` (`%q`): double quotes, Go's escapes for quotes, backslashes and the
/// C escapes, `\xNN` for other ASCII controls and `\uNNNN`/`\UNNNNNNNN` for any other rune
/// that is not printable (`strconv.IsPrint`).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if is_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
fn is_print(c: char) -> bool {
    let r = c as u32;
    if r <= 0xff {
        return (0x20..=0x7e).contains(&r) || ((0xa1..=0xff).contains(&r) && r != 0xad);
    }
    !matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Surrogate
            | GeneralCategory::PrivateUse
            | GeneralCategory::Unassigned
            | GeneralCategory::SpaceSeparator
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// The `time` package's own quoting in its errors: ASCII controls and every non-ASCII byte
/// become `\xNN`.
fn time_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c.is_ascii() && c >= ' ' {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out.push('"');
    out
}

/// Go's `time.ParseDuration`: a signed sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), no spaces: `300ms`, `-1.5h`,
/// `2h45m`. Returns nanoseconds, or Go's error text.
pub fn parse_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", time_quote(orig));
    let mut s = orig.as_bytes();
    let mut neg = false;
    if let Some(&c) = s.first()
        && (c == b'-' || c == b'+')
    {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u64 = 1 << 63;
    let mut d: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // The integer part.
        let mut v: u64 = 0;
        let mut i = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(s[i] - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
            i += 1;
        }
        let pre = i > 0;
        s = &s[i..];
        // The fraction: digits past what fits are read and dropped.
        let mut f: u64 = 0;
        let mut scale = 1.0f64;
        let mut post = false;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let mut i = 0;
            let mut overflow = false;
            while i < s.len() && s[i].is_ascii_digit() {
                if !overflow {
                    if f > (LIMIT - 1) / 10 {
                        overflow = true;
                    } else {
                        let y = f * 10 + u64::from(s[i] - b'0');
                        if y > LIMIT {
                            overflow = true;
                        } else {
                            f = y;
                            scale *= 10.0;
                        }
                    }
                }
                i += 1;
            }
            post = i > 0;
            s = &s[i..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        // The unit: everything up to the next number.
        let i = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if i == 0 {
            return Err(format!(
                "time: missing unit in duration {}",
                time_quote(orig)
            ));
        }
        let u = std::str::from_utf8(&s[..i]).expect("a unit ends at an ASCII byte of a str");
        s = &s[i..];
        let unit: u64 = match u {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => SECOND,
            "m" => 60 * SECOND,
            "h" => 3600 * SECOND,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    time_quote(u),
                    time_quote(orig)
                ));
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // float64 is what Go uses here too, so the rounding matches.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        d += v;
        if d > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok((d as i64).wrapping_neg());
    }
    if d > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(d as i64)
}

/// Go's `time.Duration.String`: `2160h0m0s`, `1m30s`, `1.5s`, `300ms`, `1.1µs`, `0s`, `-5s`.
pub fn format_duration(nanos: i64) -> String {
    let u = nanos.unsigned_abs();
    let sign = if nanos < 0 { "-" } else { "" };
    if u == 0 {
        return "0s".into();
    }
    if u < SECOND {
        let (unit, div) = match u {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", fixed_point(u, div));
    }
    let seconds = fixed_point(u % (60 * SECOND), SECOND);
    let minutes = u / (60 * SECOND);
    match (minutes / 60, minutes % 60) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

/// A protobuf duration as `time.Duration.String` prints it (saturating at Go's limits, as
/// gogo's `DurationFromProto` refuses to go past them).
pub fn format_duration_proto(d: &prost_types::Duration) -> String {
    let total = i128::from(d.seconds) * i128::from(SECOND) + i128::from(d.nanos);
    format_duration(total.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
}

/// Nanoseconds as the wire's `google.protobuf.Duration` (gogo's `DurationProto`).
pub fn duration_proto(nanos: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: nanos / SECOND as i64,
        nanos: (nanos % SECOND as i64) as i32,
    }
}

/// `v / div` with the fraction's trailing zeros removed.
fn fixed_point(v: u64, div: u64) -> String {
    let (whole, frac) = (v / div, v % div);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = div.ilog10() as usize;
    let frac = format!("{frac:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Go's `%g` of a float64 (`strconv.FormatFloat(v, 'g', -1, 64)`): the shortest digits that
/// read back as `v`, in exponent form when the exponent is below -4 or at least 6 (`1e+06`,
/// `1e-05`, at least two exponent digits).
pub fn format_g(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let sci = shortest_sci(v);
    let (mant, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("the exponent is an integer");
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    // The digits of `sci` without a point, at the place the exponent says.
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if neg { "-" } else { "" };
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!(
            "{sign}{digits}{}",
            "0".repeat(point as usize - digits.len())
        )
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// The shortest digits that read back as `v`, in `{:e}` form; where two candidates of that
/// length are equally close to `v`, Go takes the even one (Rust's shortest form takes the
/// upper), which is what exact formatting at that length gives.
fn shortest_sci(v: f64) -> String {
    let sci = format!("{v:e}");
    let mant = sci.split_once('e').map_or(sci.as_str(), |(m, _)| m);
    let digits = mant.chars().filter(char::is_ascii_digit).count();
    let exact = format!("{:.*e}", digits - 1, v);
    if exact.parse::<f64>() == Ok(v) {
        exact
    } else {
        sci
    }
}

/// One record of `encoding/csv` (what pflag's `StringSlice` does with each occurrence of a flag).
/// The empty string is the empty list.
pub fn read_csv_record(val: &str) -> Result<Vec<String>, String> {
    if val.is_empty() {
        return Ok(Vec::new());
    }
    // csv reads one line per record; a quoted field may span lines.
    let bytes = val.as_bytes();
    let mut fields = Vec::new();
    let mut pos = 0usize; // byte offset in val
    let mut line = 1usize;
    let mut col_base = 0usize; // offset of the current line's first byte
    loop {
        if pos < bytes.len() && bytes[pos] == b'"' {
            // Quoted field.
            let mut field = String::new();
            pos += 1;
            loop {
                match val[pos..].find(['"', '\n']) {
                    Some(i) if bytes[pos + i] == b'\n' => {
                        field.push_str(&val[pos..=pos + i]);
                        pos += i + 1;
                        line += 1;
                        col_base = pos;
                    }
                    Some(i) => {
                        field.push_str(&val[pos..pos + i]);
                        pos += i + 1;
                        match bytes.get(pos) {
                            Some(b'"') => {
                                field.push('"');
                                pos += 1;
                            }
                            Some(b',') => {
                                pos += 1;
                                fields.push(field);
                                break;
                            }
                            None | Some(b'\n') => {
                                fields.push(field);
                                return Ok(fields);
                            }
                            Some(_) => {
                                return Err(csv_error(line, pos - col_base + 1, QUOTE_ERR));
                            }
                        }
                    }
                    None => {
                        return Err(csv_error(line, val.len() - col_base + 1, QUOTE_ERR));
                    }
                }
            }
        } else {
            let end = val[pos..].find([',', '\n']).map_or(val.len(), |i| pos + i);
            let field = &val[pos..end];
            if let Some(j) = field.find('"') {
                return Err(csv_error(
                    line,
                    pos - col_base + j + 1,
                    "bare \" in non-quoted-field",
                ));
            }
            fields.push(field.trim_end_matches('\r').to_string());
            if end < val.len() && bytes[end] == b',' {
                pos = end + 1;
            } else {
                return Ok(fields);
            }
        }
    }
}

const QUOTE_ERR: &str = "extraneous or missing \" in quoted-field";

fn csv_error(line: usize, col: usize, what: &str) -> String {
    format!("parse error on line {line}, column {col}: {what}")
}

#[cfg(test)]
mod tests;
