//! Small wrappers over rtnetlink and namespaces: a handle opened in a given network namespace,
//! running a closure inside a namespace on a thread of its own, and the link, address, route and
//! neighbour requests the overlay and the sandboxes make, with kernel errors turned into
//! [`Error::Kernel`] naming what was being done.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use crate::Error;

/// The errno of a failed netlink request, if it was one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The io::Error of a failed netlink request (its errno when the kernel gave one).
pub(crate) fn to_io(e: rtnetlink::Error) -> io::Error {
    match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        _ => io::Error::other(e.to_string()),
    }
}

/// `Err(Error::Kernel)` naming `what`.
pub(crate) fn kernel(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Kernel { what, source }
}

/// Runs `f` on a new thread that has joined the network namespace at `netns` (the calling
/// thread's namespaces stay as they are). Sockets made by `f` stay in that namespace.
pub(crate) fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(netns)?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// A netlink handle in the caller's network namespace, or in `netns`; its connection runs on
/// the current tokio runtime.
pub(crate) fn connect(netns: Option<&Path>) -> Result<Handle, Error> {
    let runtime = tokio::runtime::Handle::current();
    let open = || {
        let _entered = runtime.enter();
        rtnetlink::new_connection()
    };
    let (connection, handle, _) = match netns {
        Some(path) => in_netns(path, open),
        None => open(),
    }
    .map_err(kernel("opening a netlink socket"))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The index of link `name`, if there is one.
pub(crate) async fn link_index(nl: &Handle, name: &str) -> Result<Option<u32>, Error> {
    let mut stream = nl.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(msg) => Ok(msg.map(|m| m.header.index)),
        Err(e) if errno(&e) == Some(nix::libc::ENODEV) => Ok(None),
        Err(e) => Err(kernel(format!("looking up link {name}"))(to_io(e))),
    }
}

/// Adds a link; one of that name already there is taken as it is. Returns its index.
pub(crate) async fn add_link(nl: &Handle, msg: LinkMessage, name: &str) -> Result<u32, Error> {
    match nl.link().add(msg).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(nix::libc::EEXIST) => {}
        Err(e) => return Err(kernel(format!("creating link {name}"))(to_io(e))),
    }
    link_index(nl, name).await?.ok_or_else(|| {
        kernel(format!("creating link {name}"))(io::Error::other("it vanished at once"))
    })
}

/// Changes a link (up, controller, MTU, name, MAC, namespace...).
pub(crate) async fn set_link(nl: &Handle, msg: LinkMessage, what: &str) -> Result<(), Error> {
    nl.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| kernel(what.to_string())(to_io(e)))
}

/// A message changing link `index`.
pub(crate) fn change(index: u32) -> rtnetlink::LinkMessageBuilder<LinkUnspec> {
    LinkUnspec::new_with_index(index)
}

/// Deletes link `index`; one already gone is fine.
pub(crate) async fn del_link(nl: &Handle, index: u32, name: &str) -> Result<(), Error> {
    match nl.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(nix::libc::ENODEV) => Ok(()),
        Err(e) => Err(kernel(format!("removing link {name}"))(to_io(e))),
    }
}

/// Adds `addr/prefix` to link `index`; already there is fine.
pub(crate) async fn add_addr(
    nl: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    link: &str,
) -> Result<(), Error> {
    match nl
        .address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(nix::libc::EEXIST) => Ok(()),
        Err(e) => Err(kernel(format!("adding {addr}/{prefix} to {link}"))(to_io(
            e,
        ))),
    }
}

/// Adds the default route via `gateway`.
pub(crate) async fn add_default_route(nl: &Handle, gateway: Ipv4Addr) -> Result<(), Error> {
    let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .build();
    match nl.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(nix::libc::EEXIST) => Ok(()),
        Err(e) => Err(kernel(format!("adding the default route via {gateway}"))(
            to_io(e),
        )),
    }
}
