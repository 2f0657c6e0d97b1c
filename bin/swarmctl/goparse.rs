//! Go-compatible parsers for flag values, so that swarmctl accepts the same input as SwarmKit's
//! Go client (pflag) and fails with the same words: `strconv` integers and booleans, go-units
//! sizes and ulimits, `big.Rat` CPU amounts and the task side of SwarmKit's generic resources.
//! Pure functions; durations, `%g`, `%q` and `encoding/csv` records (pflag's `StringSlice`) are
//! `api::gofmt`'s, the generic resource syntax `api::genericresource`'s, the service
//! flag-to-spec mapping is `service/flags.rs`.

use api::gofmt::quote;

/// Checks Go's rule for `_` in base-prefixed literals: only between digits or after the prefix.
fn underscores_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    // 'saw' is '^' at the start, '0' after a digit or prefix, '_' after an underscore, '!' otherwise.
    let mut saw = b'^';
    let mut hex = false;
    if b.len() >= 2 && b[0] == b'0' && matches!(b[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        hex = b[1].eq_ignore_ascii_case(&b'x');
        saw = b'0';
        i = 2;
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
        i += 1;
    }
    saw != b'_'
}

/// Why a `strconv` integer parse failed.
enum IntErr {
    Syntax,
    Range,
}

/// Parses unsigned digits in `base` (0 = detect a Go prefix), like `strconv.ParseUint`.
fn parse_uint_digits(s: &str, base: u32, bits: u32) -> Result<u64, IntErr> {
    if s.is_empty() {
        return Err(IntErr::Syntax);
    }
    let mut digits = s;
    let mut base = base;
    let base0 = base == 0;
    if base == 0 {
        base = 10;
        let b = s.as_bytes();
        if b[0] == b'0' {
            if b.len() >= 3 && matches!(b[1], b'x' | b'X') {
                base = 16;
                digits = &s[2..];
            } else if b.len() >= 3 && matches!(b[1], b'o' | b'O') {
                base = 8;
                digits = &s[2..];
            } else if b.len() >= 3 && matches!(b[1], b'b' | b'B') {
                base = 2;
                digits = &s[2..];
            } else {
                base = 8;
                digits = &s[1..];
            }
        }
    }
    let max: u128 = if bits >= 64 {
        u64::MAX as u128
    } else {
        (1u128 << bits) - 1
    };
    let mut n: u128 = 0;
    let mut underscores = false;
    for c in digits.chars() {
        if c == '_' && base0 {
            underscores = true;
            continue;
        }
        let d = c.to_digit(base).ok_or(IntErr::Syntax)?;
        n = n * base as u128 + d as u128;
        if n > max {
            // Go keeps scanning for syntax errors only in the sense that the result is "range".
            return Err(IntErr::Range);
        }
    }
    if underscores && !underscores_ok(s) {
        return Err(IntErr::Syntax);
    }
    Ok(n as u64)
}

/// `strconv.ParseUint(s, base, bits)` with Go's error text.
pub fn parse_uint(s: &str, base: u32, bits: u32) -> Result<u64, String> {
    parse_uint_digits(s, base, bits).map_err(|e| num_error("ParseUint", s, e))
}

/// `strconv.ParseInt(s, base, bits)` with Go's error text.
pub fn parse_int(s: &str, base: u32, bits: u32) -> Result<i64, String> {
    if s.is_empty() {
        return Err(num_error("ParseInt", s, IntErr::Syntax));
    }
    let (neg, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let un = parse_uint_digits(rest, base, 64).map_err(|e| num_error("ParseInt", s, e))?;
    let cutoff: u64 = 1u64 << (bits - 1);
    if !neg && un >= cutoff {
        return Err(num_error("ParseInt", s, IntErr::Range));
    }
    if neg && un > cutoff {
        return Err(num_error("ParseInt", s, IntErr::Range));
    }
    Ok(if neg {
        (un as i64).wrapping_neg()
    } else {
        un as i64
    })
}

fn num_error(func: &str, s: &str, e: IntErr) -> String {
    let what = match e {
        IntErr::Syntax => "invalid syntax",
        IntErr::Range => "value out of range",
    };
    format!("strconv.{func}: parsing {}: {what}", quote(s))
}

/// `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!(
            "strconv.ParseBool: parsing {}: invalid syntax",
            quote(s)
        )),
    }
}

/// `strconv.ParseFloat(s, 64)` for decimal input (what go-units hands it).
fn parse_float(s: &str) -> Result<f64, String> {
    let word = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
    let is_word = word.starts_with("inf") || word.starts_with("nan");
    match s.parse::<f64>() {
        Ok(v) if !is_word => Ok(v),
        _ => Err(format!(
            "strconv.ParseFloat: parsing {}: invalid syntax",
            quote(s)
        )),
    }
}

/// go-units `RAMInBytes`: `512m`, `1.5GiB`, `4 kb`, bytes without suffix.
pub fn ram_in_bytes(size: &str) -> Result<i64, String> {
    let invalid = || format!("invalid size: '{size}'");
    let Some(sep) = size.rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ') else {
        return Err(invalid());
    };
    let (num, sfx) = if size.as_bytes()[sep] != b' ' {
        (&size[..=sep], &size[sep + 1..])
    } else {
        (&size[..sep], &size[sep + 1..])
    };
    let mut value = parse_float(num)?;
    if value < 0.0 {
        return Err(invalid());
    }
    if sfx.is_empty() {
        return Ok(value as i64);
    }
    let bad = |s: &str| format!("invalid suffix: '{s}'");
    if sfx.len() > 3 {
        return Err(bad(sfx));
    }
    let sfx = sfx.to_lowercase();
    let b = sfx.as_bytes();
    if b[0] == b'b' {
        if b.len() > 1 {
            return Err(bad(&sfx));
        }
        return Ok(value as i64);
    }
    let mul: f64 = match b[0] {
        b'k' => 1024.0,
        b'm' => 1024.0 * 1024.0,
        b'g' => 1024.0 * 1024.0 * 1024.0,
        b't' => 1024.0f64.powi(4),
        b'p' => 1024.0f64.powi(5),
        _ => return Err(bad(&sfx)),
    };
    value *= mul;
    if (b.len() == 2 && b[1] != b'b') || (b.len() == 3 && &sfx[1..] != "ib") {
        return Err(bad(&sfx));
    }
    Ok(value as i64)
}

/// The ulimit names go-units knows.
const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// go-units `ParseUlimit`: `name=soft[:hard]`; returns (name, soft, hard).
pub fn parse_ulimit(val: &str) -> Result<(String, i64, i64), String> {
    let Some((name, limits)) = val.split_once('=') else {
        return Err(format!("invalid ulimit argument: {val}"));
    };
    if !ULIMIT_NAMES.contains(&name) {
        return Err(format!("invalid ulimit type: {name}"));
    }
    let parts: Vec<&str> = limits.split(':').collect();
    let (soft, hard) = match parts.as_slice() {
        [soft] => {
            let soft = parse_int(soft, 10, 64)?;
            (soft, soft)
        }
        [soft, hard] => {
            let hard = parse_int(hard, 10, 64)?;
            (parse_int(soft, 10, 64)?, hard)
        }
        _ => {
            return Err(format!(
                "too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
            ));
        }
    };
    if hard != -1 && soft > hard {
        return Err(format!(
            "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        ));
    }
    Ok((name.to_string(), soft, hard))
}

/// A decimal (or `a/b`) CPU amount in cores, as `big.Rat.SetString` reads it, converted to
/// nano-CPUs; `None` when it is not a number, `Some(Err(()))` when it has more than 9 decimals.
fn rat_nanos(s: &str) -> Option<Result<i64, ()>> {
    if let Some((a, b)) = s.split_once('/') {
        let num = parse_int(a, 0, 64).ok()? as i128;
        let den = parse_uint(b, 0, 64).ok()? as i128;
        if den == 0 {
            return None;
        }
        let scaled = num.checked_mul(1_000_000_000)?;
        return Some(if scaled % den == 0 {
            Ok((scaled / den) as i64)
        } else {
            Err(())
        });
    }
    let (neg, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mant, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], parse_int(&rest[i + 1..], 10, 32).ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    // value = digits * 10^(exp - frac.len()); nanos = value * 10^9.
    let shift = exp + 9 - frac.len() as i64;
    let mut n: i128 = 0;
    for c in digits.bytes() {
        n = n.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
    }
    if shift >= 0 {
        for _ in 0..shift {
            if n == 0 {
                break;
            }
            n = n.checked_mul(10)?;
        }
    } else {
        for _ in 0..(-shift) {
            if n == 0 {
                break;
            }
            if n % 10 != 0 {
                return Some(Err(()));
            }
            n /= 10;
        }
    }
    let n = if neg { -n } else { n };
    Some(Ok(n as i64))
}

/// SwarmKit's `--cpu-*` parsing: cores to nano-CPUs.
pub fn parse_cpu(s: &str) -> Result<i64, String> {
    match rat_nanos(s) {
        None => Err(format!("invalid cpu: {s}")),
        Some(Err(())) => Err(format!(
            "CPU value cannot have more than 9 decimal places: {s}"
        )),
        Some(Ok(n)) => Ok(n),
    }
}

/// SwarmKit's `genericresource.ParseCmd` followed by `ValidateTask` (tasks may only ask for
/// discrete amounts): `gpu=2,fpga=1`.
pub fn parse_generic_resources(cmd: &str) -> Result<Vec<api::GenericResource>, String> {
    use api::generic_resource::Resource;
    let parsed = api::genericresource::parse_cmd(cmd)?;
    if let Some(Resource::NamedResourceSpec(n)) = parsed.iter().find_map(|r| {
        r.resource
            .as_ref()
            .filter(|r| matches!(r, Resource::NamedResourceSpec(_)))
    }) {
        return Err(format!("invalid argument for resource {}", n.kind));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
