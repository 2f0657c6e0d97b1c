//! Bookkeeping of generic resources (SwarmKit's `api/genericresource`): discrete resources are
//! counters, named ones individual items. The scheduler uses it to track what a node has left, the
//! constraint enforcer to check that a node still holds what its tasks were given. [`parse_cmd`]
//! reads the command-line syntax (swarmd's `--generic-node-resources`, swarmctl's
//! `--generic-resources`).

use crate::GenericResource;
use crate::generic_resource::Resource;

fn kind(r: &GenericResource) -> Option<&str> {
    match r.resource.as_ref()? {
        Resource::DiscreteResourceSpec(d) => Some(&d.kind),
        Resource::NamedResourceSpec(n) => Some(&n.kind),
    }
}

/// Whether `available` holds `wanted` (SwarmKit's `HasResource`): for a discrete resource the first
/// entry of its kind must have at least its value; a named one must be present by kind and value.
pub fn has_resource(wanted: &GenericResource, available: &[GenericResource]) -> bool {
    let Some(wanted_kind) = kind(wanted) else {
        return false;
    };
    for have in available.iter().filter(|r| kind(r) == Some(wanted_kind)) {
        match (&have.resource, &wanted.resource) {
            (Some(Resource::DiscreteResourceSpec(h)), Some(Resource::DiscreteResourceSpec(w))) => {
                return w.value <= h.value;
            }
            (Some(Resource::DiscreteResourceSpec(_)), _) => return false,
            (Some(Resource::NamedResourceSpec(h)), Some(Resource::NamedResourceSpec(w))) => {
                if h.value == w.value {
                    return true;
                }
            }
            (Some(Resource::NamedResourceSpec(_)), _) => return false,
            (None, _) => {}
        }
    }
    false
}

/// Takes `taken` out of `available` (SwarmKit's `ConsumeNodeResources`): discrete values are
/// subtracted (an entry that reaches zero goes), named items removed.
pub fn consume(available: &mut Vec<GenericResource>, taken: &[GenericResource]) {
    if taken.is_empty() {
        return;
    }
    available.retain_mut(|have| {
        for t in taken {
            match (&mut have.resource, &t.resource) {
                (
                    Some(Resource::DiscreteResourceSpec(h)),
                    Some(Resource::DiscreteResourceSpec(t)),
                ) if h.kind == t.kind => {
                    h.value -= t.value;
                    if h.value <= 0 {
                        return false;
                    }
                }
                (Some(Resource::NamedResourceSpec(h)), Some(Resource::NamedResourceSpec(t)))
                    if h.kind == t.kind && h.value == t.value =>
                {
                    return false;
                }
                _ => {}
            }
        }
        true
    });
}

/// SwarmKit's `genericresource.ParseCmd`: one CSV record of `kind=value` terms. A kind given
/// once with a (decimal, `int64`) number is a discrete resource; a kind whose values are all
/// non-numbers is a set of named resources (one per value, repeats kept); anything else fails
/// with SwarmKit's words. Kinds keep the order of their first term (Go's map order is random).
pub fn parse_cmd(cmd: &str) -> Result<Vec<GenericResource>, String> {
    let perr = |m: String| format!("could not parse GenericResource: {m}");
    if cmd.contains('\n') {
        return Err(perr("unexpected '\\n' character".into()));
    }
    if cmd.is_empty() {
        // Go's csv reader finds no record at all in an empty string.
        return Err(perr("found multiple records while parsing cmd []".into()));
    }
    let terms = crate::gofmt::read_csv_record(cmd).map_err(perr)?;
    let mut kinds: Vec<(String, Vec<String>)> = Vec::new();
    for term in &terms {
        let (key, val) = match term.split('=').collect::<Vec<_>>()[..] {
            [k, v] => (k.trim(), v.trim()),
            _ => {
                return Err(perr(format!(
                    "incorrect term {term}, missing '=' or malformed expression"
                )));
            }
        };
        match kinds.iter_mut().find(|(k, _)| k == key) {
            Some((_, vals)) => vals.push(val.to_string()),
            None => kinds.push((key.to_string(), vec![val.to_string()])),
        }
    }
    // `strconv.ParseInt(v, 10, 64)` accepts exactly what `i64::from_str` does.
    let number = |v: &str| v.parse::<i64>().ok();
    let mut out = Vec::new();
    for (kind, vals) in kinds {
        if let [v] = vals.as_slice()
            && let Some(n) = number(v)
        {
            if n < 0 {
                return Err(perr(format!("cannot ask for negative resource {kind}")));
            }
            out.push(GenericResource {
                resource: Some(Resource::DiscreteResourceSpec(
                    crate::DiscreteGenericResource { kind, value: n },
                )),
            });
        } else if vals.iter().all(|v| number(v).is_none()) {
            out.extend(vals.into_iter().map(|value| GenericResource {
                resource: Some(Resource::NamedResourceSpec(crate::NamedGenericResource {
                    kind: kind.clone(),
                    value,
                })),
            }));
        } else {
            return Err(perr(format!(
                "mixed discrete and named resources in expression '{kind}=[{}]'",
                vals.join(" ")
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiscreteGenericResource, NamedGenericResource};

    fn discrete(kind: &str, value: i64) -> GenericResource {
        GenericResource {
            resource: Some(Resource::DiscreteResourceSpec(DiscreteGenericResource {
                kind: kind.into(),
                value,
            })),
        }
    }

    fn named(kind: &str, value: &str) -> GenericResource {
        GenericResource {
            resource: Some(Resource::NamedResourceSpec(NamedGenericResource {
                kind: kind.into(),
                value: value.into(),
            })),
        }
    }

    /// Checks each of `wanted` and consumes all of them if every one is there.
    fn claim(available: &mut Vec<GenericResource>, wanted: &[GenericResource]) -> bool {
        if !wanted.iter().all(|w| has_resource(w, available)) {
            return false;
        }
        consume(available, wanted);
        true
    }

    #[test]
    fn resources_are_claimed_in_order() {
        let mut pool = vec![discrete("ssd", 2), named("gpu", "g0")];
        assert!(claim(&mut pool, &[discrete("ssd", 1), named("gpu", "g0")]));
        assert!(!claim(&mut pool, &[named("gpu", "g0")]));
        assert!(claim(&mut pool, &[discrete("ssd", 1)]));
        assert!(!claim(&mut pool, &[discrete("ssd", 1)]));
    }

    #[test]
    fn kinds_must_match() {
        let pool = vec![named("gpu", "g0"), discrete("ssd", 4)];
        assert!(has_resource(&named("gpu", "g0"), &pool));
        assert!(!has_resource(&named("gpu", "g1"), &pool));
        assert!(!has_resource(&discrete("gpu", 1), &pool));
        assert!(!has_resource(&discrete("hdd", 1), &pool));
        assert!(has_resource(&discrete("ssd", 4), &pool));
        assert!(!has_resource(&discrete("ssd", 5), &pool));
    }

    fn parse_err(m: &str) -> Result<Vec<GenericResource>, String> {
        Err(format!("could not parse GenericResource: {m}"))
    }

    #[test]
    fn parse_discrete_named_and_mixed_kinds() {
        assert_eq!(
            parse_cmd("fpga=2,gpu=UUID1,gpu=UUID2,gpu=UUID3"),
            Ok(vec![
                discrete("fpga", 2),
                named("gpu", "UUID1"),
                named("gpu", "UUID2"),
                named("gpu", "UUID3"),
            ])
        );
        assert_eq!(parse_cmd(" apple = 3 "), Ok(vec![discrete("apple", 3)]));
        assert_eq!(parse_cmd("apple=+0"), Ok(vec![discrete("apple", 0)]));
        assert_eq!(
            parse_cmd("orange=red,orange=red"),
            Ok(vec![named("orange", "red"), named("orange", "red")])
        );
        // A quoted CSV field may hold a comma; an out-of-range number is a name.
        assert_eq!(
            parse_cmd("\"gpu=a,b\",big=99999999999999999999"),
            Ok(vec![
                named("gpu", "a,b"),
                named("big", "99999999999999999999")
            ])
        );
    }

    #[test]
    fn parse_errors_are_swarmkits() {
        assert_eq!(
            parse_cmd("gpu"),
            parse_err("incorrect term gpu, missing '=' or malformed expression")
        );
        assert_eq!(
            parse_cmd("gpu=1=2"),
            parse_err("incorrect term gpu=1=2, missing '=' or malformed expression")
        );
        assert_eq!(
            parse_cmd("gpu=-1"),
            parse_err("cannot ask for negative resource gpu")
        );
        assert_eq!(
            parse_cmd("gpu=1,gpu=2"),
            parse_err("mixed discrete and named resources in expression 'gpu=[1 2]'")
        );
        assert_eq!(
            parse_cmd("gpu=UUID1,gpu=3"),
            parse_err("mixed discrete and named resources in expression 'gpu=[UUID1 3]'")
        );
        assert_eq!(
            parse_cmd("a=1\nb=2"),
            parse_err("unexpected '\\n' character")
        );
        assert_eq!(
            parse_cmd(""),
            parse_err("found multiple records while parsing cmd []")
        );
        assert_eq!(
            parse_cmd("gpu=\"x"),
            parse_err("parse error on line 1, column 5: bare \" in non-quoted-field")
        );
    }
}
