//! Tests of the Go-compatible parsers against the outputs and error texts of Go's strconv,
//! encoding/csv, time, go-units and SwarmKit's genericresource.

use super::*;

#[test]
fn uint_base0_and_errors() {
    assert_eq!(parse_uint("10", 0, 64), Ok(10));
    assert_eq!(parse_uint("0x10", 0, 64), Ok(16));
    assert_eq!(parse_uint("010", 0, 64), Ok(8));
    assert_eq!(parse_uint("0b11", 0, 64), Ok(3));
    assert_eq!(parse_uint("1_000", 0, 64), Ok(1000));
    assert_eq!(parse_uint("0", 0, 64), Ok(0));
    assert_eq!(
        parse_uint("-1", 0, 64),
        Err("strconv.ParseUint: parsing \"-1\": invalid syntax".into())
    );
    assert_eq!(
        parse_uint("_1", 0, 64),
        Err("strconv.ParseUint: parsing \"_1\": invalid syntax".into())
    );
    assert_eq!(
        parse_uint("18446744073709551616", 0, 64),
        Err("strconv.ParseUint: parsing \"18446744073709551616\": value out of range".into())
    );
    assert_eq!(
        parse_uint("", 10, 32),
        Err("strconv.ParseUint: parsing \"\": invalid syntax".into())
    );
    assert_eq!(
        parse_uint("70000000000", 10, 32),
        Err("strconv.ParseUint: parsing \"70000000000\": value out of range".into())
    );
}

#[test]
fn int_signs_and_range() {
    assert_eq!(parse_int("-500", 0, 64), Ok(-500));
    assert_eq!(parse_int("+7", 10, 64), Ok(7));
    assert_eq!(parse_int("-9223372036854775808", 10, 64), Ok(i64::MIN));
    assert_eq!(
        parse_int("9223372036854775808", 10, 64),
        Err("strconv.ParseInt: parsing \"9223372036854775808\": value out of range".into())
    );
    assert_eq!(parse_int("777", 8, 32), Ok(511));
    assert_eq!(
        parse_int("9", 8, 32),
        Err("strconv.ParseInt: parsing \"9\": invalid syntax".into())
    );
}

#[test]
fn bools() {
    for t in ["1", "t", "T", "true", "TRUE", "True"] {
        assert_eq!(parse_bool(t), Ok(true));
    }
    for f in ["0", "f", "F", "false", "FALSE", "False"] {
        assert_eq!(parse_bool(f), Ok(false));
    }
    assert_eq!(
        parse_bool("yes"),
        Err("strconv.ParseBool: parsing \"yes\": invalid syntax".into())
    );
}

#[test]
fn ram_sizes() {
    assert_eq!(ram_in_bytes("512m"), Ok(512 << 20));
    assert_eq!(ram_in_bytes("512M"), Ok(512 << 20));
    assert_eq!(ram_in_bytes("1k"), Ok(1024));
    assert_eq!(ram_in_bytes("1kb"), Ok(1024));
    assert_eq!(ram_in_bytes("1KiB"), Ok(1024));
    assert_eq!(ram_in_bytes("1.5g"), Ok(3 << 29));
    assert_eq!(ram_in_bytes("4 m"), Ok(4 << 20));
    assert_eq!(ram_in_bytes("100"), Ok(100));
    assert_eq!(ram_in_bytes("100b"), Ok(100));
    assert_eq!(ram_in_bytes("1q"), Err("invalid suffix: 'q'".into()));
    assert_eq!(ram_in_bytes("1Q"), Err("invalid suffix: 'q'".into()));
    assert_eq!(ram_in_bytes("1kq"), Err("invalid suffix: 'kq'".into()));
    assert_eq!(ram_in_bytes("1bb"), Err("invalid suffix: 'bb'".into()));
    assert_eq!(ram_in_bytes("1kilo"), Err("invalid suffix: 'kilo'".into()));
    assert_eq!(ram_in_bytes("abc"), Err("invalid size: 'abc'".into()));
    assert_eq!(ram_in_bytes(""), Err("invalid size: ''".into()));
    assert_eq!(ram_in_bytes("-5m"), Err("invalid size: '-5m'".into()));
    assert_eq!(
        ram_in_bytes("1.2.3m"),
        Err("strconv.ParseFloat: parsing \"1.2.3\": invalid syntax".into())
    );
}

#[test]
fn ulimits() {
    assert_eq!(
        parse_ulimit("nofile=1024:2048"),
        Ok(("nofile".into(), 1024, 2048))
    );
    assert_eq!(parse_ulimit("nproc=512"), Ok(("nproc".into(), 512, 512)));
    assert_eq!(parse_ulimit("core=-1"), Ok(("core".into(), -1, -1)));
    assert_eq!(parse_ulimit("core=5:-1"), Ok(("core".into(), 5, -1)));
    assert_eq!(
        parse_ulimit("nofile"),
        Err("invalid ulimit argument: nofile".into())
    );
    assert_eq!(
        parse_ulimit("bogus=1"),
        Err("invalid ulimit type: bogus".into())
    );
    assert_eq!(
        parse_ulimit("nofile=1:2:3"),
        Err(
            "too many limit value arguments - 1:2:3, can only have up to two, `soft[:hard]`".into()
        )
    );
    assert_eq!(
        parse_ulimit("nofile=10:5"),
        Err("ulimit soft limit must be less than or equal to hard limit: 10 > 5".into())
    );
    assert_eq!(
        parse_ulimit("nofile=x"),
        Err("strconv.ParseInt: parsing \"x\": invalid syntax".into())
    );
}

#[test]
fn cpus() {
    assert_eq!(parse_cpu("0.5"), Ok(500_000_000));
    assert_eq!(parse_cpu("2"), Ok(2_000_000_000));
    assert_eq!(parse_cpu(".25"), Ok(250_000_000));
    assert_eq!(parse_cpu("1e-3"), Ok(1_000_000));
    assert_eq!(parse_cpu("1.5E1"), Ok(15_000_000_000));
    assert_eq!(parse_cpu("1/4"), Ok(250_000_000));
    assert_eq!(parse_cpu("-1"), Ok(-1_000_000_000));
    assert_eq!(parse_cpu("0.0001"), Ok(100_000));
    assert_eq!(parse_cpu("0.000000001"), Ok(1));
    assert_eq!(
        parse_cpu("0.0000000001"),
        Err("CPU value cannot have more than 9 decimal places: 0.0000000001".into())
    );
    assert_eq!(
        parse_cpu("1/3"),
        Err("CPU value cannot have more than 9 decimal places: 1/3".into())
    );
    assert_eq!(parse_cpu("abc"), Err("invalid cpu: abc".into()));
    assert_eq!(parse_cpu(""), Err("invalid cpu: ".into()));
    assert_eq!(parse_cpu("."), Err("invalid cpu: .".into()));
    assert_eq!(parse_cpu("1/0"), Err("invalid cpu: 1/0".into()));
}

fn discrete(kind: &str, value: i64) -> api::GenericResource {
    api::GenericResource {
        resource: Some(api::generic_resource::Resource::DiscreteResourceSpec(
            api::DiscreteGenericResource {
                kind: kind.into(),
                value,
            },
        )),
    }
}

#[test]
fn generic_resources() {
    assert_eq!(
        parse_generic_resources("gpu=2,fpga=1"),
        Ok(vec![discrete("gpu", 2), discrete("fpga", 1)])
    );
    assert_eq!(
        parse_generic_resources(" gpu = 3 "),
        Ok(vec![discrete("gpu", 3)])
    );
    assert_eq!(
        parse_generic_resources("gpu=UUID1"),
        Err("invalid argument for resource gpu".into())
    );
    assert_eq!(
        parse_generic_resources("gpu"),
        Err("could not parse GenericResource: incorrect term gpu, missing '=' or malformed expression".into())
    );
    assert_eq!(
        parse_generic_resources("gpu=-1"),
        Err("could not parse GenericResource: cannot ask for negative resource gpu".into())
    );
    assert_eq!(
        parse_generic_resources("gpu=1,gpu=a"),
        Err("could not parse GenericResource: mixed discrete and named resources in expression 'gpu=[1 a]'".into())
    );
    assert_eq!(
        parse_generic_resources("a\nb"),
        Err("could not parse GenericResource: unexpected '\\n' character".into())
    );
    assert_eq!(
        parse_generic_resources(""),
        Err("could not parse GenericResource: found multiple records while parsing cmd []".into())
    );
}
