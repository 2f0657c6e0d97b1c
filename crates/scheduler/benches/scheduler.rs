//! Benchmark (figures printed, nothing asserted): scheduler throughput on SwarmKit's own benchmark
//! shapes (`manager/scheduler/scheduler_test.go` `benchScheduler`), over a raft-less store.
//!
//! Each shape runs in a child process of this binary so that its peak memory (VmHWM) is its own.
//! Two ways of feeding the scheduler are measured:
//! - `preloaded`: nodes and PENDING tasks are in the store before the scheduler starts; the clock
//!   runs from the start of `Scheduler::run` (snapshot included) to the last ASSIGNED event.
//! - `live`: the scheduler runs on an empty store while the nodes and tasks are built, then
//!   committed in as few transactions as the store's size limit allows (`MemoryStore::batch`).
//!   SwarmKit's benchmark creates them all in one transaction, which this store refuses (a write
//!   is held to raft's 1.5 MiB entry limit, raft or not). The clock runs, as SwarmKit's does (its
//!   `b.StartTimer()` comes once every object is built), from the end of the building to the last
//!   ASSIGNED event: the store's commits are timed, building the objects is not. The line also
//!   gives the time from the start of the building.
//!
//! Each line also gives the CPU time all the child's threads ran in that interval, a steadier
//! figure than the wall time when the machine is loaded.
//!
//! Each shape and mode runs once as a warm-up (printed, not counted), then `--runs=N` times (5 unless
//! told), and the median is printed.
//!
//! Run with `cargo bench -p scheduler --bench scheduler`; `-- <shape name>...` runs only those.

use std::process::Command;
use std::time::{Duration, Instant};

use store::{Event, MemoryStore, WatchFilter};
use tokio_util::sync::CancellationToken;

/// The allocator swarmd uses (BUILDING.md, "Allocator"), so the figures are those of the daemon.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    nodes: usize,
    tasks: usize,
    /// Every task needs network plugin `network`, which every third node has, and each task is a
    /// service of its own; otherwise all tasks belong to one service version.
    plugin: bool,
}

const SHAPES: [Shape; 4] = [
    Shape {
        name: "1k-nodes-10k-tasks",
        nodes: 1_000,
        tasks: 10_000,
        plugin: false,
    },
    Shape {
        name: "1k-nodes-100k-tasks",
        nodes: 1_000,
        tasks: 100_000,
        plugin: false,
    },
    Shape {
        name: "5k-nodes-100k-tasks-plugin",
        nodes: 5_000,
        tasks: 100_000,
        plugin: true,
    },
    Shape {
        name: "100k-nodes-1k-tasks",
        nodes: 100_000,
        tasks: 1_000,
        plugin: false,
    },
];

const MODES: [&str; 2] = ["preloaded", "live"];

fn node(i: usize, plugin: bool) -> api::Node {
    let plugins = if plugin && i.is_multiple_of(3) {
        vec![api::PluginDescription {
            r#type: "Network".into(),
            name: "network".into(),
        }]
    } else {
        Vec::new()
    };
    api::Node {
        id: format!("node{i:06}"),
        spec: Some(api::NodeSpec {
            annotations: Some(api::Annotations {
                name: format!("name{i}"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(api::NodeStatus {
            state: api::node_status::State::Ready as i32,
            ..Default::default()
        }),
        description: Some(api::NodeDescription {
            engine: Some(api::EngineDescription {
                plugins,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(i: usize, plugin: bool) -> api::Task {
    let id = format!("task{i}");
    let service_id = if plugin {
        format!("service{i}")
    } else {
        "service".to_string()
    };
    let networks = if plugin {
        vec![api::NetworkAttachment {
            network: Some(api::Network {
                driver_state: Some(api::Driver {
                    name: "network".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    api::Task {
        service_annotations: Some(api::Annotations {
            name: id.clone(),
            ..Default::default()
        }),
        id,
        service_id,
        spec_version: Some(api::Version { index: 1 }),
        desired_state: api::TaskState::Running as i32,
        status: Some(api::TaskStatus {
            state: api::TaskState::Pending as i32,
            message: "pending task scheduling".into(),
            ..Default::default()
        }),
        spec: Some(api::TaskSpec::default()),
        networks,
        ..Default::default()
    }
}

/// Where the clock of a live run starts.
struct Clock {
    /// When building the objects began.
    began: Instant,
    /// Every object built, none committed yet (SwarmKit's benchmark calls `b.StartTimer()`
    /// there).
    start: Instant,
    /// [`cpu_ns`] at `start`.
    cpu_start: u64,
    /// VmHWM at `start`, in KiB.
    hwm_kib: u64,
}

/// Builds the shape's nodes and tasks, starts the clock, then commits them through
/// `MemoryStore::batch` (see the module doc for why not in one transaction).
async fn seed(store: &MemoryStore, shape: Shape) -> Clock {
    let began = Instant::now();
    let nodes: Vec<api::Node> = (0..shape.nodes).map(|i| node(i, shape.plugin)).collect();
    let tasks: Vec<api::Task> = (0..shape.tasks).map(|i| task(i, shape.plugin)).collect();
    let clock = Clock {
        began,
        start: Instant::now(),
        cpu_start: cpu_ns(),
        hwm_kib: vm_hwm_kib(),
    };
    let failed = store.batch(&nodes, |tx, n| tx.create_node(n.clone())).await;
    assert!(failed.is_empty(), "seed the nodes: {failed:?}");
    let failed = store.batch(&tasks, |tx, t| tx.create_task(t.clone())).await;
    assert!(failed.is_empty(), "seed the tasks: {failed:?}");
    clock
}

/// Commits the shape's nodes and tasks in transactions of 200 objects, which keeps the memory of
/// the seeding itself low.
async fn seed_in_batches(store: &MemoryStore, shape: Shape) {
    for chunk in (0..shape.nodes).collect::<Vec<_>>().chunks(200) {
        let nodes: Vec<api::Node> = chunk.iter().map(|i| node(*i, shape.plugin)).collect();
        store
            .update(move |tx| nodes.into_iter().try_for_each(|n| tx.create_node(n)))
            .await
            .expect("seed nodes");
    }
    for chunk in (0..shape.tasks).collect::<Vec<_>>().chunks(200) {
        let tasks: Vec<api::Task> = chunk.iter().map(|i| task(*i, shape.plugin)).collect();
        store
            .update(move |tx| tasks.into_iter().try_for_each(|t| tx.create_task(t)))
            .await
            .expect("seed tasks");
    }
}

/// Waits for `want` tasks to turn ASSIGNED; returns when the last one did.
async fn count_assigned(mut watcher: store::Watcher, want: usize) -> Instant {
    let mut assigned = 0;
    while assigned < want {
        let event = watcher.recv().await.expect("store open");
        if let Some(t) = event.object_as::<api::Task>()
            && t.status.as_ref().map_or(0, |s| s.state) == api::TaskState::Assigned as i32
            && matches!(event, Event::Object { .. })
            && event.old_as::<api::Task>().is_some_and(|o| {
                o.status.as_ref().map_or(0, |s| s.state) != t.status.as_ref().map_or(0, |s| s.state)
            })
        {
            assigned += 1;
        }
    }
    Instant::now()
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time this process's threads have run so far, in nanoseconds (the first field of each
/// thread's `/proc/self/task/<tid>/schedstat`): a steadier figure than wall time on a loaded
/// machine.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Runs one shape in this process and prints one result line.
fn run_child(shape: Shape, mode: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let store = MemoryStore::new(None);
        let shutdown = CancellationToken::new();
        let (start, cpu_start, before_kib, scheduler, counter, live) = if mode == "preloaded" {
            seed_in_batches(&store, shape).await;
            let watcher = store.watch(WatchFilter::none().tasks());
            let counter = tokio::spawn(count_assigned(watcher, shape.tasks));
            let before = vm_hwm_kib();
            let start = Instant::now();
            let cpu_start = cpu_ns();
            let scheduler =
                tokio::spawn(scheduler::Scheduler::new(store.clone()).run(shutdown.clone()));
            (start, cpu_start, before, scheduler, counter, None)
        } else {
            let watcher = store.watch(WatchFilter::none().tasks());
            let counter = tokio::spawn(count_assigned(watcher, shape.tasks));
            let scheduler =
                tokio::spawn(scheduler::Scheduler::new(store.clone()).run(shutdown.clone()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            // On a runtime worker, where the daemon's writers (raft apply, orchestrators) run,
            // not on the thread blocked in `block_on`.
            let writer = store.clone();
            let clock = tokio::spawn(async move { seed(&writer, shape).await })
                .await
                .expect("seed task");
            let committed = (clock.start.elapsed(), vm_hwm_kib());
            (
                clock.start,
                clock.cpu_start,
                clock.hwm_kib,
                scheduler,
                counter,
                Some((clock.began, committed)),
            )
        };
        let done = counter.await.expect("counter");
        let elapsed = done - start;
        let cpu = Duration::from_nanos(cpu_ns().saturating_sub(cpu_start));
        shutdown.cancel();
        scheduler
            .await
            .expect("scheduler task")
            .expect("scheduler ran");
        let commit = live.map_or(String::new(), |(began, (took, hwm_kib))| {
            let whole = done - began;
            format!(
                "  (of which the store's commits {:.3} s, VmHWM after them {} MiB; building the objects took {:.3} s before the clock; from the start of the building {:.3} s = {:.0} tasks/s)",
                took.as_secs_f64(),
                hwm_kib / 1024,
                (start - began).as_secs_f64(),
                whole.as_secs_f64(),
                shape.tasks as f64 / whole.as_secs_f64(),
            )
        });
        println!(
            "{:<27} {:<9} {:>6} nodes {:>6} tasks {:>7.3} s {:>8.0} tasks/s  cpu {:>6.3} s  VmHWM {:>4} MiB (before start {:>3} MiB){commit}",
            shape.name,
            mode,
            shape.nodes,
            shape.tasks,
            elapsed.as_secs_f64(),
            shape.tasks as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64(),
            vm_hwm_kib() / 1024,
            before_kib / 1024,
        );
    });
}

/// Runs one shape in a child process; returns its result line.
fn run_in_child(exe: &std::path::Path, shape: Shape, mode: &str) -> String {
    let out = Command::new(exe)
        .args(["--child", shape.name, mode])
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "{} {mode} failed: {}",
        shape.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .trim_end()
        .to_string()
}

/// The number just before `unit` in a result line (`... 0.812 s 123100 tasks/s ...`).
fn figure(line: &str, unit: &str) -> f64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1] == unit)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no figure before {unit:?} in {line:?}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let name = &args[pos + 1];
        let mode = &args[pos + 2];
        let shape = SHAPES.iter().find(|s| s.name == name).expect("known shape");
        run_child(*shape, mode);
        return;
    }
    let runs: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("--runs="))
        .map_or(5, |n| n.parse().expect("--runs=N takes a number"))
        .max(1);
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let exe = std::env::current_exe().expect("own path");
    println!(
        "scheduler benchmark: each line is one child process; time = until the last task is ASSIGNED in the store"
    );
    println!(
        "each shape and mode: one warm-up run (not counted), then {runs} runs and their median"
    );
    for shape in SHAPES {
        if !wanted.is_empty() && !wanted.iter().any(|w| shape.name.contains(w.as_str())) {
            continue;
        }
        for mode in MODES {
            let warm_up = run_in_child(&exe, shape, mode);
            println!("  warm-up: {warm_up}");
            let lines: Vec<String> = (0..runs)
                .map(|_| {
                    let line = run_in_child(&exe, shape, mode);
                    println!("  {line}");
                    line
                })
                .collect();
            let rates: Vec<f64> = lines.iter().map(|l| figure(l, "tasks/s")).collect();
            let lowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = rates.iter().copied().fold(0.0, f64::max);
            let secs = median(lines.iter().map(|l| figure(l, "s")).collect());
            println!(
                "{:<27} {:<9} median of {runs}: {secs:.3} s {:.0} tasks/s (range {lowest:.0}-{highest:.0}), VmHWM median {:.0} MiB",
                shape.name,
                mode,
                median(rates),
                median(lines.iter().map(|l| figure(l, "MiB")).collect()),
            );
        }
    }
}
