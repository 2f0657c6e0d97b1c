//! A process task's network namespace `/run/netns/swt-<task id, 12 chars>`: one veth per network
//! (host side `swv<hash>` on the network's bridge, inside `eth0`, `eth1`, ... in the order of the
//! task's networks) with the task's address and derived MAC, `lo` up and a default route via the
//! first network's gateway; and the `resolv.conf` naming that gateway, which [`Sandbox::spawn`]
//! mounts over `/etc/resolv.conf` in a private mount namespace of the task's.
//!
//! Each sandbox is recorded in a directory of the node's state (its veths and resolv.conf), so a
//! start after a crash removes exactly what this node made.

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkVeth};

use crate::netlink::{self, kernel};
use crate::overlay::{Cidr, mac_of};
use crate::{Error, NetnsPath};

/// Where named network namespaces are bound (as `ip netns` does).
pub const NETNS_DIR: &str = "/run/netns";

/// The namespace name of task `task_id`.
pub fn netns_name(task_id: &str) -> String {
    let short: String = task_id.chars().take(12).collect();
    format!("swt-{short}")
}

/// FNV-1a: a short hash that stays the same across builds.
fn fnv(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The host side of task `task_id`'s veth on network `network_id`, and the name its other side
/// has until it is moved into the task's namespace.
pub fn veth_names(task_id: &str, network_id: &str) -> (String, String) {
    let h = fnv(&[task_id, network_id]);
    (format!("swv{h:08x}"), format!("swp{h:08x}"))
}

/// One of a task's networks, as its sandbox needs it.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub network_id: String,
    /// The task's address on it, with the subnet's prefix length.
    pub addr: Cidr,
    /// The subnet's gateway, if it has one.
    pub gateway: Option<Ipv4Addr>,
    /// The index of the network's bridge.
    pub bridge: u32,
    /// The network's MTU.
    pub mtu: u32,
}

/// Where a task runs on its networks: its network namespace and the resolv.conf it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNet {
    pub netns: NetnsPath,
    pub resolv_conf: PathBuf,
}

impl TaskNet {
    /// Starts `cmd` inside the sandbox: in its network namespace, and in a mount namespace of
    /// its own where the sandbox's resolv.conf is bound over `/etc/resolv.conf`.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        let netns = &self.netns.0;
        let resolv = &self.resolv_conf;
        netlink::in_netns(netns, || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            nix::mount::mount(
                Some(resolv),
                "/etc/resolv.conf",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| io::Error::other(format!("binding /etc/resolv.conf: {e}")))?;
            cmd.spawn()
        })
    }
}

/// A task's network namespace and what goes with it.
#[derive(Debug)]
pub struct Sandbox {
    pub task_id: String,
    pub netns: NetnsPath,
    /// `<state>/sandboxes/<netns name>`: its record, with its resolv.conf.
    dir: PathBuf,
    /// The network IDs, in the task's order.
    pub networks: Vec<String>,
    /// The first network's attachment, which the default route goes through.
    pub primary: Option<Attachment>,
}

/// Creates a named network namespace at `path` from a thread of its own.
fn make_netns(path: &Path) -> io::Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    File::create(path)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if made.is_err() {
        let _ = fs::remove_file(path);
    }
    made
}

/// Unbinds and removes the named network namespace at `path` (gone already is fine).
fn remove_netns(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Sandbox {
    /// Makes task `task_id`'s namespace with a veth on each of `attachments` (in order),
    /// recording it under `state`. A half-made sandbox is removed again on error.
    pub async fn create(
        nl: &Handle,
        state: &Path,
        task_id: &str,
        attachments: &[Attachment],
    ) -> Result<Sandbox, Error> {
        let name = netns_name(task_id);
        let path = Path::new(NETNS_DIR).join(&name);
        let dir = state.join(&name);
        let sandbox = Sandbox {
            task_id: task_id.to_string(),
            netns: NetnsPath(path.clone()),
            dir: dir.clone(),
            networks: attachments.iter().map(|a| a.network_id.clone()).collect(),
            primary: attachments.first().cloned(),
        };
        // A sandbox of this task from an earlier attempt is made again from scratch.
        sandbox.remove(nl).await?;
        let made = sandbox.build(nl, attachments).await;
        if made.is_err() {
            let _ = sandbox.remove(nl).await;
        }
        made.map(|()| sandbox)
    }

    async fn build(&self, nl: &Handle, attachments: &[Attachment]) -> Result<(), Error> {
        let path = &self.netns.0;
        fs::create_dir_all(&self.dir)
            .map_err(kernel(format!("creating {}", self.dir.display())))?;
        let veths: Vec<String> = attachments
            .iter()
            .map(|a| veth_names(&self.task_id, &a.network_id).0)
            .collect();
        fs::write(self.dir.join("veths"), veths.join("\n"))
            .map_err(kernel(format!("writing {}", self.dir.display())))?;
        let nameserver = attachments
            .iter()
            .find_map(|a| a.gateway)
            .map(|gw| format!("nameserver {gw}\n"))
            .unwrap_or_default();
        fs::write(self.resolv_conf(), format!("{nameserver}options ndots:0\n"))
            .map_err(kernel("writing the task's resolv.conf"))?;
        make_netns(path).map_err(kernel(format!(
            "creating network namespace {}",
            path.display()
        )))?;
        let ns_file = File::open(path).map_err(kernel(format!("opening {}", path.display())))?;
        let inner = netlink::connect(Some(path))?;
        for (i, a) in attachments.iter().enumerate() {
            let (host, peer) = veth_names(&self.task_id, &a.network_id);
            let host_idx =
                netlink::add_link(nl, LinkVeth::new(&host, &peer).mtu(a.mtu).build(), &host)
                    .await?;
            let peer_idx = netlink::link_index(nl, &peer).await?.ok_or_else(|| {
                kernel(format!("creating veth {host}"))(io::Error::other("no peer"))
            })?;
            netlink::set_link(
                nl,
                netlink::change(peer_idx)
                    .setns_by_fd(ns_file.as_raw_fd())
                    .build(),
                &format!("moving {peer} into {}", path.display()),
            )
            .await?;
            netlink::set_link(
                nl,
                netlink::change(host_idx).controller(a.bridge).up().build(),
                &format!("attaching {host} to its bridge"),
            )
            .await?;
            let eth = format!("eth{i}");
            let idx = netlink::link_index(&inner, &peer).await?.ok_or_else(|| {
                kernel(format!("moving {peer}"))(io::Error::other("not in the namespace"))
            })?;
            netlink::set_link(
                &inner,
                netlink::change(idx)
                    .name(eth.clone())
                    .address(mac_of(a.addr.addr).to_vec())
                    .mtu(a.mtu)
                    .build(),
                &format!("naming {eth}"),
            )
            .await?;
            netlink::set_link(
                &inner,
                netlink::change(idx).up().build(),
                &format!("setting {eth} up"),
            )
            .await?;
            netlink::add_addr(&inner, idx, a.addr.addr, a.addr.prefix, &eth).await?;
        }
        if let Some(lo) = netlink::link_index(&inner, "lo").await? {
            netlink::set_link(&inner, netlink::change(lo).up().build(), "setting lo up").await?;
        }
        if let Some(gw) = attachments.first().and_then(|a| a.gateway) {
            netlink::add_default_route(&inner, gw).await?;
        }
        Ok(())
    }

    /// The resolv.conf the task sees.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// What a task's process needs to start inside the sandbox.
    pub fn task_net(&self) -> TaskNet {
        TaskNet {
            netns: self.netns.clone(),
            resolv_conf: self.resolv_conf(),
        }
    }

    /// Removes the sandbox: its veths (both sides go together), its namespace and its record.
    pub async fn remove(&self, nl: &Handle) -> Result<(), Error> {
        remove_recorded(nl, &self.dir).await
    }
}

/// Removes the sandbox recorded in `dir` (named as its namespace).
pub async fn remove_recorded(nl: &Handle, dir: &Path) -> Result<(), Error> {
    if let Ok(veths) = fs::read_to_string(dir.join("veths")) {
        for veth in veths.lines().filter(|l| l.starts_with("swv")) {
            if let Some(idx) = netlink::link_index(nl, veth).await? {
                netlink::del_link(nl, idx, veth).await?;
            }
        }
    }
    if let Some(name) = dir.file_name() {
        let path = Path::new(NETNS_DIR).join(name);
        remove_netns(&path).map_err(kernel(format!("removing {}", path.display())))?;
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(kernel(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_differ_per_network() {
        let (a, pa) = veth_names("0123456789abcdefghijklmnopq", "net1");
        let (b, _) = veth_names("0123456789abcdefghijklmnopq", "net2");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && pa.len() <= 15);
        assert!(a.starts_with("swv") && pa.starts_with("swp"));
        assert_eq!(netns_name("0123456789abcdefghij"), "swt-0123456789ab");
    }
}
