//! The balancer's tables as nftables JSON, applied by the `nft` command through the `nftables`
//! crate: one `nft -j -f -` per table, which the kernel takes as one transaction. What to put
//! in the table is `lb.rs`'s business; this file turns its small model (chains of rules made
//! of [`Expr`]s, and the backend lists they spread over) into the crate's schema.
//!
//! `nft` works in its own network namespace, which it inherits from the thread that starts
//! it: [`in_netns`] runs the apply on a thread that entered the task's namespace.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nftables::expr::{
    CT, CTDir, Expression, Fib, FibFlag, FibResult, Map, Meta, MetaKey, NamedExpression, NgMode,
    Numgen, Payload, PayloadField, Prefix, SetItem,
};
use nftables::helper::{self, NftablesError};
use nftables::schema::{self, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{Mangle, Match, NAT, NATFamily, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};

/// A base chain's place in the packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// The priorities of base chains, as nft names them `mangle`, `dstnat`, `filter` and `srcnat`.
pub const PRIORITY_MANGLE: i32 = -150;
pub const PRIORITY_DSTNAT: i32 = -100;
pub const PRIORITY_FILTER: i32 = 0;
pub const PRIORITY_SRCNAT: i32 = 100;

/// A transport protocol a published port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    Tcp,
    Udp,
    Sctp,
}

impl L4 {
    fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
            L4::Sctp => "sctp",
        }
    }
}

/// One match or action of a rule (one nftables statement, or a short sequence of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// The packet is IPv4.
    Ipv4,
    /// The destination address is one of this host's (`fib daddr type local`).
    DaddrLocal,
    /// The IPv4 destination is exactly this address.
    Daddr(Ipv4Addr),
    /// The IPv4 destination is inside this network.
    DaddrIn(Ipv4Addr, u8),
    /// The IPv4 source is inside this network.
    SaddrIn(Ipv4Addr, u8),
    /// The transport protocol and destination port.
    Dport(L4, u16),
    /// The connection's destination was translated (`ct status dnat`).
    CtDnat,
    /// The transport protocol, and the destination port the connection's first packet had,
    /// before any translation (`ct original proto-dst`).
    CtOriginalDport(L4, u16),
    /// Destination NAT to one of the addresses of the table's list `set`, chosen at random for
    /// each new connection (`numgen random mod <size>`: a counter would restart at 0 with each
    /// rebuilt table and favour the first backend), keeping the port, or to `port` when given.
    DnatSpread {
        set: String,
        size: u32,
        port: Option<u16>,
    },
    /// Source NAT to this address.
    Snat(Ipv4Addr),
    /// The connection is established or related to one (`ct state established,related`).
    CtEstablished,
    /// The packet came in on an interface whose name matches (`iifname`, `*` as a wildcard at
    /// the end), or (`false`) does not.
    Iifname(String, bool),
    /// The packet goes out on an interface whose name matches, or (`false`) does not.
    Oifname(String, bool),
    /// Accept the packet (end of this chain).
    Accept,
    /// Drop the packet.
    Drop,
    /// Leave this chain (the packet goes on as if it had not matched any of its rules).
    Return,
    /// Refuse the packet with an ICMP port unreachable (a TCP connect fails with "connection
    /// refused" at once); filter chains only.
    Reject,
}

/// What one table holds: base chains with their rules, and the backend lists rules spread
/// over (by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: Vec<Chain>,
    pub maps: Vec<(String, Vec<Ipv4Addr>)>,
}

impl Table {
    /// Every address its maps translate to.
    pub fn backends(&self) -> BTreeSet<Ipv4Addr> {
        self.maps
            .iter()
            .flat_map(|(_, a)| a.iter().copied())
            .collect()
    }
}

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// NAT (`nat`: its rules see a connection's first packet only) or not (`filter`).
    pub nat: bool,
    pub hook: Hook,
    pub priority: i32,
    pub rules: Vec<Vec<Expr>>,
}

/// The token of a table is the name of an empty regular chain of it, after this prefix (the
/// JSON of nft 1.0.6 keeps no comment on tables or sets).
const TOKEN_CHAIN: &str = "token-";

/// The conntrack mark of a connection translated to `backend`: its address as an integer.
pub fn backend_mark(backend: Ipv4Addr) -> u32 {
    u32::from(backend)
}

/// Makes table `name` (family inet) of the calling thread's namespace hold exactly `content`
/// in one transaction, or removes it when `content` is `None` (nothing happens when it is
/// absent). The new table carries `token`, which [`table_token`] reads back.
pub fn replace_table(name: &str, content: Option<&Table>, token: &[u8]) -> io::Result<()> {
    let batch = Nftables {
        objects: Cow::Owned(replace(name, content, token)),
    };
    apply(&batch)
}

/// Runs `nft -j -f -` on `batch`, as the crate's `helper::apply_ruleset` does, but keeping
/// nft's error message (the crate lets it go to our stderr and reports only that nft failed).
fn apply(batch: &Nftables) -> io::Result<()> {
    let json = serde_json::to_vec(batch).map_err(io::Error::other)?;
    let mut nft = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running nft: {e}")))?;
    let mut stdin = nft.stdin.take().expect("a piped stdin");
    let written = stdin.write_all(&json);
    drop(stdin);
    let out = nft.wait_with_output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "nft failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    written
}

/// Whether table `name` (family inet) exists.
pub fn table_exists(name: &str) -> io::Result<bool> {
    Ok(list("tables")?
        .iter()
        .any(|o| matches!(o, NfObject::ListObject(NfListObject::Table(t)) if t.name == name)))
}

/// The token [`replace_table`] wrote into table `name`, or `None` when there is no such table
/// or it has no token (then it is not one this module made).
pub fn table_token(name: &str) -> io::Result<Option<Vec<u8>>> {
    Ok(list("chains")?.iter().find_map(|o| match o {
        NfObject::ListObject(NfListObject::Chain(c)) if c.table == name => c
            .name
            .strip_prefix(TOKEN_CHAIN)
            .map(|t| t.as_bytes().to_vec()),
        _ => None,
    }))
}

/// The objects of `what` (`tables`, `chains`) of family inet (rules are not read: the crate need
/// not parse everything nft prints).
fn list(what: &str) -> io::Result<Vec<NfObject<'static>>> {
    let listed = helper::get_current_ruleset_with_args(None::<&str>, ["list", what, "inet"])
        .map_err(nft_error)?;
    Ok(listed.objects.into_owned())
}

fn nft_error(e: NftablesError) -> io::Error {
    match e {
        NftablesError::NftFailed { stderr, hint, .. } => {
            io::Error::other(format!("nft failed {hint}: {}", stderr.trim()))
        }
        NftablesError::NftExecution { inner, .. } => inner,
        other => io::Error::other(other),
    }
}

fn table_object(name: &str) -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: NfFamily::INet,
        name: name.to_owned().into(),
        handle: None,
    })
}

/// The commands making `table` hold exactly `content`. Adding it first makes the deletion
/// valid when it did not exist.
fn replace(table: &str, content: Option<&Table>, token: &[u8]) -> Vec<NfObject<'static>> {
    let mut batch = vec![
        NfObject::CmdObject(NfCmd::Add(table_object(table))),
        NfObject::CmdObject(NfCmd::Delete(table_object(table))),
    ];
    let Some(content) = content else {
        return batch;
    };
    let add = |o| NfObject::CmdObject(NfCmd::Add(o));
    batch.push(add(table_object(table)));
    batch.push(add(NfListObject::Chain(schema::Chain {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: format!("{TOKEN_CHAIN}{}", String::from_utf8_lossy(token)).into(),
        ..schema::Chain::default()
    })));
    for chain in &content.chains {
        batch.push(add(NfListObject::Chain(schema::Chain {
            family: NfFamily::INet,
            table: table.to_owned().into(),
            name: chain.name.clone().into(),
            _type: Some(if chain.nat {
                NfChainType::NAT
            } else {
                NfChainType::Filter
            }),
            hook: Some(match chain.hook {
                Hook::Prerouting => NfHook::Prerouting,
                Hook::Input => NfHook::Input,
                Hook::Forward => NfHook::Forward,
                Hook::Output => NfHook::Output,
                Hook::Postrouting => NfHook::Postrouting,
            }),
            prio: Some(chain.priority),
            policy: Some(NfChainPolicy::Accept),
            ..schema::Chain::default()
        })));
        for rule in &chain.rules {
            let expr: Vec<Statement> = rule
                .iter()
                .flat_map(|e| statements(e, &content.maps))
                .collect();
            batch.push(add(NfListObject::Rule(schema::Rule {
                family: NfFamily::INet,
                table: table.to_owned().into(),
                chain: chain.name.clone().into(),
                expr: expr.into(),
                ..schema::Rule::default()
            })));
        }
    }
    batch
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn named(e: NamedExpression<'static>) -> Expression<'static> {
    Expression::Named(e)
}

fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn ct(key: &'static str, dir: Option<CTDir>) -> Expression<'static> {
    named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir,
    }))
}

fn meta(key: MetaKey) -> Expression<'static> {
    named(NamedExpression::Meta(Meta { key }))
}

/// `iifname`/`oifname` equal (`is`) or not to `name`.
fn ifname(key: MetaKey, name: &str, is: bool) -> Statement<'static> {
    Statement::Match(Match {
        left: meta(key),
        right: string(name),
        op: if is { Operator::EQ } else { Operator::NEQ },
    })
}

/// `key map { k : v, ... }` with an anonymous map.
fn map(
    key: Expression<'static>,
    pairs: impl Iterator<Item = (Expression<'static>, Expression<'static>)>,
) -> Expression<'static> {
    let items = pairs.map(|(k, v)| SetItem::Mapping(k, v)).collect();
    named(NamedExpression::Map(Box::new(Map {
        key,
        data: named(NamedExpression::Set(items)),
    })))
}

/// The statements of `e`; `maps` are the table's backend lists.
fn statements(e: &Expr, maps: &[(String, Vec<Ipv4Addr>)]) -> Vec<Statement<'static>> {
    match e {
        Expr::Ipv4 => vec![eq(meta(MetaKey::Nfproto), string("ipv4"))],
        Expr::DaddrLocal => vec![eq(
            named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: HashSet::from([FibFlag::Daddr]),
            })),
            string("local"),
        )],
        Expr::Daddr(addr) => vec![eq(payload("ip", "daddr"), string(addr.to_string()))],
        Expr::DaddrIn(net, prefix) => vec![eq(
            payload("ip", "daddr"),
            named(NamedExpression::Prefix(Prefix {
                addr: Box::new(string(net.to_string())),
                len: u32::from(*prefix),
            })),
        )],
        Expr::SaddrIn(net, prefix) => vec![eq(
            payload("ip", "saddr"),
            named(NamedExpression::Prefix(Prefix {
                addr: Box::new(string(net.to_string())),
                len: u32::from(*prefix),
            })),
        )],
        Expr::Dport(l4, port) => vec![eq(
            payload(l4.name(), "dport"),
            Expression::Number(u32::from(*port)),
        )],
        Expr::CtDnat => vec![Statement::Match(Match {
            left: ct("status", None),
            right: string("dnat"),
            op: Operator::IN,
        })],
        Expr::CtEstablished => vec![Statement::Match(Match {
            left: ct("state", None),
            right: Expression::List(vec![string("established"), string("related")]),
            op: Operator::IN,
        })],
        Expr::Iifname(name, is) => vec![ifname(MetaKey::Iifname, name, *is)],
        Expr::Oifname(name, is) => vec![ifname(MetaKey::Oifname, name, *is)],
        Expr::Accept => vec![Statement::Accept(None)],
        Expr::Drop => vec![Statement::Drop(None)],
        Expr::Return => vec![Statement::Return(None)],
        Expr::CtOriginalDport(l4, port) => vec![
            eq(meta(MetaKey::L4proto), string(l4.name())),
            eq(
                ct("proto-dst", Some(CTDir::Original)),
                Expression::Number(u32::from(*port)),
            ),
        ],
        Expr::DnatSpread { set, size, port } => {
            let addrs = maps
                .iter()
                .find(|(name, _)| name == set)
                .map(|(_, a)| a.as_slice())
                .expect("a rule names a map of its table");
            // The connection remembers its backend in its mark (so that its conntrack entry
            // can be flushed once the backend is gone, see `conntrack.rs`), and the
            // translation reads the address back from the mark: one `numgen` per rule.
            let index_to_mark = map(
                named(NamedExpression::Numgen(Numgen {
                    mode: NgMode::Random,
                    ng_mod: *size,
                    offset: None,
                })),
                addrs.iter().enumerate().map(|(i, a)| {
                    let i = u32::try_from(i).expect("fewer than 2^32 backends");
                    (Expression::Number(i), Expression::Number(backend_mark(*a)))
                }),
            );
            let mark_to_addr = map(
                ct("mark", None),
                addrs
                    .iter()
                    .map(|a| (Expression::Number(backend_mark(*a)), string(a.to_string()))),
            );
            vec![
                Statement::Mangle(Mangle {
                    key: ct("mark", None),
                    value: index_to_mark,
                }),
                Statement::DNAT(Some(NAT {
                    addr: Some(mark_to_addr),
                    family: Some(NATFamily::IP),
                    port: port.map(|p| Expression::Number(u32::from(p))),
                    flags: None,
                })),
            ]
        }
        Expr::Snat(addr) => vec![Statement::SNAT(Some(NAT {
            addr: Some(string(addr.to_string())),
            family: Some(NATFamily::IP),
            port: None,
            flags: None,
        }))],
        Expr::Reject => vec![Statement::Reject(Some(Reject {
            _type: Some(RejectType::ICMPX),
            expr: Some(RejectCode::PortUnreach),
        }))],
    }
}

/// Runs `f` in the network namespace `netns` names (`None`: right here), from a new thread that
/// enters it and ends with `f` (the `nft` it starts inherits the namespace).
pub fn in_netns<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let Some(path) = netns else { return f() };
    let path: PathBuf = path.to_owned();
    std::thread::spawn(move || {
        let ns = File::open(&path)?;
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| io::Error::other(format!("entering {}: {e}", path.display())))?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("a thread entering a network namespace panicked"))?
}
