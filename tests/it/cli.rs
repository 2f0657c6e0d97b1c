//! swarmctl against a real swarmd: output layouts (spec 1.3) and the error catalogue (spec 1.4),
//! with IDs masked to same-width placeholders.

use std::path::Path;

use crate::harness::{Swarmd, ctl_at, mask_ids};

const ID: &str = "<id.....................>";

#[test]
fn cluster_ls_and_inspect_match_reference_layout() {
    let d = Swarmd::start();
    assert_eq!(
        mask_ids(d.ctl(&["cluster", "ls"]).ok()),
        format!(
            "ID                         Name\n--                         ----\n{ID}  default\n"
        )
    );
    let inspect = d.ctl(&["cluster", "inspect", "default"]).ok().to_string();
    let lines: Vec<&str> = inspect.lines().collect();
    assert_eq!(lines[0], format!("ID          : {}", &lines[0][14..]));
    assert_eq!(lines[1], "Name        : default");
    assert_eq!(lines[2], "Orchestration settings:");
    assert_eq!(lines[3], "  Task history entries: 5");
    assert_eq!(lines[4], "Dispatcher settings:");
    assert_eq!(lines[5], "  Dispatcher heartbeat period: 5s");
    assert_eq!(lines[6], "Certificate Authority settings:");
    assert_eq!(lines[7], "  Certificate Validity Duration: 2160h0m0s");
    assert_eq!(lines[8], "  Join Tokens:");
    for (line, role) in [(lines[9], "Worker"), (lines[10], "Manager")] {
        let token = line
            .strip_prefix(&format!("    {role}: "))
            .unwrap_or_else(|| panic!("{line}"));
        let parts: Vec<&str> = token.split('-').collect();
        assert_eq!(parts.len(), 4, "{token}");
        assert_eq!((parts[0], parts[1]), ("SWMTKN", "1"));
        assert_eq!(parts[2].len(), 50, "{token}");
        assert_eq!(parts[3].len(), 25, "{token}");
    }
    assert_eq!(lines.len(), 11, "{inspect}");
}

#[test]
fn node_ls_shows_leader_manager() {
    let d = Swarmd::start();
    let out = mask_ids(d.ctl(&["node", "ls"]).ok());
    assert_eq!(
        out,
        format!(
            "ID                         Name    Membership  Status  Availability  Manager Status\n\
             --                         ----    ----------  ------  ------------  --------------\n\
             {ID}  node-1  ACCEPTED    READY   ACTIVE        REACHABLE *\n"
        )
    );
}

#[test]
fn network_ls_lists_predefined_networks() {
    let d = Swarmd::start();
    let out = mask_ids(d.ctl(&["network", "ls"]).ok());
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ID                         Name     Driver");
    assert_eq!(lines[1], "--                         ----     ------");
    lines.drain(..2);
    lines.sort();
    assert_eq!(
        lines,
        vec![
            format!("{ID}  bridge   bridge"),
            format!("{ID}  host     host"),
            format!("{ID}  ingress  overlay"),
        ]
    );
}

#[test]
fn service_lifecycle_through_swarmctl() {
    let d = Swarmd::start();
    let id = d
        .ctl(&[
            "service",
            "create",
            "--name",
            "web",
            "--image",
            "nginx:1.25",
            "--replicas",
            "3",
            "--env",
            "A=1,B=2",
            "--args",
            "x,y",
            "--command",
            "/bin/sh",
        ])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 25, "{id}");

    let ls = mask_ids(d.ctl(&["service", "ls"]).ok());
    assert_eq!(
        ls,
        format!(
            "ID                         Name  Image       Replicas\n\
             --                         ----  -----       --------\n\
             {ID}  web   nginx:1.25  0/3\n"
        )
    );
    let inspect = mask_ids(d.ctl(&["service", "inspect", "web"]).ok());
    let expected = format!(
        "ID                : {ID}\n\
         Name              : web\n\
         Replicas          : 0/3\n\
         Template          \n \
         Container        \n  \
         Image           : nginx:1.25\n  \
         Command         : \"/bin/sh\"\n  \
         Args            : [x, y]\n  \
         Env             : [A=1, B=2]\n"
    );
    assert!(
        inspect.starts_with(&expected),
        "got:\n{inspect}\nwant prefix:\n{expected}"
    );

    d.ctl(&["service", "update", "web", "--replicas", "5"]).ok();
    assert!(d.ctl(&["service", "ls"]).ok().contains("0/5"));
    let err = d.ctl(&["service", "update", "web"]);
    assert!(
        err.err().starts_with("Error: no changes detected\n"),
        "{err:?}"
    );

    assert_eq!(d.ctl(&["service", "rm", "web"]).ok(), "web\n");
    assert_eq!(d.ctl(&["service", "ls", "-q"]).ok(), "");
}

#[test]
fn error_catalogue() {
    let d = Swarmd::start();
    d.ctl(&["service", "create", "--name", "web", "--image", "nginx"])
        .ok();
    let cases: &[(&[&str], &str)] = &[
        (
            &["service", "create", "--name", "Web", "--image", "nginx"],
            "Error: name conflicts with an existing object: service Web already exists",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "bad_name!",
                "--image",
                "nginx",
            ],
            "Error: name must be valid as a DNS name component",
        ),
        (
            &["service", "create", "--name", "x", "--image", ""],
            "Error: ContainerSpec: image reference must be provided",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--image",
                "nginx",
                "--restart-delay=-5s",
            ],
            "Error: TaskSpec: restart-delay cannot be negative",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--image",
                "nginx",
                "--memory-limit",
                "1k",
            ],
            "Error: invalid memory value 1024: Must be at least 4MiB",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--image",
                "nginx",
                "--constraint",
                "garbage",
            ],
            "Error: constraint expected one operator from ==, !=",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--image",
                "nginx",
                "--network",
                "ingress",
            ],
            "Error: Service cannot be explicitly attached to the ingress network \"ingress\"",
        ),
        (
            &["service", "inspect", "nosuch"],
            "Error: service nosuch not found",
        ),
        (
            &["service", "update", "web", "--name", "web2"],
            "Error: renaming services is not supported",
        ),
        (
            &["task", "inspect", "nosuch"],
            "Error: task nosuch not found",
        ),
        (
            &["cluster", "update", "default", "--certexpiry", "10m"],
            "Error: minimum certificate expiry time is: 1h0m0s",
        ),
        (
            &[
                "cluster",
                "update",
                "default",
                "--rotate-join-token",
                "bogus",
            ],
            "Error: --rotate-join-token flag must be followed by 'worker' or 'manager'",
        ),
        (&["network", "create"], "Error: --name is required"),
        // Negative values are values (pflag), judged by the manager as SwarmKit's does.
        (
            &["cluster", "update", "default", "--certexpiry", "-1h"],
            "Error: minimum certificate expiry time is: 1h0m0s",
        ),
        (
            &["cluster", "update", "default", "--heartbeatperiod", "-1s"],
            "Error: heartbeat time period cannot be a negative duration",
        ),
        (
            &["cluster", "update", "default", "--taskhistory", "-5"],
            "Error: invalid argument \"-5\" for \"--taskhistory\" flag: the number of task history entries cannot be negative",
        ),
        (
            &[
                "cluster",
                "update",
                "default",
                "--heartbeatperiod",
                "1h 30m",
            ],
            "Error: invalid argument \"1h 30m\" for \"--heartbeatperiod\" flag: time: unknown unit \"h \" in duration \"1h 30m\"",
        ),
    ];
    for (args, want) in cases {
        let out = d.ctl(args);
        let first = out.err().lines().next().unwrap_or("").to_string();
        assert_eq!(first, *want, "swarmctl {args:?}");
    }
    // Nothing was created or changed by the rejected requests.
    assert_eq!(d.ctl(&["service", "ls", "-q"]).ok().lines().count(), 1);
    let cluster = d.ctl(&["cluster", "inspect", "default"]).ok().to_string();
    for line in [
        "Task history entries: 5",
        "Dispatcher heartbeat period: 5s",
        "Certificate Validity Duration: 2160h0m0s",
    ] {
        assert!(cluster.contains(line), "{line} in {cluster}");
    }
}

#[test]
fn secrets_and_configs() {
    let d = Swarmd::start();
    let id = d
        .ctl_stdin(&["secret", "create", "mysecret"], b"s3cr3t")
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 25);
    let again = d.ctl_stdin(&["secret", "create", "mysecret"], b"other");
    assert_eq!(
        again.err().lines().next(),
        Some("Error: secret mysecret already exists")
    );
    let ls = mask_ids(d.ctl(&["secret", "ls"]).ok());
    assert_eq!(
        ls,
        format!(
            "ID                           Name        Driver    Created\n\
             --                           ----        ------    -------\n\
             {ID}    mysecret              now\n"
        )
    );
    let inspect = d.ctl(&["secret", "inspect", "mysecret"]).ok().to_string();
    assert!(!inspect.contains("s3cr3t"), "secret data leaked: {inspect}");

    let empty = d.ctl_stdin(&["secret", "create", "empty"], b"");
    assert_eq!(
        empty.err().lines().next(),
        Some("Error: secret data must be larger than 0 and less than 512000 bytes")
    );

    d.ctl_stdin(&["config", "create", "mycfg"], b"a=b").ok();
    let cfg = d.ctl(&["config", "inspect", "mycfg"]).ok().to_string();
    assert!(cfg.contains("a=b"), "{cfg}");
    assert_eq!(d.ctl(&["config", "rm", "mycfg"]).code, 0);
    assert_eq!(d.ctl(&["config", "ls", "-q"]).ok(), "");
}

#[test]
fn node_availability_and_rotation() {
    let d = Swarmd::start();
    d.ctl(&["node", "drain", "node-1"]).ok();
    let again = d.ctl(&["node", "drain", "node-1"]);
    assert_eq!(
        again.err().lines().next(),
        Some("Error: Node node-1 was already drained")
    );
    assert!(d.ctl(&["node", "ls"]).ok().contains("DRAIN"));
    d.ctl(&["node", "activate", "node-1"]).ok();

    let token = |role: &str| -> String {
        let out = d.ctl(&["cluster", "inspect", "default"]).ok().to_string();
        out.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{role}: "))
                    .map(str::to_string)
            })
            .expect("token line")
    };
    let (w, m) = (token("Worker"), token("Manager"));
    d.ctl(&[
        "cluster",
        "update",
        "default",
        "--rotate-join-token",
        "worker",
    ])
    .ok();
    let (w2, m2) = (token("Worker"), token("Manager"));
    assert_ne!(w, w2);
    assert_eq!(m, m2);
    // Rotation keeps the CA digest part.
    assert_eq!(w.split('-').nth(2), w2.split('-').nth(2));
}

#[test]
fn rotate_ca_starts_a_root_rotation() {
    let d = Swarmd::start();
    let inspect = || d.ctl(&["cluster", "inspect", "default"]).ok().to_string();
    let before = inspect();
    assert!(!before.contains("Root CA rotation"), "{before}");
    d.ctl(&["cluster", "update", "default", "--rotate-ca"]).ok();
    let during = inspect();
    let lines: Vec<&str> = during.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "  Root CA rotation: in progress")
        .unwrap_or_else(|| panic!("no rotation line:\n{during}"));
    let hash = lines
        .get(at + 1)
        .and_then(|l| l.strip_prefix("    New root CA: sha256:"))
        .unwrap_or_else(|| panic!("no new root line:\n{during}"));
    assert_eq!(hash.len(), 64, "{during}");
    // The join tokens keep naming the current root until the rotation completes.
    let tokens = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| {
                l.trim_start().starts_with("Worker: ") || l.trim_start().starts_with("Manager: ")
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(tokens(&before), tokens(&during));
}

/// The control socket serves the CA service as SwarmKit's does: `cluster unlock-key` reads the
/// key there (it failed with an empty `Error:` while only Control was served).
#[test]
fn unlock_key_is_read_on_the_control_socket() {
    let d = Swarmd::start();
    let key = || {
        d.ctl(&["cluster", "unlock-key", "default"])
            .ok()
            .to_string()
    };
    // SwarmKit's swarmctl prints both sentences when autolock is off (it does not return after
    // the first); ours does the same.
    assert_eq!(
        key(),
        "Managers not auto-lockedManagers auto-locked.  Unlock key: SWMKEY-1-\n"
    );
    d.ctl(&["cluster", "update", "default", "--autolock"]).ok();
    let locked = key();
    let k = locked
        .strip_prefix("Managers auto-locked.  Unlock key: SWMKEY-1-")
        .unwrap_or_else(|| panic!("{locked}"));
    assert!(k.trim_end().len() > 20, "{locked}");
    d.ctl(&["cluster", "update", "default", "--autolock=false"])
        .ok();
}

#[test]
fn missing_socket_is_a_dial_error() {
    let out = ctl_at(
        Path::new("/nonexistent/swarmd.sock"),
        &["service", "ls"],
        None,
    );
    assert_eq!(
        out.err().trim_end(),
        "Error: connection error: desc = \"transport: Error while dialing: dial unix /nonexistent/swarmd.sock: connect: no such file or directory\""
    );
}

#[test]
fn allocator_publishes_service_ports() {
    let d = Swarmd::start();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "web",
        "--image",
        "nginx",
        "--ports",
        "http:80:8080",
    ])
    .ok();
    // The allocator (a leader subsystem) fills the service endpoint shortly after the create.
    let inspect = crate::harness::wait_for(
        "service endpoint allocated",
        std::time::Duration::from_secs(10),
        || {
            let out = d.ctl(&["service", "inspect", "web"]).ok().to_string();
            out.contains("Ports:").then_some(out)
        },
    );
    assert!(
        inspect.contains(
            "\nPorts:\n    - Name             = http\n      Protocol         = TCP\n      Port             = 80\n      SwarmPort        = 8080\n"
        ),
        "{inspect}"
    );
}

/// `service inspect <name>` when it shows a virtual IP on the ingress network (the allocator
/// gives one only for INGRESS-mode ports).
pub(crate) fn ingress_vip(d: &Swarmd, name: &str) -> Option<String> {
    let out = d.ctl(&["service", "inspect", name]).ok().to_string();
    let first_vip = out
        .split("Virtual IPs:\n")
        .nth(1)
        .and_then(|b| b.lines().next());
    first_vip
        .is_some_and(|l| l.trim_start().starts_with("ingress "))
        .then_some(out)
}

/// `--publish-mode ingress` (ours) reaches the control API: the allocator gives the service a
/// virtual IP on the ingress network, as it does only for INGRESS-mode ports; an update with
/// the mode alone switches a HOST-mode service over.
#[test]
fn publish_mode_ingress_puts_the_service_on_the_ingress_network() {
    let d = Swarmd::start();
    let ingress_vip = |name: &str| ingress_vip(&d, name);
    let create = |name: &str, ports: &str, extra: &[&str]| {
        let mut args = vec!["service", "create", "--name", name, "--image", "nginx"];
        args.extend_from_slice(&["--replicas", "0", "--ports", ports]);
        args.extend_from_slice(extra);
        d.ctl(&args)
    };
    create("mesh", "http:80:8080", &["--publish-mode", "ingress"]).ok();
    crate::harness::wait_for(
        "an ingress VIP for mesh",
        std::time::Duration::from_secs(10),
        || ingress_vip("mesh"),
    );

    // HOST mode, the default: ports allocated, no ingress VIP.
    // An INGRESS-mode port is the cluster's: no other service can publish it (two HOST-mode
    // services may share a port, on different nodes).
    let taken = create("again", "http:80:8080", &[]);
    assert!(
        taken
            .err()
            .contains("port '8080' is already in use by service 'mesh'"),
        "{taken:?}"
    );
    create("host", "http:80:8081", &[]).ok();
    crate::harness::wait_for(
        "host's ports allocated",
        std::time::Duration::from_secs(10),
        || {
            let out = d.ctl(&["service", "inspect", "host"]).ok().to_string();
            out.contains("Ports:").then_some(())
        },
    );
    assert_eq!(ingress_vip("host"), None);

    d.ctl_update(&["service", "update", "host", "--publish-mode", "ingress"])
        .ok();
    crate::harness::wait_for(
        "an ingress VIP for host after the update",
        std::time::Duration::from_secs(10),
        || ingress_vip("host"),
    );
    let bad = d.ctl(&["service", "update", "host", "--publish-mode", "mesh"]);
    assert!(
        bad.err().contains("invalid publish mode \"mesh\""),
        "{}",
        bad.err()
    );
}
