//! A cluster of N real managers for the fault tests: on 127.0.0.1 with fixed ports (so a killed
//! manager restarts on the same address), or each in a network namespace the test creates so a
//! manager can be cut off. Managers are stopped by PID and namespaces deleted on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Swarmd, free_port, wait_for};

/// Bound for a manager to start or join.
pub const JOIN_LIMIT: Duration = Duration::from_secs(90);

pub struct Cluster {
    /// Dropped before `net`, so no process is left in a deleted namespace.
    pub managers: Vec<Swarmd>,
    /// Raft tick of every manager (`--raft-tick-ms`); election timeout is 10 ticks.
    pub tick_ms: u64,
    pub addrs: Vec<String>,
    /// Managers currently SIGSTOPped or cut off: never asked anything by `leader`.
    pub unreachable: Vec<usize>,
    net: Option<Netns>,
}

impl Cluster {
    /// `n` managers on loopback with `tick_ms` raft ticks (election after 10).
    pub fn start(n: usize, tick_ms: u64) -> Cluster {
        Self::start_with(n, tick_ms, &[])
    }

    /// Like `start`, every manager with the extra swarmd flags `extra` (`--autolock`, say: the
    /// first manager creates the cluster locked, the others ignore it as they join).
    pub fn start_with(n: usize, tick_ms: u64, extra: &[&str]) -> Cluster {
        let addrs = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        Self::start_on(n, tick_ms, addrs, None, None, extra)
    }

    /// `n` of SwarmKit's own managers (its build in folder `bin`) on loopback, with its default
    /// raft ticks (1 s, election after 10).
    pub fn start_swarmkit(n: usize, bin: &std::path::Path) -> Cluster {
        let addrs = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        Self::start_on(n, 1000, addrs, None, Some(bin), &[])
    }

    /// `n` managers, each in its own network namespace; None (with the reason printed) when
    /// namespaces cannot be made here.
    pub fn start_in_netns(n: usize, tick_ms: u64) -> Option<Cluster> {
        let net = match Netns::create(n) {
            Ok(net) => net,
            Err(reason) => {
                println!("skipping: network namespaces unavailable: {reason}");
                return None;
            }
        };
        let addrs = (0..n).map(|i| format!("{}:4242", net.addr(i))).collect();
        Some(Self::start_on(n, tick_ms, addrs, Some(net), None, &[]))
    }

    fn start_on(
        n: usize,
        tick_ms: u64,
        addrs: Vec<String>,
        net: Option<Netns>,
        swarmkit: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Cluster {
        let mut c = Cluster {
            managers: Vec::new(),
            tick_ms,
            addrs,
            unreachable: Vec::new(),
            net,
        };
        let mut token = String::new();
        for i in 0..n {
            let hostname = format!("node-{}", i + 1);
            let tick = tick_ms.to_string();
            let mut args = vec![
                "--hostname",
                &hostname,
                "--listen-remote-api",
                &c.addrs[i],
                "--advertise-remote-api",
                &c.addrs[i],
            ];
            // SwarmKit's swarmd has no such flag (its tick is one second).
            if swarmkit.is_none() {
                args.extend(["--raft-tick-ms", &tick]);
            }
            if i > 0 {
                args.extend(["--join-addr", &c.addrs[0], "--join-token", &token]);
            }
            args.extend(extra);
            let ns = c.net.as_ref().map(|n| n.names[i].clone());
            let (m, code) = match swarmkit {
                Some(bin) => Swarmd::start_swarmkit_node(bin, &args, "node is ready", JOIN_LIMIT),
                None => Swarmd::start_node_in(ns.as_deref(), &args, "node is ready", JOIN_LIMIT),
            };
            if let Some(code) = code {
                panic!("manager {hostname} exited with {code}; log:\n{}", m.log());
            }
            if i == 0 {
                token = m.join_tokens().1;
            }
            c.managers.push(m);
            c.wait_reachable(i + 1, JOIN_LIMIT);
        }
        c
    }

    /// One election timeout.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.tick_ms * 10)
    }

    pub fn sockets(&self) -> Vec<std::path::PathBuf> {
        self.managers.iter().map(|m| m.socket()).collect()
    }

    /// Waits until the leader lists `count` managers REACHABLE.
    pub fn wait_reachable(&mut self, count: usize, limit: Duration) {
        let start = Instant::now();
        wait_for(&format!("{count} reachable managers"), limit, || {
            let left = limit.saturating_sub(start.elapsed());
            let l = self.try_leader(left.min(Duration::from_secs(5)))?;
            let out = self.managers[l].ctl(&["node", "ls"]);
            (out.code == 0
                && out.stdout.matches("REACHABLE").count()
                    - out.stdout.matches("UNREACHABLE").count()
                    >= count)
                .then_some(())
        });
    }

    /// The index of a manager that calls itself the leader in its own `node ls` (its row's
    /// MANAGER STATUS ends with ` *`), among the running, reachable ones.
    pub fn leader(&mut self, limit: Duration) -> usize {
        self.try_leader(limit)
            .unwrap_or_else(|| panic!("no leader within {limit:?}"))
    }

    pub fn try_leader(&mut self, limit: Duration) -> Option<usize> {
        let start = Instant::now();
        loop {
            for i in 0..self.managers.len() {
                if self.unreachable.contains(&i) || !self.managers[i].running() {
                    continue;
                }
                let out = self.managers[i].ctl(&["node", "ls"]);
                let me = format!("node-{}", i + 1);
                // SwarmKit's nodes may list no name (its agent cannot describe a node whose
                // Docker engine is newer than its client): its node ID names it too.
                let id = crate::harness::node_cert(&self.managers[i].state_dir()).node_id;
                let claims = out.code == 0
                    && out.stdout.lines().any(|l| {
                        l.trim_end().ends_with(" *")
                            && l.split_whitespace().any(|w| w == me || w == id)
                    });
                if claims {
                    return Some(i);
                }
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL of manager `i`.
    pub fn kill(&mut self, i: usize) {
        self.managers[i].kill9();
    }

    /// Starts manager `i` again on its state dir and address; Err with its log when it exits.
    ///
    /// A killed leader restarts as leader of its old term while the others have a newer one:
    /// `Manager::start` serves the remote API (the raft transport) before `become_ready` waits to
    /// hear the new leader, whose AppendEntries must reach it.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.managers[i];
        let skip = m.log().len();
        match m.spawn_until("node is ready", JOIN_LIMIT) {
            None => Ok(()),
            Some(code) => {
                let fatal = m.log()[skip..]
                    .lines()
                    .find(|l| l.contains("level=fatal"))
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect::<String>();
                Err(format!(
                    "node-{} exited with {code} on restart: {fatal}",
                    i + 1
                ))
            }
        }
    }

    /// Indices of the managers whose process runs.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.managers.len())
            .filter(|&i| self.managers[i].running())
            .collect()
    }

    /// Cuts manager `i` off from every other (its links down).
    pub fn isolate(&mut self, i: usize) {
        self.net
            .as_ref()
            .expect("a netns cluster")
            .set_links(i, false);
        self.unreachable.push(i);
    }

    /// Undoes `isolate`.
    pub fn heal(&mut self, i: usize) {
        self.net
            .as_ref()
            .expect("a netns cluster")
            .set_links(i, true);
        self.unreachable.retain(|&u| u != i);
    }
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

/// Namespaces `names[i]`, each with address `addr(i)` on its loopback and a veth pair to every
/// other one (a full mesh: no bridge, so the host's FORWARD policy does not matter).
pub struct Netns {
    names: Vec<String>,
    subnet: u32,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// `n` namespaces; Err says why they cannot be made here.
    pub fn create(n: usize) -> Result<Netns, String> {
        remove_stale_namespaces();
        let seq = NETNS_SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() * 7 + seq) % 250;
        let mut net = Netns {
            names: Vec::new(),
            subnet: tag,
        };
        for i in 0..n {
            let name = format!("h6-{}-{seq}-{i}", std::process::id());
            ip(&["netns", "add", &name])?;
            net.names.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{}/32", net.addr(i)),
                "dev",
                "lo",
            ])?;
        }
        for a in 0..n {
            for b in a + 1..n {
                ip(&[
                    "link",
                    "add",
                    &net.veth(a, b),
                    "netns",
                    &net.names[a],
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &net.veth(b, a),
                    "netns",
                    &net.names[b],
                ])?;
            }
        }
        for i in 0..n {
            net.set_links_checked(i, true)?;
        }
        Ok(net)
    }

    /// The address of namespace `i` (not loopback: other namespaces reach it over veth).
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    /// The name of namespace `i`, for `ip netns exec`.
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The interface in namespace `a` leading to `b`.
    fn veth(&self, a: usize, b: usize) -> String {
        format!("v{a}to{b}")
    }

    fn set_links(&self, i: usize, up: bool) {
        self.set_links_checked(i, up)
            .unwrap_or_else(|e| panic!("setting links of manager {i}: {e}"));
    }

    /// Links of `i` up (and the routes both ways, which a link down removes) or down.
    fn set_links_checked(&self, i: usize, up: bool) -> Result<(), String> {
        for j in 0..self.names.len() {
            if j == i {
                continue;
            }
            let (ns_i, ns_j) = (&self.names[i], &self.names[j]);
            let state = if up { "up" } else { "down" };
            ip(&["-n", ns_i, "link", "set", &self.veth(i, j), state])?;
            if up {
                ip(&["-n", ns_j, "link", "set", &self.veth(j, i), "up"])?;
                for (ns, from, to) in [(ns_i, i, j), (ns_j, j, i)] {
                    ip(&[
                        "-n",
                        ns,
                        "route",
                        "replace",
                        &format!("{}/32", self.addr(to)),
                        "dev",
                        &self.veth(from, to),
                        "src",
                        &self.addr(from),
                    ])?;
                }
            }
        }
        Ok(())
    }
}

/// Deletes `h6-<pid>-…` namespaces left by a test process that was killed before its Drop ran
/// (nextest's timeout), when that process is gone and nothing runs inside them.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("h6-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        let empty = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .is_ok_and(|o| o.stdout.is_empty());
        if !alive && empty {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
