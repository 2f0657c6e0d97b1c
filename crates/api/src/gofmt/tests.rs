//! Go's own test tables, ported as data: `time.ParseDuration` and `Duration.String` from
//! Go's time/time_test.go, `strconv.Quote` from strconv/quote_test.go and `FormatFloat(v, 'g',
//! -1, 64)` from strconv's ftoa_test.go. Go inputs that are not UTF-8 cannot reach a `&str`
//! and are left out.

use super::*;

/// time_test.go `parseDurationTests`: (input, nanoseconds).
const PARSE_DURATION: &[(&str, i64)] = &[
    ("0", 0),
    ("5s", 5000000000),
    ("30s", 30000000000),
    ("1478s", 1478000000000),
    ("-5s", -5000000000),
    ("+5s", 5000000000),
    ("-0", 0),
    ("+0", 0),
    ("5.0s", 5000000000),
    ("5.6s", 5600000000),
    ("5.s", 5000000000),
    (".5s", 500000000),
    ("1.0s", 1000000000),
    ("1.00s", 1000000000),
    ("1.004s", 1004000000),
    ("1.0040s", 1004000000),
    ("100.00100s", 100001000000),
    ("10ns", 10),
    ("11us", 11000),
    ("12\u{b5}s", 12000),
    ("12\u{3bc}s", 12000),
    ("13ms", 13000000),
    ("14s", 14000000000),
    ("15m", 900000000000),
    ("16h", 57600000000000),
    ("3h30m", 12600000000000),
    ("10.5s4m", 250500000000),
    ("-2m3.4s", -123400000000),
    ("1h2m3s4ms5us6ns", 3723004005006),
    ("39h9m14.425s", 140954425000000),
    ("52763797000ns", 52763797000),
    ("0.3333333333333333333h", 1200000000000),
    ("9007199254740993ns", 9007199254740993),
    ("9223372036854775807ns", 9223372036854775807),
    ("9223372036854775.807us", 9223372036854775807),
    ("9223372036s854ms775us807ns", 9223372036854775807),
    ("-9223372036854775808ns", -9223372036854775808),
    ("-9223372036854775.808us", -9223372036854775808),
    ("-9223372036s854ms775us808ns", -9223372036854775808),
    ("-9223372036854775808ns", -9223372036854775808),
    ("-2562047h47m16.854775808s", -9223372036854775808),
    ("0.100000000000000000000h", 360000000000),
    ("0.830103483285477580700h", 2988372539827),
];

/// time_test.go `parseDurationErrorTests`: (input, what the error must contain).
const PARSE_DURATION_ERRORS: &[(&str, &str)] = &[
    ("", "\"\""),
    ("3", "\"3\""),
    ("-", "\"-\""),
    ("s", "\"s\""),
    (".", "\".\""),
    ("-.", "\"-.\""),
    (".s", "\".s\""),
    ("+.s", "\"+.s\""),
    ("1d", "\"1d\""),
    // skipped, not UTF-8: "\x85\x85"
    // skipped, not UTF-8: "\xffff"
    // skipped, not UTF-8: "hello \xffff world"
    ("\u{fffd}", "\"\\xef\\xbf\\xbd\""),
    (
        "\u{fffd} hello \u{fffd} world",
        "\"\\xef\\xbf\\xbd hello \\xef\\xbf\\xbd world\"",
    ),
    ("9223372036854775810ns", "\"9223372036854775810ns\""),
    ("9223372036854775808ns", "\"9223372036854775808ns\""),
    ("-9223372036854775809ns", "\"-9223372036854775809ns\""),
    ("9223372036854776us", "\"9223372036854776us\""),
    ("3000000h", "\"3000000h\""),
    ("9223372036854775.808us", "\"9223372036854775.808us\""),
    ("9223372036854ms775us808ns", "\"9223372036854ms775us808ns\""),
];

/// time_test.go `durationTests`: (nanoseconds, `String()`).
const DURATION_STRINGS: &[(i64, &str)] = &[
    (0, "0s"),
    (1, "1ns"),
    (1100, "1.1\u{b5}s"),
    (2200000, "2.2ms"),
    (3300000000, "3.3s"),
    (245000000000, "4m5s"),
    (245001000000, "4m5.001s"),
    (18367001000000, "5h6m7.001s"),
    (480000000001, "8m0.000000001s"),
    (9223372036854775807, "2562047h47m16.854775807s"),
    (-9223372036854775808, "-2562047h47m16.854775808s"),
];

/// ftoa_test.go `ftoatests`, the `'g', -1` rows: (value, text).
const FORMAT_G: &[(f64, &str)] = &[
    (1e+00, "1"),
    (2e+01, "20"),
    (1.2345678e+06, "1.2345678e+06"),
    (2e+05, "200000"),
    (2e+06, "2e+06"),
    (1e+10, "1e+10"),
    (0e+00, "0"),
    (-1e+00, "-1"),
    (1.2e+01, "12"),
    (1.234567e+08, "1.234567e+08"),
    (1.0867823635813762e+14, "1.0867823635813762e+14"),
    (1e+23, "1e+23"),
    (9.999999999999997e+22, "9.999999999999997e+22"),
    (1.0000000000000001e+23, "1.0000000000000001e+23"),
    (5e-324, "5e-324"),
    (-5e-324, "-5e-324"),
    (3.2e+01, "32"),
    (f64::NAN, "NaN"),
    (f64::NAN, "NaN"),
    (f64::INFINITY, "+Inf"),
    (f64::NEG_INFINITY, "-Inf"),
    (f64::NEG_INFINITY, "-Inf"),
    (2.2250738585072014e-308, "2.2250738585072014e-308"),
    (2.225073858507201e-308, "2.225073858507201e-308"),
    (3.8326057576481645e+17, "3.8326057576481645e+17"),
    (-5.8339553793802237e+23, "-5.8339553793802237e+23"),
    (1.801439850948199e+16, "1.801439850948199e+16"),
    (5.960464477539063e-08, "5.960464477539063e-08"),
    (1.012e-320, "1.012e-320"),
];

/// quote_test.go `quotetests`: (input, `Quote`).
const QUOTE: &[(&str, &str)] = &[
    (
        "\u{7}\u{8}\u{c}\u{d}\u{a}\u{9}\u{b}",
        "\"\\a\\b\\f\\r\\n\\t\\v\"",
    ),
    ("\\", "\"\\\\\""),
    // skipped, not UTF-8: "abc\xffdef"
    ("\u{263a}", "\"\u{263a}\""),
    ("\u{10ffff}", "\"\\U0010ffff\""),
    ("\u{4}", "\"\\x04\""),
    (
        "!\u{a0}!\u{2000}!\u{3000}!",
        "\"!\\u00a0!\\u2000!\\u3000!\"",
    ),
    ("\u{7f}", "\"\\x7f\""),
];

#[test]
fn parse_duration_matches_go() {
    for &(input, want) in PARSE_DURATION {
        assert_eq!(parse_duration(input), Ok(want), "{input:?}");
    }
}

#[test]
fn parse_duration_errors_match_go() {
    for &(input, expect) in PARSE_DURATION_ERRORS {
        let err = parse_duration(input).expect_err(input);
        assert!(
            err.contains(expect),
            "{input:?}: {err} does not contain {expect}"
        );
    }
}

#[test]
fn parse_duration_error_words() {
    // Go's exact texts for the three kinds of failure; spaces are not Go syntax.
    let cases = [
        ("5", "time: missing unit in duration \"5\""),
        ("1h 30m", "time: unknown unit \"h \" in duration \"1h 30m\""),
        ("5q", "time: unknown unit \"q\" in duration \"5q\""),
        (
            "5é",
            "time: unknown unit \"\\xc3\\xa9\" in duration \"5\\xc3\\xa9\"",
        ),
        ("1d", "time: unknown unit \"d\" in duration \"1d\""),
    ];
    for (input, want) in cases {
        assert_eq!(parse_duration(input), Err(want.to_string()), "{input:?}");
    }
}

#[test]
fn format_duration_matches_go() {
    for &(nanos, want) in DURATION_STRINGS {
        assert_eq!(format_duration(nanos), want, "{nanos}");
        if nanos > 0 {
            assert_eq!(format_duration(-nanos), format!("-{want}"), "{}", -nanos);
        }
        // What Go prints, Go parses back.
        assert_eq!(parse_duration(want), Ok(nanos), "{want}");
    }
}

#[test]
fn duration_protos() {
    let p = |seconds, nanos| prost_types::Duration { seconds, nanos };
    assert_eq!(format_duration_proto(&p(2160 * 3600, 0)), "2160h0m0s");
    assert_eq!(format_duration_proto(&p(-1, -500_000_000)), "-1.5s");
    assert_eq!(
        format_duration_proto(&p(i64::MAX, 0)),
        "2562047h47m16.854775807s"
    );
    assert_eq!(duration_proto(-1_500_000_000), p(-1, -500_000_000));
    assert_eq!(duration_proto(5_000_000_001), p(5, 1));
}

#[test]
fn format_g_matches_go() {
    for &(v, want) in FORMAT_G {
        assert_eq!(format_g(v), want, "{v:e}");
    }
    // What SwarmKit's messages print with %g: the exponent form starts at 1e-5 and 1e6.
    assert_eq!(format_g(0.0001), "0.0001");
    assert_eq!(format_g(0.00001), "1e-05");
    assert_eq!(format_g(123456.0), "123456");
    assert_eq!(format_g(1234567.0), "1.234567e+06");
    assert_eq!(format_g(-0.0), "-0");
}

#[test]
fn quote_matches_go() {
    for &(input, want) in QUOTE {
        assert_eq!(quote(input), want, "{input:?}");
    }
    assert_eq!(quote("a \"b\"\\\n"), r#""a \"b\"\\\n""#);
    assert_eq!(quote("é\u{1b}\u{200b}"), r#""é\x1b\u200b""#);
}

fn csv(s: &str) -> Result<Vec<String>, String> {
    read_csv_record(s)
}

#[test]
fn csv_records() {
    assert_eq!(csv(""), Ok(vec![]));
    assert_eq!(csv("a"), Ok(vec!["a".to_string()]));
    assert_eq!(csv("a,b"), Ok(vec!["a".to_string(), "b".to_string()]));
    assert_eq!(
        csv("a,,b,"),
        Ok(vec!["a".into(), "".into(), "b".into(), "".into()])
    );
    assert_eq!(
        csv("\"a,b\",c"),
        Ok(vec!["a,b".to_string(), "c".to_string()])
    );
    assert_eq!(
        csv("\"say \"\"hi\"\"\""),
        Ok(vec!["say \"hi\"".to_string()])
    );
    assert_eq!(csv(" a , b"), Ok(vec![" a ".to_string(), " b".to_string()]));
    assert_eq!(csv("a\nb"), Ok(vec!["a".to_string()]));
    assert_eq!(
        csv("a\"b"),
        Err("parse error on line 1, column 2: bare \" in non-quoted-field".into())
    );
    assert_eq!(
        csv("x,\"a\"b"),
        Err("parse error on line 1, column 6: extraneous or missing \" in quoted-field".into())
    );
    assert!(csv("\"abc").is_err());
}
