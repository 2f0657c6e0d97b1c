//! Selectors for `find_*` ([`By`], SwarmKit's `manager/state/store/by.go`) and their translation into
//! index queries. A selector that makes no sense for a kind (say `By::Role` on services) selects
//! nothing, because objects of that kind carry no keys in that index; SwarmKit returns
//! `ErrInvalidFindBy` there instead, which its callers treat as an empty result too.

use std::borrow::Cow;

use crate::object::slot_key;
use crate::table::Index;

/// Which objects a `find_*` call returns.
#[derive(Debug, Clone, PartialEq)]
pub enum By<'a> {
    /// Every object of the kind.
    All,
    /// The object with exactly this ID.
    Id(&'a str),
    /// Objects whose ID starts with this.
    IdPrefix(&'a str),
    /// Objects with this name, case-insensitively (see `StoreObject::name`).
    Name(&'a str),
    /// Objects whose name starts with this, case-insensitively.
    NamePrefix(&'a str),
    /// Tasks of this service.
    ServiceId(&'a str),
    /// Tasks assigned to this node.
    NodeId(&'a str),
    /// Tasks of this service in this slot.
    Slot {
        /// The service.
        service_id: &'a str,
        /// The slot.
        slot: u64,
    },
    /// Tasks with this desired state.
    DesiredState(api::TaskState),
    /// Tasks whose observed state (`status.state`) is this.
    TaskState(api::TaskState),
    /// Nodes with this role.
    Role(api::NodeRole),
    /// Nodes with this membership.
    Membership(api::node_spec::Membership),
    /// Services and tasks attached to this network ID.
    ReferencedNetwork(&'a str),
    /// Services and tasks using this secret ID.
    ReferencedSecret(&'a str),
    /// Services and tasks using this config ID.
    ReferencedConfig(&'a str),
    /// Objects selected by any of these.
    Or(Vec<By<'a>>),
}

/// A selector in terms of the table's indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    All,
    Id(String),
    IdPrefix(String),
    Exact(Index, String),
    Prefix(Index, String),
    Or(Vec<Query>),
}

impl By<'_> {
    /// The index query this selector stands for.
    pub(crate) fn query(&self) -> Query {
        let exact = |index, key: &str| Query::Exact(index, key.to_string());
        match self {
            By::All => Query::All,
            By::Id(id) => Query::Id(id.to_string()),
            By::IdPrefix(prefix) => Query::IdPrefix(prefix.to_string()),
            By::Name(name) => Query::Exact(Index::Name, name.to_lowercase()),
            By::NamePrefix(prefix) => Query::Prefix(Index::Name, prefix.to_lowercase()),
            By::ServiceId(id) => exact(Index::ServiceId, id),
            By::NodeId(id) => exact(Index::NodeId, id),
            By::Slot { service_id, slot } => Query::Exact(Index::Slot, slot_key(service_id, *slot)),
            By::DesiredState(state) => {
                Query::Exact(Index::DesiredState, (*state as i32).to_string())
            }
            By::TaskState(state) => Query::Exact(Index::TaskState, (*state as i32).to_string()),
            By::Role(role) => Query::Exact(Index::Role, (*role as i32).to_string()),
            By::Membership(m) => Query::Exact(Index::Membership, (*m as i32).to_string()),
            By::ReferencedNetwork(id) => exact(Index::Network, id),
            By::ReferencedSecret(id) => exact(Index::Secret, id),
            By::ReferencedConfig(id) => exact(Index::Config, id),
            By::Or(list) => Query::Or(list.iter().map(By::query).collect()),
        }
    }
}

impl Query {
    /// Whether an object with this ID and these index keys is selected; the same answer a table
    /// lookup gives, for objects that are not in a table yet (a transaction's own writes).
    pub(crate) fn matches(&self, id: &str, keys: &[(Index, Cow<'_, str>)]) -> bool {
        match self {
            Query::All => true,
            Query::Id(want) => id == want,
            Query::IdPrefix(prefix) => id.starts_with(prefix.as_str()),
            Query::Exact(index, want) => keys.iter().any(|(i, k)| i == index && **k == **want),
            Query::Prefix(index, prefix) => keys
                .iter()
                .any(|(i, k)| i == index && k.starts_with(prefix.as_str())),
            Query::Or(queries) => queries.iter().any(|q| q.matches(id, keys)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_cased_and_ids_are_not() {
        assert_eq!(
            By::Name("WeB").query(),
            Query::Exact(Index::Name, "web".into())
        );
        assert_eq!(
            By::NamePrefix("WE").query(),
            Query::Prefix(Index::Name, "we".into())
        );
        assert_eq!(By::IdPrefix("Ab").query(), Query::IdPrefix("Ab".into()));
    }

    #[test]
    fn matches_agrees_with_keys() {
        let keys = vec![
            (Index::Name, Cow::Borrowed("web.1.x")),
            (
                Index::DesiredState,
                Cow::Owned((api::TaskState::Running as i32).to_string()),
            ),
            (Index::Slot, Cow::Owned(slot_key("s1", 1))),
        ];
        assert!(By::NamePrefix("WEB.").query().matches("x", &keys));
        assert!(!By::Name("web").query().matches("x", &keys));
        assert!(
            By::DesiredState(api::TaskState::Running)
                .query()
                .matches("x", &keys)
        );
        assert!(
            !By::DesiredState(api::TaskState::Shutdown)
                .query()
                .matches("x", &keys)
        );
        assert!(
            By::Slot {
                service_id: "s1",
                slot: 1
            }
            .query()
            .matches("x", &keys)
        );
        assert!(
            !By::Slot {
                service_id: "s1",
                slot: 10
            }
            .query()
            .matches("x", &keys)
        );
        let or = By::Or(vec![By::Id("y"), By::IdPrefix("x")]);
        assert!(or.query().matches("xyz", &keys));
        assert!(!or.query().matches("zzz", &keys));
    }
}
