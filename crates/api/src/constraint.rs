//! Placement constraints (`key==value`, `key!=value`), as SwarmKit's `manager/constraint`: parsed by
//! the control API to validate specs, and matched against nodes by the scheduler, the global
//! orchestrator and the constraint enforcer. Keys and values compare case-insensitively.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use crate::{Node, NodeRole};

/// Prefix of constraints on the node's own labels (`Node.spec.annotations.labels`).
pub const NODE_LABEL_PREFIX: &str = "node.labels.";
/// Prefix of constraints on the engine's labels (`Node.description.engine.labels`).
pub const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

/// The operator of a placement constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    NotEq,
}

/// One parsed placement constraint `key op value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// e.g. `node.hostname`, `node.labels.zone`.
    pub key: String,
    /// `==` or `!=`.
    pub op: Op,
    /// The expected value.
    pub value: String,
}

static KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?i)[a-z_][a-z0-9\-_.]+$").expect("static regex"));
static VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?i)[a-z0-9:\-_\t\n\f\r \.\*\(\)\?\+\[\]\\\^\$\|/]+$").expect("static regex")
});

/// Parses constraint expressions. The error texts are SwarmKit's (`key 'x' is invalid`, `value 'x'
/// is invalid`, `constraint expected one operator from ==, !=`).
pub fn parse(exprs: &[String]) -> Result<Vec<Constraint>, String> {
    exprs.iter().map(|e| parse_one(e)).collect()
}

fn parse_one(expr: &str) -> Result<Constraint, String> {
    // `==` is tried before `!=`, so `a!=b==c` splits at `==` as in SwarmKit.
    for (token, op) in [("==", Op::Eq), ("!=", Op::NotEq)] {
        let Some((key, value)) = expr.split_once(token) else {
            continue;
        };
        let key = key.trim();
        if !KEY.is_match(key) {
            return Err(format!("key '{key}' is invalid"));
        }
        let value = value.trim();
        if !VALUE.is_match(value) {
            return Err(format!("value '{value}' is invalid"));
        }
        return Ok(Constraint {
            key: key.to_string(),
            op,
            value: value.to_string(),
        });
    }
    Err("constraint expected one operator from ==, !=".to_string())
}

impl Constraint {
    /// Whether `actual` satisfies the constraint (equality ignores ASCII case).
    pub fn matches(&self, actual: &str) -> bool {
        let equal = self.value.eq_ignore_ascii_case(actual);
        match self.op {
            Op::Eq => equal,
            Op::NotEq => !equal,
        }
    }

    /// Whether `node` satisfies this constraint. An unknown key matches no node; a missing
    /// description or label reads as the empty string.
    pub fn matches_node(&self, node: &Node) -> bool {
        let key = self.key.as_str();
        let description = node.description.as_ref();
        let platform = description.and_then(|d| d.platform.as_ref());
        if key.eq_ignore_ascii_case("node.id") {
            self.matches(&node.id)
        } else if key.eq_ignore_ascii_case("node.hostname") {
            self.matches(description.map_or("", |d| d.hostname.as_str()))
        } else if key.eq_ignore_ascii_case("node.ip") {
            self.matches_ip(node.status.as_ref().map_or("", |s| s.addr.as_str()))
        } else if key.eq_ignore_ascii_case("node.role") {
            let role = NodeRole::try_from(node.role).unwrap_or(NodeRole::Worker);
            self.matches(role.as_str_name())
        } else if key.eq_ignore_ascii_case("node.platform.os") {
            self.matches(platform.map_or("", |p| p.os.as_str()))
        } else if key.eq_ignore_ascii_case("node.platform.arch") {
            self.matches(platform.map_or("", |p| p.architecture.as_str()))
        } else if let Some(label) = strip_prefix_ignore_case(key, NODE_LABEL_PREFIX) {
            let labels = node
                .spec
                .as_ref()
                .and_then(|s| s.annotations.as_ref())
                .map(|a| &a.labels);
            self.matches(labels.and_then(|l| l.get(label)).map_or("", String::as_str))
        } else if let Some(label) = strip_prefix_ignore_case(key, ENGINE_LABEL_PREFIX) {
            let labels = description
                .and_then(|d| d.engine.as_ref())
                .map(|e| &e.labels);
            self.matches(labels.and_then(|l| l.get(label)).map_or("", String::as_str))
        } else {
            false
        }
    }

    /// `node.ip`: the value is an address or a CIDR subnet; anything else matches no node.
    fn matches_ip(&self, node_addr: &str) -> bool {
        let node_ip: Option<IpAddr> = node_addr.parse().ok();
        let hit = if let Ok(ip) = self.value.parse::<IpAddr>() {
            node_ip == Some(ip)
        } else if let Some((net, bits)) = parse_cidr(&self.value) {
            node_ip.is_some_and(|n| in_subnet(n, net, bits))
        } else {
            return false;
        };
        hit == (self.op == Op::Eq)
    }
}

/// Whether `node` satisfies every constraint.
pub fn node_matches(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches_node(node))
}

/// The part of `key` after `prefix` (compared ignoring ASCII case), if non-empty.
fn strip_prefix_ignore_case<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    if key.len() > prefix.len()
        && key.is_char_boundary(prefix.len())
        && key[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&key[prefix.len()..])
    } else {
        None
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

fn in_subnet(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        // An IPv4 node inside an IPv4-mapped IPv6 subnet, and the reverse.
        (IpAddr::V4(a), IpAddr::V6(b)) => (u128::from(a.to_ipv6_mapped()), u128::from(b), 128),
        (IpAddr::V6(a), IpAddr::V4(b)) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
            None => return false,
        },
    };
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (ip >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Annotations, EngineDescription, NodeDescription, NodeSpec, NodeStatus, Platform};

    fn node() -> Node {
        Node {
            id: "n1".into(),
            role: NodeRole::Manager as i32,
            spec: Some(NodeSpec {
                annotations: Some(Annotations {
                    labels: [("zone".to_string(), "East".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: "host-a".into(),
                platform: Some(Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                engine: Some(EngineDescription {
                    labels: [("disk".to_string(), "ssd".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addr: "10.0.3.7".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(expr: &str) -> bool {
        let parsed = parse(&[expr.to_string()]).unwrap_or_else(|e| panic!("{expr}: {e}"));
        node_matches(&parsed, &node())
    }

    #[test]
    fn parse_errors_are_swarmkits() {
        let err = |e: &str| parse(&[e.to_string()]).unwrap_err();
        assert_eq!(
            err("garbage"),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(err("no de==x"), "key 'no de' is invalid");
        assert_eq!(err("node.id==a,b"), "value 'a,b' is invalid");
        assert_eq!(err("==x"), "key '' is invalid");
        let c = parse(&["  node.role != worker ".to_string()]).unwrap();
        assert_eq!(
            c,
            vec![Constraint {
                key: "node.role".into(),
                op: Op::NotEq,
                value: "worker".into()
            }]
        );
    }

    #[test]
    fn node_keys_match_case_insensitively() {
        assert!(check("node.id==N1"));
        assert!(!check("node.id!=n1"));
        assert!(check("node.hostname==HOST-A"));
        assert!(check("node.role==manager"));
        assert!(!check("node.role==worker"));
        assert!(check("node.platform.os==linux"));
        assert!(check("node.platform.arch!=aarch64"));
        assert!(check("node.labels.zone==east"));
        assert!(check("Node.Labels.zone==east"));
        assert!(check("node.labels.missing!=x"));
        assert!(check("engine.labels.disk==ssd"));
        assert!(!check("engine.labels.disk==hdd"));
        assert!(!check("node.unknown==x"));
        assert!(!check("node.unknown!=x"));
    }

    #[test]
    fn node_ip_takes_addresses_and_subnets() {
        assert!(check("node.ip==10.0.3.7"));
        assert!(!check("node.ip!=10.0.3.7"));
        assert!(check("node.ip==10.0.0.0/16"));
        assert!(!check("node.ip==10.1.0.0/16"));
        assert!(check("node.ip!=10.1.0.0/16"));
        assert!(!check("node.ip==somewhere"));
    }
}
