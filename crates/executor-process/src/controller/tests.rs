use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::SystemTime;

use agent::{DependencyGetter, TaskFiles};

use super::*;

/// The files of `task` (which references none), kept under `dir/state`, on disk.
fn files(task: &api::Task, dir: &Path) -> TaskFileSet {
    let none = Path::new("/nonexistent");
    let files = TaskFiles::open_with(&dir.join("state"), none, none).expect("task files");
    Arc::new(files)
        .for_task(task, DependencyGetter::none())
        .expect("a valid task")
}

/// A controller for `task` logging to `log_dir`.
fn controller(
    task: &api::Task,
    log_dir: &Path,
    checkpoint: Option<&[u8]>,
) -> Result<ProcessController, Error> {
    ProcessController::new(task, log_dir, checkpoint, files(task, log_dir))
}

fn task(id: &str, command: &[&str], edit: impl FnOnce(&mut api::ContainerSpec)) -> api::Task {
    let mut container = api::ContainerSpec {
        image: "busybox:latest".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    edit(&mut container);
    api::Task {
        id: id.into(),
        spec: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(container))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sh(id: &str, script: &str) -> api::Task {
    task(id, &["/bin/sh", "-c", script], |_| {})
}

fn start_time(pid: i32) -> u64 {
    procfs::read_stat(pid)
        .expect("read stat")
        .expect("process exists")
        .start_time
}

/// What `c.logs` sends with `options`, as (stream, bytes) pairs, once it returns.
async fn log_lines(c: &ProcessController, options: &LogOptions) -> Vec<(api::LogStream, String)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(10_000);
    let sink = LogSink::new(&api::Task::default(), tx);
    tokio::time::timeout(Duration::from_secs(20), c.logs(options, &sink))
        .await
        .expect("logs in time")
        .expect("logs");
    drop(sink);
    let mut out = Vec::new();
    while let Some(m) = rx.recv().await {
        let stream = api::LogStream::try_from(m.stream).expect("stream");
        out.push((stream, String::from_utf8(m.data).expect("utf-8")));
    }
    out
}

fn all_streams(follow: bool) -> LogOptions {
    LogOptions {
        follow,
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// The task's whole output once both its streams ended, stdout and stderr as read.
async fn output(c: &ProcessController) -> String {
    log_lines(c, &all_streams(true))
        .await
        .into_iter()
        .map(|(_, line)| line)
        .collect()
}

async fn run_to_end(c: &ProcessController) -> ExitStatus {
    c.prepare().await.expect("prepare");
    c.start().await.expect("start");
    tokio::time::timeout(Duration::from_secs(20), c.wait())
        .await
        .expect("ends in time")
        .expect("wait")
}

#[test]
fn checkpoints_round_trip() {
    let launched = Launched {
        pid: 4242,
        start_time: 987_654_321,
    };
    assert_eq!(
        Launched::decode(&launched.encode()).expect("decode"),
        launched
    );
    assert!(Launched::decode(b"not json").is_err());
}

#[test]
fn a_garbled_checkpoint_is_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = controller(&sh("t1", "true"), dir.path(), Some(b"{")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("process executor: unreadable checkpoint of task t1"),
        "{err}"
    );
}

#[test]
fn probe_tells_a_live_process_from_a_reused_pid() {
    #[allow(clippy::zombie_processes, reason = "probe reaps it with waitpid")]
    let mut child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id() as i32;
    let live = Launched {
        pid,
        start_time: start_time(pid),
    };
    assert_eq!(live.probe().expect("probe"), Probe::Running);
    let reused = Launched {
        start_time: live.start_time + 1,
        ..live
    };
    assert_eq!(reused.probe().expect("probe"), Probe::Gone);
    child.kill().expect("kill");
    // Our child: probing reaps it and gives the real status.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        match live.probe().expect("probe") {
            Probe::Running => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the killed child still runs"
                );
                std::thread::sleep(POLL);
            }
            other => break other,
        }
    };
    assert_eq!(
        status,
        Probe::Exited(ExitStatus {
            code: 137,
            signal: Some(9)
        })
    );
    assert_eq!(live.probe().expect("probe"), Probe::Gone);
}

#[tokio::test]
async fn a_process_that_is_not_our_child_ends_with_an_unknown_code() {
    // The shell's background sleep is reparented when the shell exits.
    let out = Command::new("/bin/sh")
        .args(["-c", "sleep 1 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("run sh");
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a pid");
    let launched = Launched {
        pid,
        start_time: start_time(pid),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let c = controller(
        &sh("orphan", "exit 0"),
        dir.path(),
        Some(&launched.encode()),
    )
    .expect("controller");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Running));
    c.start().await.expect("start adopted");
    let exit = tokio::time::timeout(Duration::from_secs(20), c.wait())
        .await
        .expect("ends in time")
        .expect("wait");
    assert_eq!(exit, UNKNOWN_EXIT);
    assert_eq!(
        exit.error_message().as_deref(),
        Some("task: non-zero exit (-1)")
    );
}

#[tokio::test]
async fn a_checkpoint_whose_pid_was_reused_is_exited_and_not_started_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Our own PID with another start time: a reused PID.
    let me = std::process::id() as i32;
    let stale = Launched {
        pid: me,
        start_time: start_time(me) + 1,
    };
    let c =
        controller(&sh("stale", "exit 0"), dir.path(), Some(&stale.encode())).expect("controller");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Exited(UNKNOWN_EXIT)));
    c.prepare().await.expect("prepare");
    c.start().await.expect("start");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Exited(UNKNOWN_EXIT)));
    assert_eq!(c.checkpoint(), Some(stale.encode()));
    assert!(!c.log_path().exists(), "nothing was started");
}

#[test]
fn tasks_without_a_command_or_with_a_bad_stop_signal_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = controller(&task("t", &[], |_| {}), dir.path(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "process executor: the task has no command; it needs a command to run as a process"
    );
    let args_only = task("t", &[], |c| c.args = vec!["-c".into()]);
    assert!(matches!(
        controller(&args_only, dir.path(), None),
        Err(Error::NoCommand)
    ));
    let bad_signal = task("t", &["true"], |c| c.stop_signal = "SIGNOPE".into());
    assert!(matches!(
        controller(&bad_signal, dir.path(), None),
        Err(Error::InvalidSignal(s)) if s == "SIGNOPE"
    ));
    let bad_id = sh("../escape", "true");
    assert!(matches!(
        ProcessController::new(
            &bad_id,
            dir.path(),
            None,
            files(&sh("valid", "true"), dir.path())
        ),
        Err(Error::InvalidTaskId(_))
    ));
}

#[tokio::test]
async fn output_goes_to_a_private_log_file_per_task() {
    let state = tempfile::tempdir().expect("tempdir");
    let log_dir = state.path().join("process");
    let c = controller(&sh("logs", "echo out; echo err >&2"), &log_dir, None).expect("controller");
    assert!(run_to_end(&c).await.success());
    assert_eq!(c.log_path(), log_dir.join("logs.log"));
    let text = output(&c).await;
    assert!(text.contains("out\n") && text.contains("err\n"), "{text:?}");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&log_dir), 0o700);
    assert_eq!(mode(c.log_path()), 0o600);
    assert_eq!(mode(&log_dir.join("logs.stdout")), 0o600);
    assert_eq!(mode(&log_dir.join("logs.stderr")), 0o600);
    c.remove().await.expect("remove");
    assert!(!c.log_path().exists());
    assert!(!log_dir.join("logs.stdout").exists() && !log_dir.join("logs.stderr").exists());
}

#[tokio::test]
async fn host_mode_published_ports_are_passed_in_the_environment() {
    use api::port_config::{Protocol, PublishMode};
    let state = tempfile::tempdir().expect("tempdir");
    let port = |proto: Protocol, target: u32, published: u32, mode: PublishMode| api::PortConfig {
        name: "p".into(),
        protocol: proto as i32,
        target_port: target,
        published_port: published,
        publish_mode: mode as i32,
    };
    let mut t = sh("ports", "env | grep ^SWARM_PORT_ | sort");
    t.endpoint = Some(Box::new(api::Endpoint {
        ports: vec![
            port(Protocol::Tcp, 80, 9090, PublishMode::Host),
            port(Protocol::Udp, 53, 5353, PublishMode::Host),
            // No published port, or not bound by the task: nothing to pass.
            port(Protocol::Tcp, 81, 0, PublishMode::Host),
            port(Protocol::Tcp, 443, 8443, PublishMode::Ingress),
        ],
        ..Default::default()
    }));
    let c = controller(&t, state.path(), None).expect("controller");
    assert!(run_to_end(&c).await.success());
    let text = output(&c).await;
    assert_eq!(text, "SWARM_PORT_53_UDP=5353\nSWARM_PORT_80_TCP=9090\n");
}

#[tokio::test]
async fn a_host_port_in_use_on_the_node_fails_the_task() {
    use api::port_config::{Protocol, PublishMode};
    let state = tempfile::tempdir().expect("tempdir");
    // Something else on the node holds the port (any free one, taken for the test).
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("a free port");
    let port = taken.local_addr().expect("bound").port();
    let marker = state.path().join("started");
    let mut t = sh("busy", &format!("touch {}", marker.display()));
    let published = |mode: PublishMode| api::PortConfig {
        name: "web".into(),
        protocol: Protocol::Tcp as i32,
        target_port: 80,
        published_port: port.into(),
        publish_mode: mode as i32,
    };
    t.endpoint = Some(Box::new(api::Endpoint {
        ports: vec![published(PublishMode::Host)],
        ..Default::default()
    }));
    let c = controller(&t, state.path(), None).expect("controller");
    c.prepare().await.expect("prepare");
    assert_eq!(
        c.start().await,
        Err(ExecutorError::Fatal(format!(
            "process executor: host port {port}/tcp is already in use on this node"
        )))
    );
    assert!(!marker.exists(), "the process never started");

    // An INGRESS-mode port is the routing mesh's, never bound on the node for the task.
    t.endpoint = Some(Box::new(api::Endpoint {
        ports: vec![published(PublishMode::Ingress)],
        ..Default::default()
    }));
    let c = controller(&t, state.path(), None).expect("controller");
    assert!(run_to_end(&c).await.success());
    assert!(marker.exists());
}

#[tokio::test]
async fn env_dir_and_user_apply() {
    let state = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("workdir");
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let script = "echo \"path=$PATH a=$A b=${B-unset} dir=$(pwd) id=$(id -u):$(id -g)\"";
    let t = task("env", &["/bin/sh", "-c", script], |c| {
        c.env = vec!["A=1".into(), "B=2".into(), "B".into()];
        c.dir = work.path().display().to_string();
        c.user = format!("{uid}:{gid}");
    });
    let c = controller(&t, state.path(), None).expect("controller");
    assert!(run_to_end(&c).await.success());
    let text = output(&c).await;
    let dir = work.path().canonicalize().expect("canonical");
    assert_eq!(
        text.trim(),
        format!(
            "path={DEFAULT_PATH} a=1 b=unset dir={} id={uid}:{gid}",
            dir.display()
        )
    );
}

#[tokio::test]
async fn a_missing_program_or_dir_is_fatal() {
    let state = tempfile::tempdir().expect("tempdir");
    let c = controller(
        &task("missing", &["/no/such/program"], |_| {}),
        state.path(),
        None,
    )
    .expect("controller");
    c.prepare().await.expect("prepare");
    assert!(
        matches!(c.start().await, Err(ExecutorError::Fatal(m)) if m.contains("/no/such/program"))
    );
    let c = controller(
        &task("nodir", &["true"], |c| c.dir = "/no/such/dir".into()),
        state.path(),
        None,
    )
    .expect("controller");
    assert_eq!(
        c.prepare().await,
        Err(ExecutorError::Fatal(
            "process executor: working directory /no/such/dir is not a directory".into()
        ))
    );
}

#[tokio::test]
async fn shutdown_reaches_the_whole_process_group() {
    let state = tempfile::tempdir().expect("tempdir");
    // The grandchild writes its PID, then the shell waits on it; TERM to the group ends both.
    let script = "sleep 60 & echo $! > grandchild; wait";
    let t = task("group", &["/bin/sh", "-c", script], |c| {
        c.dir = state.path().display().to_string();
    });
    let c = controller(&t, state.path(), None).expect("controller");
    c.prepare().await.expect("prepare");
    c.start().await.expect("start");
    let pid_file = state.path().join("grandchild");
    let written = async {
        loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let grandchild: i32 = tokio::time::timeout(Duration::from_secs(10), written)
        .await
        .expect("the child wrote its grandchild's pid");
    c.shutdown().await.expect("shutdown");
    match c.inspect().await {
        Ok(RuntimeState::Exited(e)) => assert_eq!(e.signal, Some(15), "{e:?}"),
        other => panic!("not exited: {other:?}"),
    }
    // The grandchild was our child's; once it is reaped by init its /proc entry goes.
    let gone = async {
        while procfs::read_stat(grandchild)
            .expect("stat")
            .is_some_and(|s| !s.is_zombie())
        {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the grandchild got the stop signal too");
}

/// A removal that fails still takes the task's files with it: the runner forgets the task after a
/// few tries, and nothing would remove them later.
#[tokio::test]
async fn a_failed_removal_still_removes_the_files() {
    let state = tempfile::tempdir().expect("tempdir");
    let log_dir = state.path().join("process");
    let c = controller(&sh("stuck", "true"), &log_dir, None).expect("controller");
    c.prepare().await.expect("prepare");
    assert!(c.files.root().is_dir());
    // A non-empty directory where the log file goes: removing the log fails.
    let _ = std::fs::remove_file(c.log_path());
    std::fs::create_dir_all(c.log_path().join("x")).expect("mkdir");
    let err = c.remove().await.expect_err("the log cannot go");
    assert!(err.to_string().contains("stuck.log"), "{err}");
    assert!(
        !c.files.root().exists(),
        "the files outlived a failed removal"
    );
}

/// `t` attached to one overlay network (VNI `vni`, 10.78.0.0/24) at `addr`.
fn on_network(mut t: api::Task, vni: u32, addr: &str) -> api::Task {
    let network = api::Network {
        id: "procnet1".into(),
        driver_state: Some(api::Driver {
            name: "overlay".into(),
            options: [(
                "com.docker.network.driver.overlay.vxlanid_list".to_string(),
                vni.to_string(),
            )]
            .into_iter()
            .collect(),
        }),
        ipam: Some(api::IpamOptions {
            configs: vec![api::IpamConfig {
                subnet: "10.78.0.0/24".into(),
                gateway: "10.78.0.1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    t.networks = vec![api::NetworkAttachment {
        network: Some(network),
        addresses: vec![addr.into()],
        ..Default::default()
    }];
    t
}

#[tokio::test]
async fn a_task_on_networks_is_rejected_with_the_reason_when_the_node_has_no_data_plane() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plane: crate::DataPlane = Err("no CAP_NET_ADMIN".into());
    let t = on_network(sh("netrej1", "true"), 4100, "10.78.0.5/24");
    let c = controller(&t, dir.path(), None)
        .unwrap()
        .with_data_plane(Some(plane.clone()));
    match c.prepare().await {
        Err(ExecutorError::Fatal(m)) => assert!(
            m.contains("overlay data plane is unavailable: no CAP_NET_ADMIN"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    // A task without networks is not affected.
    let c = controller(&sh("netrej2", "true"), dir.path(), None)
        .unwrap()
        .with_data_plane(Some(plane));
    assert!(run_to_end(&c).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_network_runs_in_its_own_namespace_which_goes_with_it() {
    let ns = format!("ovlp-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &ns]).output();
    if !made.is_ok_and(|o| o.status.success()) {
        println!("skipped: cannot create a network namespace (not root?)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let netns = netplane::NetnsPath(Path::new("/run/netns").join(&ns));
    let config = netplane::Config {
        data_path_addr: None,
        vxlan_port: 4789,
        state_dir: dir.path().join("plane"),
        wireguard_port: netplane::tunnel::WIREGUARD_PORT,
        encrypted_vxlan_port: netplane::tunnel::ENCRYPTED_VXLAN_PORT,
    };
    let plane = match netplane::Dataplane::start_in(config, &netns).await {
        Ok(p) => p,
        Err(e) => {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            println!("skipped: no data plane here: {e}");
            return;
        }
    };
    let id = format!("ovlp{}t", std::process::id());
    let t = on_network(
        sh(&id, "cat /proc/net/dev /etc/resolv.conf"),
        4101,
        "10.78.0.7/24",
    );
    let c = controller(&t, dir.path(), None)
        .unwrap()
        .with_data_plane(Some(Ok(plane.clone())));
    let status = run_to_end(&c).await;
    let log = std::fs::read_to_string(c.log_path()).unwrap();
    let sandbox = Path::new("/run/netns").join(netplane::sandbox::netns_name(&id));
    let existed = sandbox.exists();
    c.release().await.expect("release");
    let gone = !sandbox.exists();
    plane.stop().await.expect("stop");
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(status.success(), "{log}");
    assert!(log.contains("eth0:"), "{log}");
    assert!(log.contains("nameserver 10.78.0.1"), "{log}");
    assert!(
        existed && gone,
        "the sandbox exists while the task runs, then goes"
    );
}

#[tokio::test]
async fn logs_keep_streams_apart_and_honour_tail_and_since() {
    use api::LogStream::{Stderr, Stdout};
    let state = tempfile::tempdir().expect("tempdir");
    let script = "echo one; sleep 0.2; echo two >&2; sleep 0.2; printf 'three'";
    let c = controller(&sh("lines", script), state.path(), None).expect("controller");
    assert!(run_to_end(&c).await.success());
    let all = log_lines(&c, &all_streams(true)).await;
    assert_eq!(
        all,
        vec![
            (Stdout, "one\n".to_string()),
            (Stderr, "two\n".to_string()),
            // No newline at the end: sent as written.
            (Stdout, "three".to_string()),
        ]
    );
    // Not followed: what is there, at once.
    assert_eq!(log_lines(&c, &all_streams(false)).await, all);
    let only_err = LogOptions {
        stdout: false,
        ..all_streams(false)
    };
    assert_eq!(
        log_lines(&c, &only_err).await,
        vec![(Stderr, "two\n".to_string())]
    );
    let last_two = LogOptions {
        tail: -3,
        ..all_streams(false)
    };
    assert_eq!(log_lines(&c, &last_two).await, all[1..].to_vec());
    let later = LogOptions {
        since: Some(SystemTime::now()),
        ..all_streams(false)
    };
    assert_eq!(log_lines(&c, &later).await, vec![]);
}

#[tokio::test]
async fn followed_logs_go_on_until_the_process_ends() {
    let state = tempfile::tempdir().expect("tempdir");
    let marker = state.path().join("go");
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
        marker.display()
    );
    let c = Arc::new(controller(&sh("follow", &script), state.path(), None).expect("controller"));
    c.prepare().await.expect("prepare");
    c.start().await.expect("start");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            let sink = LogSink::new(&api::Task::default(), tx);
            c.logs(&all_streams(true), &sink).await
        })
    };
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("first line in time")
        .expect("a line");
    assert_eq!(first.data, b"first\n");
    assert!(!reader.is_finished(), "a followed log waits for more");
    std::fs::write(&marker, b"").expect("marker");
    let second = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("second line in time")
        .expect("a line");
    assert_eq!(second.data, b"second\n");
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("ends with the process")
        .expect("join")
        .expect("logs");
}

/// A process adopted by a new controller (a swarmd restart) keeps its output: what it wrote while
/// nobody read waits in the FIFO, and what it writes later is copied too.
#[tokio::test]
async fn an_adopted_process_keeps_its_output() {
    let state = tempfile::tempdir().expect("tempdir");
    let marker = state.path().join("go");
    let script = format!(
        "echo before; while [ ! -e {} ]; do sleep 0.05; done; echo after",
        marker.display()
    );
    let t = sh("adopt", &script);
    let first = controller(&t, state.path(), None).expect("controller");
    first.prepare().await.expect("prepare");
    first.start().await.expect("start");
    let checkpoint = first.checkpoint().expect("checkpoint");
    let mut lines = log_lines(&first, &all_streams(false)).await;
    while lines.is_empty() {
        tokio::task::yield_now().await;
        lines = log_lines(&first, &all_streams(false)).await;
    }
    assert_eq!(
        lines,
        vec![(api::LogStream::Stdout, "before\n".to_string())]
    );
    // The first controller's copier goes with a new runtime's controller in real life; here
    // both live, and the new one must not copy twice.
    drop(first);
    let second = controller(&t, state.path(), Some(&checkpoint)).expect("adopting controller");
    std::fs::write(&marker, b"").expect("marker");
    assert!(
        tokio::time::timeout(Duration::from_secs(20), second.wait())
            .await
            .expect("ends in time")
            .is_ok()
    );
    let text = output(&second).await;
    assert_eq!(text, "before\nafter\n");
}

#[test]
fn a_sandboxed_task_is_told_its_target_port_and_a_host_network_one_its_published_port() {
    let ports = [
        HostPortMap {
            protocol: Protocol::Tcp,
            target: 80,
            published: 9090,
        },
        HostPortMap {
            protocol: Protocol::Udp,
            target: 53,
            published: 70000,
        },
    ];
    let env = |sandboxed| port_env(&ports, sandboxed);
    assert_eq!(
        env(false),
        [
            ("SWARM_PORT_80_TCP".to_owned(), "9090".to_owned()),
            ("SWARM_PORT_53_UDP".to_owned(), "70000".to_owned()),
        ]
    );
    assert_eq!(
        env(true),
        [
            ("SWARM_PORT_80_TCP".to_owned(), "80".to_owned()),
            ("SWARM_PORT_53_UDP".to_owned(), "53".to_owned()),
        ]
    );
    // The node forwards each published port to the target; one out of range is left out.
    assert_eq!(
        forwards(&ports),
        [netplane::lb::HostPort {
            protocol: netplane::lb::L4::Tcp,
            published: 9090,
            target: 80,
        }]
    );
}
