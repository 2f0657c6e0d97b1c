//! The few nf_tables netlink messages the balancer needs, encoded by hand and sent in one
//! batch (one kernel transaction) over a `NETLINK_NETFILTER` socket opened in the namespace
//! the rules are for. What to put in the table is `lb.rs`'s business; this file only knows the
//! wire format (linux/netfilter/nf_tables.h, nfnetlink.h: a netlink header, a `nfgenmsg`, then
//! attributes whose integers are big-endian).
//!
//! Why not a crate: the kernel here has no IPVS, `rustables` is GPL-3.0 and needs libclang to
//! build, and the handful of messages below is smaller than either (see BUILDING.md).

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

// Netlink (linux/netlink.h).
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 1 << 15;

// nfnetlink.h
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

// nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;

// nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;

/// `NFPROTO_INET`: the table family, for IPv4 and IPv6 at once.
const NFPROTO_INET: u8 = 1;
/// `NFPROTO_IPV4`, as NAT's and `meta nfproto`'s value.
const NFPROTO_IPV4: u32 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;

const NFT_SET_MAP: u32 = 0x8;
/// nft's own type numbers (userspace metadata the kernel keeps for `nft list`): integer, and
/// IPv4 address.
const NFT_TYPE_INTEGER: u32 = 4;
const NFT_TYPE_IPADDR: u32 = 7;

/// The two 16-byte registers the expressions pass values in.
const REG_1: u32 = 1;
const REG_2: u32 = 2;

/// `NF_ACCEPT`, a base chain's policy.
const NF_ACCEPT: u32 = 1;

/// A base chain's place in the packet path (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Output = 3,
    Postrouting = 4,
}

/// The priorities of base chains, as nft names them `dstnat`, `filter` and `srcnat`.
pub const PRIORITY_DSTNAT: i32 = -100;
pub const PRIORITY_FILTER: i32 = 0;
pub const PRIORITY_SRCNAT: i32 = 100;

/// A transport protocol a published port is for (IP protocol number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

/// One match or action of a rule (an nf_tables expression, or a short sequence of them).
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
    /// The transport protocol and destination port.
    Dport(L4, u16),
    /// The connection's destination was translated (`ct status dnat`).
    CtDnat,
    /// The transport protocol, and the destination port the connection's first packet had,
    /// before any translation (`ct original proto-dst`).
    CtOriginalDport(L4, u16),
    /// Destination NAT to the map `set`'s entry for `numgen inc mod <its size>`, keeping the
    /// port, or to `port` when given.
    DnatSpread {
        set: String,
        size: u32,
        port: Option<u16>,
    },
    /// Source NAT to this address.
    Snat(Ipv4Addr),
    /// Refuse the packet with an ICMP port unreachable (a TCP connect fails with "connection
    /// refused" at once); filter chains only.
    Reject,
}

/// What one table holds: base chains with their rules, and the maps rules spread over (key
/// 0..n -> an IPv4 address).
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

/// Netlink messages sent together: a batch of nf_tables messages making one transaction, or
/// a single request. Only the last message asks for an acknowledgement: the kernel reports
/// every failing message anyway, and one answer per message would overflow the socket's
/// receive buffer on a large view.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Where the last message starts.
    last: usize,
}

impl Batch {
    fn empty() -> Batch {
        Batch {
            buf: Vec::new(),
            seq: 0,
            last: 0,
        }
    }

    /// A batch for one nf_tables transaction; [`Batch::finish`] closes it.
    fn new() -> Batch {
        let mut b = Batch::empty();
        b.message(NFNL_MSG_BATCH_BEGIN, 0, 0, |_| {});
        b
    }

    fn finish(mut self) -> Batch {
        self.ack_last();
        self.message(NFNL_MSG_BATCH_END, 0, 0, |_| {});
        self
    }

    /// Asks for an acknowledgement of the last message, which ends the kernel's answer.
    fn ack_last(&mut self) {
        let at = self.last + 6;
        let flags = u16::from_ne_bytes(self.buf[at..at + 2].try_into().expect("2 bytes"));
        self.buf[at..at + 2].copy_from_slice(&(flags | NLM_F_ACK).to_ne_bytes());
    }

    /// One nf_tables message of `kind` (`NFT_MSG_*`, or a batch marker).
    fn message(&mut self, kind: u16, family: u8, flags: u16, attrs: impl FnOnce(&mut Attrs)) {
        if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
            // The resource ID of a batch marker names the subsystem the batch is for.
            self.raw(kind, NLM_F_REQUEST, family, NFNL_SUBSYS_NFTABLES, |_| {});
        } else {
            let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
            self.raw(kind, NLM_F_REQUEST | flags, family, 0, attrs);
        }
    }

    /// A ctnetlink flush of the IPv4 conntrack entries whose mark is `mark`.
    fn conntrack_delete(&mut self, mark: u32) {
        let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
        let family = NFPROTO_IPV4 as u8;
        self.raw(kind, NLM_F_REQUEST, family, 0, |a| {
            a.u32(CTA_MARK, mark);
            a.u32(CTA_MARK_MASK, u32::MAX);
        });
    }

    /// One message: a netlink header, a `nfgenmsg` (family, version 0, resource ID), then
    /// `attrs`.
    fn raw(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        attrs: impl FnOnce(&mut Attrs),
    ) {
        self.seq += 1;
        let start = self.buf.len();
        self.last = start;
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut Attrs { buf: &mut self.buf });
        let len = u32::try_from(self.buf.len() - start).expect("a message is far below 4 GiB");
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn table_message(&mut self, kind: u16, flags: u16, name: &str) {
        self.message(kind, NFPROTO_INET, flags, |a| a.str(NFTA_TABLE_NAME, name));
    }

    /// Makes `table` hold exactly `content`, replacing what it held (or removing it when
    /// `content` is `None`). Creating it first makes the deletion valid when it did not exist.
    fn replace(&mut self, table: &str, content: Option<&Table>, token: &[u8]) {
        self.table_message(NFT_MSG_NEWTABLE, NLM_F_CREATE, table);
        self.table_message(NFT_MSG_DELTABLE, 0, table);
        let Some(content) = content else { return };
        self.message(
            NFT_MSG_NEWTABLE,
            NFPROTO_INET,
            NLM_F_CREATE | NLM_F_EXCL,
            |a| {
                a.str(NFTA_TABLE_NAME, table);
                a.bytes(NFTA_TABLE_USERDATA, token);
            },
        );
        for (id, (name, addrs)) in content.maps.iter().enumerate() {
            let id = u32::try_from(id).expect("fewer than 2^32 maps");
            self.map(table, name, id, addrs);
        }
        for chain in &content.chains {
            self.message(NFT_MSG_NEWCHAIN, NFPROTO_INET, NLM_F_CREATE, |a| {
                a.str(NFTA_CHAIN_TABLE, table);
                a.str(NFTA_CHAIN_NAME, &chain.name);
                a.nested(NFTA_CHAIN_HOOK, |a| {
                    a.u32(NFTA_HOOK_HOOKNUM, chain.hook as u32);
                    a.u32(NFTA_HOOK_PRIORITY, chain.priority as u32);
                });
                a.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                a.str(NFTA_CHAIN_TYPE, if chain.nat { "nat" } else { "filter" });
            });
            for rule in &chain.rules {
                self.message(
                    NFT_MSG_NEWRULE,
                    NFPROTO_INET,
                    NLM_F_CREATE | NLM_F_APPEND,
                    |a| {
                        a.str(NFTA_RULE_TABLE, table);
                        a.str(NFTA_RULE_CHAIN, &chain.name);
                        a.nested(NFTA_RULE_EXPRESSIONS, |a| {
                            for e in rule {
                                expr(a, e, &content.maps);
                            }
                        });
                    },
                );
            }
        }
    }

    /// A named map from 0..n (host byte order, as `numgen` yields it) to IPv4 addresses.
    fn map(&mut self, table: &str, name: &str, id: u32, addrs: &[Ipv4Addr]) {
        self.message(NFT_MSG_NEWSET, NFPROTO_INET, NLM_F_CREATE, |a| {
            a.str(NFTA_SET_TABLE, table);
            a.str(NFTA_SET_NAME, name);
            a.u32(NFTA_SET_FLAGS, NFT_SET_MAP);
            a.u32(NFTA_SET_KEY_TYPE, NFT_TYPE_INTEGER);
            a.u32(NFTA_SET_KEY_LEN, 4);
            a.u32(NFTA_SET_DATA_TYPE, NFT_TYPE_IPADDR);
            a.u32(NFTA_SET_DATA_LEN, 4);
            a.u32(NFTA_SET_ID, id);
        });
        if addrs.is_empty() {
            return;
        }
        self.message(NFT_MSG_NEWSETELEM, NFPROTO_INET, NLM_F_CREATE, |a| {
            a.str(NFTA_SET_ELEM_LIST_TABLE, table);
            a.str(NFTA_SET_ELEM_LIST_SET, name);
            a.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
            a.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
                for (i, addr) in addrs.iter().enumerate() {
                    let key = u32::try_from(i).expect("fewer than 2^32 backends");
                    a.nested(NFTA_LIST_ELEM, |a| {
                        a.nested(NFTA_SET_ELEM_KEY, |a| {
                            a.bytes(NFTA_DATA_VALUE, &key.to_ne_bytes())
                        });
                        a.nested(NFTA_SET_ELEM_DATA, |a| {
                            a.bytes(NFTA_DATA_VALUE, &addr.octets())
                        });
                    });
                }
            });
        });
    }
}

/// The conntrack mark of a connection translated to `backend`: its address, as the register
/// holding it reads as a host-order integer.
fn backend_mark(backend: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(backend.octets())
}

/// Appends the expressions of `e` to a rule's expression list.
fn expr(a: &mut Attrs, e: &Expr, maps: &[(String, Vec<Ipv4Addr>)]) {
    match e {
        Expr::Ipv4 => {
            meta(a, META_NFPROTO);
            cmp_eq(a, REG_1, &[NFPROTO_IPV4 as u8]);
        }
        Expr::DaddrLocal => {
            one(a, "fib", |a| {
                a.u32(NFTA_FIB_DREG, REG_1);
                a.u32(NFTA_FIB_RESULT, FIB_RESULT_ADDRTYPE);
                a.u32(NFTA_FIB_FLAGS, FIB_F_DADDR);
            });
            cmp_eq(a, REG_1, &RTN_LOCAL.to_ne_bytes());
        }
        Expr::Daddr(addr) => {
            payload(a, PAYLOAD_NETWORK, IPV4_DADDR_OFFSET, 4);
            cmp_eq(a, REG_1, &addr.octets());
        }
        Expr::DaddrIn(net, prefix) => {
            payload(a, PAYLOAD_NETWORK, IPV4_DADDR_OFFSET, 4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from((*prefix).min(32)))
                .unwrap_or(0);
            bitwise_and(a, &mask.to_be_bytes());
            cmp_eq(a, REG_1, &(u32::from(*net) & mask).to_be_bytes());
        }
        Expr::Dport(l4, port) => {
            meta(a, META_L4PROTO);
            cmp_eq(a, REG_1, &[*l4 as u8]);
            payload(a, PAYLOAD_TRANSPORT, 2, 2);
            cmp_eq(a, REG_1, &port.to_be_bytes());
        }
        Expr::CtDnat => {
            one(a, "ct", |a| {
                a.u32(NFTA_CT_DREG, REG_1);
                a.u32(NFTA_CT_KEY, CT_STATUS);
            });
            bitwise_and(a, &IPS_DST_NAT.to_ne_bytes());
            one(a, "cmp", |a| {
                a.u32(NFTA_CMP_SREG, REG_1);
                a.u32(NFTA_CMP_OP, CMP_NEQ);
                a.nested(NFTA_CMP_DATA, |a| a.bytes(NFTA_DATA_VALUE, &[0; 4]));
            });
        }
        Expr::CtOriginalDport(l4, port) => {
            meta(a, META_L4PROTO);
            cmp_eq(a, REG_1, &[*l4 as u8]);
            one(a, "ct", |a| {
                a.u32(NFTA_CT_DREG, REG_1);
                a.u32(NFTA_CT_KEY, CT_PROTO_DST);
                a.bytes(NFTA_CT_DIRECTION, &[CT_DIR_ORIGINAL]);
            });
            cmp_eq(a, REG_1, &port.to_be_bytes());
        }
        Expr::DnatSpread { set, size, port } => {
            let id = maps
                .iter()
                .position(|(name, _)| name == set)
                .expect("a rule names a map of its table");
            let id = u32::try_from(id).expect("fewer than 2^32 maps");
            one(a, "numgen", |a| {
                a.u32(NFTA_NG_DREG, REG_1);
                a.u32(NFTA_NG_MODULUS, *size);
                a.u32(NFTA_NG_TYPE, NG_INCREMENTAL);
                a.u32(NFTA_NG_OFFSET, 0);
            });
            one(a, "lookup", |a| {
                a.str(NFTA_LOOKUP_SET, set);
                a.u32(NFTA_LOOKUP_SREG, REG_1);
                a.u32(NFTA_LOOKUP_DREG, REG_1);
                a.u32(NFTA_LOOKUP_SET_ID, id);
            });
            // The connection remembers its backend in its mark, so that its conntrack entry
            // can be flushed once the backend is gone (see `Socket::forget_backend`).
            one(a, "ct", |a| {
                a.u32(NFTA_CT_KEY, CT_MARK);
                a.u32(NFTA_CT_SREG, REG_1);
            });
            if let Some(port) = port {
                immediate(a, REG_2, &port.to_be_bytes());
            }
            nat(a, NAT_DNAT, port.is_some());
        }
        Expr::Snat(addr) => {
            immediate(a, REG_1, &addr.octets());
            nat(a, NAT_SNAT, false);
        }
        Expr::Reject => one(a, "reject", |a| {
            a.u32(NFTA_REJECT_TYPE, REJECT_ICMPX_UNREACH);
            a.bytes(NFTA_REJECT_ICMP_CODE, &[REJECT_ICMPX_PORT_UNREACH]);
        }),
    }
}

const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const FIB_F_DADDR: u32 = 2;
/// `RTN_LOCAL`, the address type of this host's own addresses.
const RTN_LOCAL: u32 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const IPV4_DADDR_OFFSET: u32 = 16;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFTA_CT_SREG: u16 = 4;
const CT_PROTO_DST: u32 = 12;
const CT_DIR_ORIGINAL: u8 = 0;
const CT_STATUS: u32 = 2;
const CT_MARK: u32 = 3;
/// `IPS_DST_NAT` in the conntrack status bits.
const IPS_DST_NAT: u32 = 1 << 5;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NG_INCREMENTAL: u32 = 0;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const REJECT_ICMPX_UNREACH: u32 = 2;
const REJECT_ICMPX_PORT_UNREACH: u8 = 1;
const NAT_SNAT: u32 = 0;
const NAT_DNAT: u32 = 1;

/// One expression of kind `name` with the attributes `data` writes.
fn one(a: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    a.nested(NFTA_LIST_ELEM, |a| {
        a.str(NFTA_EXPR_NAME, name);
        a.nested(NFTA_EXPR_DATA, data);
    });
}

fn meta(a: &mut Attrs, key: u32) {
    one(a, "meta", |a| {
        a.u32(NFTA_META_DREG, REG_1);
        a.u32(NFTA_META_KEY, key);
    });
}

fn payload(a: &mut Attrs, base: u32, offset: u32, len: u32) {
    one(a, "payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, REG_1);
        a.u32(NFTA_PAYLOAD_BASE, base);
        a.u32(NFTA_PAYLOAD_OFFSET, offset);
        a.u32(NFTA_PAYLOAD_LEN, len);
    });
}

fn cmp_eq(a: &mut Attrs, reg: u32, value: &[u8]) {
    one(a, "cmp", |a| {
        a.u32(NFTA_CMP_SREG, reg);
        a.u32(NFTA_CMP_OP, CMP_EQ);
        a.nested(NFTA_CMP_DATA, |a| a.bytes(NFTA_DATA_VALUE, value));
    });
}

/// `reg1 = reg1 & mask` (as nf_tables writes it: `(reg & mask) ^ 0`).
fn bitwise_and(a: &mut Attrs, mask: &[u8]) {
    let len = u32::try_from(mask.len()).expect("a short mask");
    one(a, "bitwise", |a| {
        a.u32(NFTA_BITWISE_SREG, REG_1);
        a.u32(NFTA_BITWISE_DREG, REG_1);
        a.u32(NFTA_BITWISE_LEN, len);
        a.nested(NFTA_BITWISE_MASK, |a| a.bytes(NFTA_DATA_VALUE, mask));
        a.nested(NFTA_BITWISE_XOR, |a| {
            a.bytes(NFTA_DATA_VALUE, &vec![0; mask.len()])
        });
    });
}

fn immediate(a: &mut Attrs, reg: u32, value: &[u8]) {
    one(a, "immediate", |a| {
        a.u32(NFTA_IMMEDIATE_DREG, reg);
        a.nested(NFTA_IMMEDIATE_DATA, |a| a.bytes(NFTA_DATA_VALUE, value));
    });
}

/// NAT of `kind` to the address in register 1 and, with `port`, the port in register 2.
fn nat(a: &mut Attrs, kind: u32, port: bool) {
    one(a, "nat", |a| {
        a.u32(NFTA_NAT_TYPE, kind);
        a.u32(NFTA_NAT_FAMILY, NFPROTO_IPV4);
        a.u32(NFTA_NAT_REG_ADDR_MIN, REG_1);
        if port {
            a.u32(NFTA_NAT_REG_PROTO_MIN, REG_2);
        }
    });
}

/// Writes netlink attributes (type-length-value, each padded to 4 bytes) into a message.
struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).expect("an attribute below 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A NUL-terminated string, as the kernel's policies expect.
    fn str(&mut self, kind: u16, value: &str) {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.bytes(kind, &v);
    }

    /// nf_tables reads its integers big-endian.
    fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 2]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Attrs { buf: self.buf });
        let len = u16::try_from(self.buf.len() - start).expect("a nest below 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// A batch up to this size fits any netlink socket's default send buffer.
const SMALL_BATCH: usize = 64 * 1024;

/// How long the kernel may take to answer a transaction before the socket gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A `NETLINK_NETFILTER` socket, bound to the namespace it was opened in for its whole life.
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens one in the calling thread's network namespace.
    fn open_here() -> io::Result<Socket> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::NETFILTER),
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(ANSWER_TIMEOUT),
        )?;
        Ok(Socket { fd })
    }

    /// Opens one in the namespace `netns` names (`None`: this process's own), from a short-lived
    /// thread that enters it, so that no other thread changes namespace.
    pub fn open(netns: Option<&Path>) -> io::Result<Socket> {
        in_netns(netns, Socket::open_here)
    }

    /// Makes table `name` (family inet) hold exactly `content` in one transaction, or removes
    /// it when `content` is `None` (nothing happens when it is absent).
    /// The new table carries `token` (its user data), which [`Socket::table_token`] reads back.
    pub fn replace_table(
        &self,
        name: &str,
        content: Option<&Table>,
        token: &[u8],
    ) -> io::Result<()> {
        let mut batch = Batch::new();
        batch.replace(name, content, token);
        self.commit(batch.finish()).map(drop)
    }

    /// Whether table `name` (family inet) exists.
    pub fn table_exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.table_token(name)?.is_some())
    }

    /// The token [`Socket::replace_table`] wrote into table `name` (empty when it has none),
    /// or `None` when there is no such table.
    pub fn table_token(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let mut get = Batch::empty();
        get.table_message(NFT_MSG_GETTABLE, 0, name);
        get.ack_last();
        let answers = match self.commit(get) {
            Ok(answers) => answers,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // After the nfgenmsg header, the table's attributes.
        let mut attrs = answers.first().map(|a| a.get(4..).unwrap_or_default());
        let mut token = Vec::new();
        while let Some(rest) = attrs.filter(|r| r.len() >= 4) {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED;
            if len < 4 || len > rest.len() {
                break;
            }
            if kind == NFTA_TABLE_USERDATA {
                token = rest[4..len].to_vec();
            }
            attrs = rest.get(len.next_multiple_of(4)..);
        }
        Ok(Some(token))
    }

    /// Drops the conntrack entries of connections translated to `backend` (their mark, see
    /// [`Expr::DnatSpread`]), so that packets of a flow that went there (a UDP client reusing
    /// its socket) are balanced anew instead of going to a task that is gone.
    pub fn forget_backend(&self, backend: Ipv4Addr) -> io::Result<()> {
        let mut msg = Batch::empty();
        msg.conntrack_delete(backend_mark(backend));
        msg.ack_last();
        self.commit(msg).map(drop)
    }

    /// Sends `batch` and reads the kernel's answers until the last message is acknowledged;
    /// the first error fails the whole transaction (the kernel has then applied none of it).
    fn commit(&self, batch: Batch) -> io::Result<Vec<Vec<u8>>> {
        // The kernel takes a batch in one piece: the send buffer must hold it (nft does the
        // same). Forcing it past the system's limit needs CAP_NET_ADMIN, which programming
        // nf_tables needs anyway.
        if batch.buf.len() > SMALL_BATCH {
            let size = batch.buf.len();
            rustix::net::sockopt::set_socket_send_buffer_size_force(&self.fd, size)
                .or_else(|_| rustix::net::sockopt::set_socket_send_buffer_size(&self.fd, size))?;
        }
        let sent = rustix::net::send(&self.fd, &batch.buf, SendFlags::empty())?;
        if sent != batch.buf.len() {
            return Err(io::Error::other(format!(
                "netlink sent {sent} of {} bytes",
                batch.buf.len()
            )));
        }
        let mut acked = false;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !acked {
            let (n, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())?;
            let mut rest = &buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                if len < 16 || len > rest.len() {
                    return Err(io::Error::other("truncated netlink answer"));
                }
                if kind == NLMSG_ERROR {
                    let code = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    acked = true;
                } else {
                    // An object asked for (a GETTABLE's table); the acknowledgement follows.
                    answers.push(rest[16..len].to_vec());
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
        Ok(answers)
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs `f` in the network namespace `netns` names (`None`: right here), from a new thread that
/// enters it and ends with `f`.
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
