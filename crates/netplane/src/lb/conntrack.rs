//! Forgetting the UDP and SCTP flows translated to a backend that is gone: a ctnetlink dump of
//! the conntrack entries carrying its mark, then a delete of each by its tuple (see `nft.rs`'s `Expr::DnatSpread`), so that packets of a
//! flow that went there (a UDP client reusing its socket) are balanced anew instead of going
//! to a task that is gone. The message comes from rust-netlink's `netlink-packet-netfilter`;
//! the socket is a plain `NETLINK_NETFILTER` one (rustix).

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::nft::backend_mark;

/// How long the kernel may take to answer before the socket gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops the IPv4 UDP and SCTP conntrack entries of connections translated to `backend`, in
/// the calling thread's network namespace. TCP connections are left alone: a live one to a
/// task that stopped ends by itself (reset or timeout), and one to a task only marked unhealthy
/// may still be served; a UDP flow has no end and would keep its gone backend.
pub fn forget_backend(backend: Ipv4Addr) -> io::Result<()> {
    let fd = ctnetlink()?;
    let doomed: Vec<Vec<Tuple>> = marked(&fd, backend)?
        .into_iter()
        .filter(|tuple| matches!(protocol(tuple), Some(Protocol::Udp | Protocol::Sctp)))
        .collect();
    for (seq, tuple) in (2..).zip(doomed) {
        let delete = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]);
        exchange(&fd, delete, NLM_F_REQUEST | NLM_F_ACK, seq)?;
    }
    Ok(())
}

/// A ctnetlink socket of the calling thread's namespace, giving up on a silent kernel.
fn ctnetlink() -> io::Result<std::os::fd::OwnedFd> {
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
    Ok(fd)
}

/// The original tuples of the conntrack entries with the mark of `backend` (the kernel lists
/// only those).
fn marked(fd: &impl std::os::fd::AsFd, backend: Ipv4Addr) -> io::Result<Vec<Vec<Tuple>>> {
    let mark = backend_mark(backend);
    let listed = exchange(
        fd,
        ConntrackMessage::Get(vec![ConntrackAttribute::CtaMark(mark)]),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
    )?;
    Ok(listed
        .into_iter()
        .filter(|attrs| attrs.contains(&ConntrackAttribute::CtaMark(mark)))
        .filter_map(|attrs| {
            attrs.into_iter().find_map(|a| match a {
                ConntrackAttribute::CtaTupleOrig(t) => Some(t),
                _ => None,
            })
        })
        .collect())
}

/// The transport protocol of a tuple.
fn protocol(tuple: &[Tuple]) -> Option<Protocol> {
    tuple.iter().find_map(|t| match t {
        Tuple::Proto(p) => p.iter().find_map(|p| match p {
            ProtoTuple::Protocol(proto) => Some(*proto),
            _ => None,
        }),
        _ => None,
    })
}

/// The transport protocols of the conntrack entries with the mark of `backend`, in the calling
/// thread's namespace (for tests).
#[cfg(test)]
pub fn marked_protocols(backend: Ipv4Addr) -> io::Result<Vec<Protocol>> {
    let fd = ctnetlink()?;
    Ok(marked(&fd, backend)?
        .iter()
        .filter_map(|t| protocol(t))
        .collect())
}

/// Sends `msg` and reads the answers up to the acknowledgement or the end of a dump: the
/// attributes of each conntrack entry listed. An entry gone meanwhile (ENOENT) is no error.
fn exchange(
    fd: &impl std::os::fd::AsFd,
    msg: ConntrackMessage,
    flags: u16,
    sequence: u32,
) -> io::Result<Vec<Vec<ConntrackAttribute>>> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let nf = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), msg);
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(nf));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    rustix::net::send(fd, &buf, SendFlags::empty())?;
    let mut entries = Vec::new();
    let mut answer = vec![0u8; 65536];
    loop {
        let (n, _) = rustix::net::recv(fd, &mut answer[..], RecvFlags::empty())?;
        let mut at = 0;
        while at < n {
            let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&answer[at..n])
                .map_err(io::Error::other)?;
            let len = usize::try_from(reply.header.length).map_err(io::Error::other)?;
            if len == 0 {
                return Err(io::Error::other("an empty netlink message"));
            }
            at += len.next_multiple_of(4);
            match reply.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) if code.get() != -libc_enoent() => Err(e.to_io()),
                        _ => Ok(entries),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(entries),
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                    ..
                }) => entries.push(attrs),
                _ => {}
            }
        }
    }
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}
