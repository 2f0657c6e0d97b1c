//! Bookkeeping of generic resources (SwarmKit's `api/genericresource`): discrete resources are
//! counters, named ones individual items. The scheduler uses it to track what a node has left, the
//! constraint enforcer to check that a node still holds what its tasks were given.

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
}
