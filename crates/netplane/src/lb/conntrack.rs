//! Forgetting the connections translated to a backend that is gone: a ctnetlink flush of the
//! conntrack entries carrying its mark (see `nft.rs`'s `Expr::DnatSpread`), so that packets of a
//! flow that went there (a UDP client reusing its socket) are balanced anew instead of going
//! to a task that is gone. The message comes from rust-netlink's `netlink-packet-netfilter`;
//! the socket is a plain `NETLINK_NETFILTER` one (rustix).

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::nft::backend_mark;

/// How long the kernel may take to answer before the socket gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops the IPv4 conntrack entries of connections translated to `backend`, in the calling
/// thread's network namespace.
pub fn forget_backend(backend: Ipv4Addr) -> io::Result<()> {
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
    let delete = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        ConntrackMessage::Delete(vec![ConntrackAttribute::CtaMark(backend_mark(backend))]),
    );
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(delete));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    rustix::net::send(&fd, &buf, SendFlags::empty())?;
    let mut answer = vec![0u8; 8192];
    let (n, _) = rustix::net::recv(&fd, &mut answer[..], RecvFlags::empty())?;
    let reply =
        NetlinkMessage::<NetfilterMessage>::deserialize(&answer[..n]).map_err(io::Error::other)?;
    match reply.payload {
        NetlinkPayload::Error(e) => match e.code {
            // Nothing carried the mark: nothing to forget.
            Some(code) if code.get() != -libc_enoent() => Err(e.to_io()),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}
