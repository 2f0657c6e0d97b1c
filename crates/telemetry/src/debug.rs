//! What `--listen-debug` shows: the state of each part of the process as JSON. A part that has
//! something to show (the node, a manager's raft and store) registers a [`Section`], a probe
//! called on each request, and it disappears when the section is dropped with its owner. The
//! process part (tokio's runtime counters) is always there. Probes are called outside any lock
//! of this module and must be quick and non-blocking: they read what their owner already keeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

type Probe = Arc<dyn Fn() -> Value + Send + Sync>;

/// The registered sections: ID, name, probe.
static SECTIONS: Mutex<Vec<(u64, String, Probe)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A registered part of the debug state; dropping it removes the part.
#[must_use = "the section is removed when this is dropped"]
#[derive(Debug)]
pub struct Section(u64);

impl Drop for Section {
    fn drop(&mut self) {
        sections().retain(|(id, _, _)| *id != self.0);
    }
}

fn sections() -> std::sync::MutexGuard<'static, Vec<(u64, String, Probe)>> {
    // A probe never runs under this lock, so a poisoned lock still holds a whole list.
    SECTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shows `probe()` under `name` while the returned [`Section`] lives. Two sections of one name
/// (managers of an in-process test cluster) are shown as `name`, `name#2`, ...
pub fn section(
    name: impl Into<String>,
    probe: impl Fn() -> Value + Send + Sync + 'static,
) -> Section {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    sections().push((id, name.into(), Arc::new(probe)));
    Section(id)
}

/// The whole debug state: `process` (the tokio runtime serving the request) and one entry per
/// registered section.
pub fn snapshot() -> Value {
    let probes: Vec<(String, Probe)> = sections()
        .iter()
        .map(|(_, name, probe)| (name.clone(), probe.clone()))
        .collect();
    let mut out = Map::new();
    out.insert("process".into(), process());
    for (name, probe) in probes {
        let mut key = name.clone();
        let mut n = 1;
        while out.contains_key(&key) {
            n += 1;
            key = format!("{name}#{n}");
        }
        out.insert(key, probe());
    }
    Value::Object(out)
}

fn process() -> Value {
    let runtime = tokio::runtime::Handle::try_current().ok().map(|h| {
        let m = h.metrics();
        json!({
            "workers": m.num_workers(),
            "alive_tasks": m.num_alive_tasks(),
            "global_queue_depth": m.global_queue_depth(),
        })
    });
    json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "tokio": runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_shows_while_it_lives() {
        let a = section("test-a", || json!({"x": 1}));
        let b = section("test-a", || json!(2));
        let state = snapshot();
        assert_eq!(state["test-a"]["x"], 1);
        assert_eq!(state["test-a#2"], 2);
        assert!(state["process"]["pid"].is_number());
        drop(a);
        drop(b);
        assert!(snapshot().get("test-a").is_none());
    }
}
