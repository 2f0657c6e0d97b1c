//! Table tests of the service flags: one `check(args, expected)` per behaviour, the expected
//! spec written as an edit of the plain create spec.

use super::*;
use clap::Parser;

/// The flags as `service create` parses them.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    flags: ServiceFlags,
    #[arg(long)]
    mode: Option<String>,
}

fn run(args: &[&str], start: api::ServiceSpec) -> Result<api::ServiceSpec> {
    let cli = Cli::try_parse_from(std::iter::once("create").chain(args.iter().copied()))
        .map_err(|e| FlagError(format!("clap: {e}")))?;
    cli.flags.check_syntax()?;
    let mut spec = start;
    merge_head(&cli.flags, cli.mode.as_deref(), false, &mut spec)?;
    merge_tail(&cli.flags, &mut spec)?;
    Ok(spec)
}

/// The create spec after the client's unconditional defaults (a restart policy).
fn base() -> api::ServiceSpec {
    let mut s = new_create_spec();
    task(&mut s).restart = Some(Box::new(api::RestartPolicy {
        condition: api::restart_policy::RestartCondition::Any as i32,
        ..Default::default()
    }));
    s
}

/// Applies `args` to a fresh create spec and expects `edit(base())`.
fn check(args: &[&str], edit: impl FnOnce(&mut api::ServiceSpec)) {
    let mut expected = base();
    edit(&mut expected);
    assert_eq!(run(args, new_create_spec()), Ok(expected), "args: {args:?}");
}

/// Applies `args` and expects exactly this error message.
fn check_err(args: &[&str], msg: &str) {
    assert_eq!(
        run(args, new_create_spec()),
        Err(FlagError(msg.to_string())),
        "args: {args:?}"
    );
}

fn c(s: &mut api::ServiceSpec) -> &mut api::ContainerSpec {
    container(s)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

#[test]
fn no_flags_only_adds_the_restart_policy() {
    check(&[], |_| {});
}

#[test]
fn name_image_hostname() {
    check(
        &["--name", "web", "--image", "nginx:1.25", "--hostname", "h1"],
        |s| {
            s.annotations.as_mut().expect("set").name = "web".into();
            c(s).image = "nginx:1.25".into();
            c(s).hostname = "h1".into();
        },
    );
    check(&["--image="], |s| c(s).image = String::new());
}

#[test]
fn labels_replace_and_trim() {
    check(&["--label", " tier = front ,a=b=c", "--label", "x="], |s| {
        let labels = &mut s.annotations.as_mut().expect("set").labels;
        labels.insert("tier".into(), "front".into());
        labels.insert("a".into(), "b=c".into());
        labels.insert("x".into(), String::new());
    });
    check_err(&["--label", "novalue"], "malformed label: novalue");
    let mut start = new_create_spec();
    start
        .annotations
        .as_mut()
        .expect("set")
        .labels
        .insert("old".into(), "1".into());
    let got = run(&["--label", "new=2"], start).expect("ok");
    assert_eq!(
        got.annotations.expect("set").labels,
        BTreeMap::from([("new".to_string(), "2".to_string())])
    );
}

#[test]
fn command_args_env_are_csv_lists() {
    check(
        &[
            "--command",
            "/bin/sh,-c",
            "--args",
            "\"echo a,b\",x",
            "--env",
            "A=1",
            "--env",
            "B=2",
        ],
        |s| {
            c(s).command = strings(&["/bin/sh", "-c"]);
            c(s).args = strings(&["echo a,b", "x"]);
            c(s).env = strings(&["A=1", "B=2"]);
        },
    );
    check(&["--env", ""], |s| c(s).env = vec![]);
    check_err(
        &["--env", "a\"b"],
        "invalid argument \"a\\\"b\" for \"--env\" flag: parse error on line 1, column 2: bare \" in non-quoted-field",
    );
}

#[test]
fn bools_tty_stdin_init() {
    check(&["--tty", "--open-stdin", "--init"], |s| {
        c(s).tty = true;
        c(s).open_stdin = true;
        c(s).init = Some(true);
    });
    check(&["--init=false", "--tty=0"], |s| c(s).init = Some(false));
    check_err(
        &["--tty=yes"],
        "invalid argument \"yes\" for \"--tty\" flag: strconv.ParseBool: parsing \"yes\": invalid syntax",
    );
}

#[test]
fn oom_score_adj() {
    check(&["--oom-score-adj", "-500"], |s| c(s).oom_score_adj = -500);
    check_err(
        &["--oom-score-adj", "x"],
        "invalid argument \"x\" for \"--oom-score-adj\" flag: strconv.ParseInt: parsing \"x\": invalid syntax",
    );
    check(&["--oom-score-adj", "-1000"], |s| {
        c(s).oom_score_adj = -1000
    });
    check(&["--oom-score-adj", "1000"], |s| c(s).oom_score_adj = 1000);
    check_err(
        &["--oom-score-adj", "5000"],
        "Invalid value 5000, range for oom score adj is [-1000, 1000]",
    );
    check_err(
        &["--oom-score-adj", "-1001"],
        "Invalid value -1001, range for oom score adj is [-1000, 1000]",
    );
}

#[test]
fn replicas_and_modes() {
    check(&["--replicas", "3"], |s| {
        s.mode = Some(Mode::Replicated(api::ReplicatedService { replicas: 3 }))
    });
    check(&["--replicas", "0x10"], |s| {
        s.mode = Some(Mode::Replicated(api::ReplicatedService { replicas: 16 }))
    });
    check(&["--mode", "replicated"], |_| {});
    check(&["--mode", "global"], |s| {
        s.mode = Some(Mode::Global(api::GlobalService {}))
    });
    check(&["--mode", "global-job"], |s| {
        s.mode = Some(Mode::GlobalJob(api::GlobalJob {}))
    });
    check(&["--mode", "replicated-job"], |s| {
        s.mode = Some(Mode::ReplicatedJob(api::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1,
        }))
    });
    check(
        &["--mode", "replicated-job", "--total-completions", "5"],
        |s| {
            s.mode = Some(Mode::ReplicatedJob(api::ReplicatedJob {
                max_concurrent: 5,
                total_completions: 5,
            }))
        },
    );
    check(
        &[
            "--mode",
            "replicated-job",
            "--total-completions",
            "5",
            "--max-concurrent",
            "2",
        ],
        |s| {
            s.mode = Some(Mode::ReplicatedJob(api::ReplicatedJob {
                max_concurrent: 2,
                total_completions: 5,
            }))
        },
    );
    check_err(&["--mode", "bogus"], "invalid mode: bogus");
    check_err(
        &["--mode", "global", "--replicas", "2"],
        "--replicas can only be specified in --mode replicated",
    );
    check_err(
        &["--mode", "replicated-job", "--replicas", "2"],
        "--replicas can only be specified in --mode replicated",
    );
    check_err(
        &["--max-concurrent", "2"],
        "--max-concurrent can only be specified in --mode replicated-job",
    );
    check_err(
        &["--total-completions", "2"],
        "--total-completions can only be specified in --mode replicated-job",
    );
    check_err(
        &["--replicas", "-1"],
        "invalid argument \"-1\" for \"--replicas\" flag: strconv.ParseUint: parsing \"-1\": invalid syntax",
    );
    check_err(
        &["--replicas", "abc"],
        "invalid argument \"abc\" for \"--replicas\" flag: strconv.ParseUint: parsing \"abc\": invalid syntax",
    );
}

#[test]
fn update_of_a_job_changes_only_given_counts() {
    let mut start = base();
    start.mode = Some(Mode::ReplicatedJob(api::ReplicatedJob {
        max_concurrent: 2,
        total_completions: 10,
    }));
    let got = run(&["--total-completions", "20"], start).expect("ok");
    assert_eq!(
        got.mode,
        Some(Mode::ReplicatedJob(api::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 20
        }))
    );
}

#[test]
fn ports() {
    use api::port_config::{Protocol, PublishMode};
    let port = |name: &str, proto: Protocol, target: u32, published: u32| api::PortConfig {
        name: name.into(),
        protocol: proto as i32,
        target_port: target,
        published_port: published,
        publish_mode: PublishMode::Host as i32,
    };
    check(
        &[
            "--ports",
            "http:80:8080,dns:53/udp:5353/UDP",
            "--ports",
            "s:9/sctp",
        ],
        |s| {
            s.endpoint = Some(api::EndpointSpec {
                ports: vec![
                    port("http", Protocol::Tcp, 80, 8080),
                    port("dns", Protocol::Udp, 53, 5353),
                    port("s", Protocol::Sctp, 9, 0),
                ],
                ..Default::default()
            })
        },
    );
    check(&["--ports", ":80"], |s| {
        s.endpoint = Some(api::EndpointSpec {
            ports: vec![port("", Protocol::Tcp, 80, 0)],
            ..Default::default()
        })
    });
    check_err(
        &["--ports", "80"],
        "insufficient parameters in port configuration",
    );
    check_err(
        &["--ports", "http:x"],
        "failed to parse port: strconv.ParseUint: parsing \"x\": invalid syntax",
    );
    check_err(
        &["--ports", "http:80:y"],
        "failed to parse node port: strconv.ParseUint: parsing \"y\": invalid syntax",
    );
    check_err(
        &["--ports", "http:80/foo"],
        "failed to parse port: invalid protocol string: foo",
    );
    check_err(&["--ports", "http:80/udp:8080"], "protocol mismatch");
    check_err(
        &["--ports", "http:99999999999"],
        "failed to parse port: strconv.ParseUint: parsing \"99999999999\": value out of range",
    );
    check_err(
        &["--ports", "web:80:70000"],
        "failed to parse node port: strconv.ParseUint: parsing \"70000\": value out of range",
    );
    check_err(
        &["--ports", "web:65536"],
        "failed to parse port: strconv.ParseUint: parsing \"65536\": value out of range",
    );
}

#[test]
fn publish_mode_sets_every_port() {
    use api::port_config::{Protocol, PublishMode};
    let port = |target: u32, published: u32, mode: PublishMode| api::PortConfig {
        name: "p".into(),
        protocol: Protocol::Tcp as i32,
        target_port: target,
        published_port: published,
        publish_mode: mode as i32,
    };
    let endpoint = |ports| {
        Some(api::EndpointSpec {
            ports,
            ..Default::default()
        })
    };
    check(
        &["--ports", "p:80:8080,p:81", "--publish-mode", "ingress"],
        |s| {
            s.endpoint = endpoint(vec![
                port(80, 8080, PublishMode::Ingress),
                port(81, 0, PublishMode::Ingress),
            ])
        },
    );
    check(&["--ports", "p:80:8080", "--publish-mode", "host"], |s| {
        s.endpoint = endpoint(vec![port(80, 8080, PublishMode::Host)])
    });
    // An update with the mode alone switches the ports the service has.
    let mut published = new_create_spec();
    published.endpoint = endpoint(vec![port(80, 8080, PublishMode::Host)]);
    let updated = run(&["--publish-mode", "INGRESS"], published).expect("valid flags");
    assert_eq!(
        updated.endpoint,
        endpoint(vec![port(80, 8080, PublishMode::Ingress)])
    );
    // New ports of an update keep the mode the service's ports had.
    let mut ingress = new_create_spec();
    ingress.endpoint = endpoint(vec![port(80, 8080, PublishMode::Ingress)]);
    let updated = run(&["--ports", "p:81:9090"], ingress).expect("valid flags");
    assert_eq!(
        updated.endpoint,
        endpoint(vec![port(81, 9090, PublishMode::Ingress)])
    );
    // The mode with no port to apply to is refused, not ignored.
    check_err(
        &["--publish-mode", "ingress"],
        "--publish-mode needs published ports (--ports)",
    );
    check_err(
        &["--ports", "p:80", "--publish-mode", "global"],
        "invalid publish mode \"global\": want \"host\" or \"ingress\"",
    );
}

#[test]
fn memory_and_cpu() {
    check(
        &[
            "--memory-reservation",
            "512m",
            "--memory-limit",
            "1g",
            "--cpu-reservation",
            "0.5",
            "--cpu-limit",
            "2",
        ],
        |s| {
            task(s).resources = Some(Box::new(api::ResourceRequirements {
                reservations: Some(api::Resources {
                    nano_cpus: 500_000_000,
                    memory_bytes: 512 << 20,
                    generic: vec![],
                }),
                limits: Some(api::Resources {
                    nano_cpus: 2_000_000_000,
                    memory_bytes: 1 << 30,
                    generic: vec![],
                }),
                ..Default::default()
            }))
        },
    );
    check_err(&["--memory-limit", "1q"], "invalid suffix: 'q'");
    check_err(&["--memory-reservation", "lots"], "invalid size: 'lots'");
    check_err(&["--cpu-limit", "x"], "invalid cpu: x");
    check_err(
        &["--cpu-limit", "0.1234567891"],
        "CPU value cannot have more than 9 decimal places: 0.1234567891",
    );
}

#[test]
fn generic_resources_go_to_reservations() {
    check(&["--generic-resources", "gpu=2"], |s| {
        reservations(s).generic = vec![api::GenericResource {
            resource: Some(api::generic_resource::Resource::DiscreteResourceSpec(
                api::DiscreteGenericResource {
                    kind: "gpu".into(),
                    value: 2,
                },
            )),
        }]
    });
    check_err(
        &["--generic-resources", "gpu=x"],
        "invalid argument for resource gpu",
    );
}

#[test]
fn ulimits() {
    check(&["--ulimit", "nofile=1024:2048,nproc=10"], |s| {
        c(s).ulimits = vec![
            api::container_spec::Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048,
            },
            api::container_spec::Ulimit {
                name: "nproc".into(),
                soft: 10,
                hard: 10,
            },
        ]
    });
    check_err(&["--ulimit", "bogus=1"], "invalid ulimit type: bogus");
    check_err(&["--ulimit", "nofile"], "invalid ulimit argument: nofile");
}

#[test]
fn restart_policy() {
    use api::restart_policy::RestartCondition;
    check(
        &[
            "--restart-condition",
            "failure",
            "--restart-delay",
            "10s",
            "--restart-max-attempts",
            "3",
            "--restart-window",
            "1m",
        ],
        |s| {
            task(s).restart = Some(Box::new(api::RestartPolicy {
                condition: RestartCondition::OnFailure as i32,
                delay: secs(10),
                max_attempts: 3,
                window: secs(60),
            }))
        },
    );
    check(&["--restart-condition", "none"], |s| {
        task(s).restart.as_mut().expect("set").condition = RestartCondition::None as i32
    });
    check(&["--restart-delay=-5s"], |s| {
        task(s).restart.as_mut().expect("set").delay = secs(-5)
    });
    check_err(
        &["--restart-condition", "always"],
        "invalid restart condition: always",
    );
    check_err(
        &["--restart-delay", "5"],
        "time: missing unit in duration \"5\"",
    );
    check_err(&["--restart-window", "x"], "time: invalid duration \"x\"");
    // An existing policy is kept and only changed where asked.
    let mut start = new_create_spec();
    task(&mut start).restart = Some(Box::new(api::RestartPolicy {
        condition: RestartCondition::None as i32,
        delay: secs(7),
        ..Default::default()
    }));
    let got = run(&["--restart-max-attempts", "2"], start).expect("ok");
    assert_eq!(
        got.task.expect("set").restart,
        Some(Box::new(api::RestartPolicy {
            condition: RestartCondition::None as i32,
            delay: secs(7),
            max_attempts: 2,
            window: None
        }))
    );
}

#[test]
fn update_and_rollback_configs() {
    use api::update_config::{FailureAction, UpdateOrder};
    check(
        &[
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-on-failure",
            "rollback",
            "--update-order",
            "start-first",
        ],
        |s| {
            s.update = Some(api::UpdateConfig {
                parallelism: 2,
                delay: secs(10),
                failure_action: FailureAction::Rollback as i32,
                order: UpdateOrder::StartFirst as i32,
                ..Default::default()
            })
        },
    );
    check(&["--update-parallelism", "0"], |s| {
        s.update = Some(api::UpdateConfig::default())
    });
    check(
        &[
            "--rollback-parallelism",
            "1",
            "--rollback-delay",
            "1s",
            "--rollback-on-failure",
            "continue",
            "--rollback-order",
            "stop-first",
        ],
        |s| {
            s.rollback = Some(api::UpdateConfig {
                parallelism: 1,
                delay: secs(1),
                failure_action: FailureAction::Continue as i32,
                order: UpdateOrder::StopFirst as i32,
                ..Default::default()
            })
        },
    );
    check_err(
        &["--update-on-failure", "explode"],
        "--update-on-failure value must be pause or continue",
    );
    check_err(
        &["--rollback-on-failure", "rollback"],
        "--rollback-on-failure value must be pause or continue",
    );
    check_err(
        &["--update-order", "x"],
        "--update-order value must be stop-first or start-first",
    );
    check_err(
        &["--rollback-order", "x"],
        "--rollback-order value must be stop-first or start-first",
    );
    check_err(
        &["--update-delay", "3"],
        "time: missing unit in duration \"3\"",
    );
    check_err(
        &["--rollback-parallelism", "-2"],
        "invalid argument \"-2\" for \"--rollback-parallelism\" flag: strconv.ParseUint: parsing \"-2\": invalid syntax",
    );
}

#[test]
fn constraints_and_max_replicas() {
    check(
        &[
            "--constraint",
            "node.role==manager,node.labels.a!=b",
            "--replicas-max-per-node",
            "2",
        ],
        |s| {
            task(s).placement = Some(Box::new(api::Placement {
                constraints: strings(&["node.role==manager", "node.labels.a!=b"]),
                max_replicas: 2,
                ..Default::default()
            }))
        },
    );
    check_err(
        &["--mode", "global", "--replicas-max-per-node", "1"],
        "--replicas-max-per-node can only be specified in --mode replicated",
    );
}

#[test]
fn bind_volume_npipe_mounts() {
    use api::mount::Type;
    check(
        &[
            "--bind",
            "/src:/dst",
            "--volume",
            "/data",
            "--npipe",
            "\\\\.\\pipe\\a:\\\\.\\pipe\\b",
        ],
        |s| {
            c(s).mounts = vec![
                mount(Type::Bind, "/src", "/dst"),
                mount(Type::Volume, "", "/data"),
                mount(Type::Npipe, "\\\\.\\pipe\\a", "\\\\.\\pipe\\b"),
            ]
        },
    );
    check(&["--bind", "/a:/b:ro"], |s| {
        c(s).mounts = vec![mount(Type::Bind, "/a", "/b:ro")]
    });
    check_err(&["--bind", "/src"], "bind format \"/src\" not supported");
    check_err(
        &["--volume", "a:/b"],
        "volume format \"a:/b\" not supported",
    );
    check_err(&["--npipe", "x"], "npipe format \"x\" not supported");
    // Mounts are added to the existing ones.
    let mut start = base();
    c(&mut start).mounts = vec![mount(Type::Volume, "", "/old")];
    let got = run(&["--volume", "/new"], start).expect("ok");
    let mut got = got;
    assert_eq!(
        c(&mut got).mounts,
        vec![
            mount(Type::Volume, "", "/old"),
            mount(Type::Volume, "", "/new")
        ]
    );
}

#[test]
fn tmpfs_mounts() {
    use api::mount::{TmpfsOptions, Type};
    let tmpfs = |target: &str, ro: bool, opts: Option<TmpfsOptions>| api::Mount {
        readonly: ro,
        tmpfs_options: opts,
        ..mount(Type::Tmpfs, "", target)
    };
    check(&["--tmpfs", "/tmp"], |s| {
        c(s).mounts = vec![tmpfs("/tmp", false, None)]
    });
    check(
        &[
            "--tmpfs",
            "/a:size=10m",
            "--tmpfs",
            "/b:mode=1777",
            "--tmpfs",
            "/c:ro",
            "--tmpfs",
            "/d:noexec",
        ],
        |s| {
            c(s).mounts = vec![
                tmpfs(
                    "/a",
                    false,
                    Some(TmpfsOptions {
                        size_bytes: 10 << 20,
                        ..Default::default()
                    }),
                ),
                tmpfs(
                    "/b",
                    false,
                    Some(TmpfsOptions {
                        mode: 0o1777,
                        ..Default::default()
                    }),
                ),
                tmpfs("/c", true, Some(TmpfsOptions::default())),
                tmpfs(
                    "/d",
                    false,
                    Some(TmpfsOptions {
                        options: "noexec".into(),
                        ..Default::default()
                    }),
                ),
            ]
        },
    );
    // A quoted list keeps its commas and reaches the option parser whole.
    check(&["--tmpfs", "\"/e:size=4096,ro,exec\""], |s| {
        c(s).mounts = vec![tmpfs(
            "/e",
            true,
            Some(TmpfsOptions {
                size_bytes: 4096,
                options: "exec".into(),
                ..Default::default()
            }),
        )]
    });
    check(&["--tmpfs", "/f:size=2k"], |s| {
        c(s).mounts = vec![tmpfs(
            "/f",
            false,
            Some(TmpfsOptions {
                size_bytes: 2048,
                ..Default::default()
            }),
        )]
    });
    // An unquoted comma makes a second, relative, declaration.
    check_err(&["--tmpfs", "/tmp:size=1m,ro"], "invalid mount spec: ro");
    check_err(&["--tmpfs", "tmp"], "invalid mount spec: tmp");
    check(&["--tmpfs", ""], |_| {});
    check_err(&["--tmpfs", "\"\""], "invalid mount spec: ");
    check_err(&["--tmpfs", "/a:b:c"], "invalid mount spec: /a:b:c");
    check_err(&["--tmpfs", "/a:size=10q"], "invalid size format: size=10q");
    check_err(&["--tmpfs", "/a:size="], "invalid size format: size=");
    check_err(
        &["--tmpfs", "/a:size=xm"],
        "strconv.ParseInt: parsing \"x\": invalid syntax",
    );
    check_err(
        &["--tmpfs", "/a:mode=9"],
        "strconv.ParseInt: parsing \"9\": invalid syntax",
    );
    check_err(&["--tmpfs", "/a:bogus"], "unsupported flag");
}

#[test]
fn log_driver() {
    check(
        &[
            "--log-driver",
            "json-file",
            "--log-opt",
            "max-size=10m,compress",
        ],
        |s| {
            task(s).log_driver = Some(Box::new(api::Driver {
                name: "json-file".into(),
                options: BTreeMap::from([
                    ("max-size".to_string(), "10m".to_string()),
                    ("compress".to_string(), String::new()),
                ]),
            }))
        },
    );
    // Options without a driver are ignored, as in SwarmKit.
    check(&["--log-opt", "a=b"], |_| {});
}

#[test]
fn network_replaces_attachments() {
    let mut s = base();
    task(&mut s).networks = vec![api::NetworkAttachmentConfig {
        target: "old".into(),
        ..Default::default()
    }];
    apply_network(&mut s, "K1");
    assert_eq!(
        task(&mut s).networks,
        vec![api::NetworkAttachmentConfig {
            target: "K1".into(),
            ..Default::default()
        }]
    );
}

#[test]
fn force_increments_force_update() {
    let mut s = base();
    task(&mut s).force_update = 4;
    merge_head(&ServiceFlags::default(), None, true, &mut s).expect("ok");
    assert_eq!(task(&mut s).force_update, 5);
}

#[test]
fn references() {
    assert_eq!(parse_reference("a", "secret"), Ok(("a".into(), "a".into())));
    assert_eq!(
        parse_reference(" a : t.txt ", "secret"),
        Ok(("a".into(), "t.txt".into()))
    );
    assert_eq!(
        parse_reference("a:t:x", "config"),
        Ok(("a".into(), "t".into()))
    );
    assert_eq!(
        parse_reference(":t", "secret"),
        Err("invalid secret name provided".into())
    );
    assert_eq!(
        parse_reference(" ", "config"),
        Err("invalid config name provided".into())
    );
    assert_eq!(
        parse_reference("a: ", "secret"),
        Err("invalid presentation name provided".into())
    );
}

/// The references of flag occurrences written as on the command line.
fn refs(occurrences: &[&str], kind: &str) -> Result<Vec<Reference>> {
    let given = Some(strings(occurrences));
    let records = record_flag(&given, "--flag")?.expect("given");
    parse_references(&records, kind)
}

fn reference(name: &str, target: &str, uid: &str, gid: &str, mode: u32) -> Reference {
    Reference {
        name: name.into(),
        file: api::FileTarget {
            name: target.into(),
            uid: uid.into(),
            gid: gid.into(),
            mode,
        },
    }
}

#[test]
fn references_short_and_long() {
    // SwarmKit's form: a CSV list of name[:target], mode 0444, uid and gid unset.
    assert_eq!(
        refs(&["a,b:t.txt", "c"], "secret"),
        Ok(vec![
            reference("a", "a", "", "", 0o444),
            reference("b", "t.txt", "", "", 0o444),
            reference("c", "c", "", "", 0o444),
        ])
    );
    // Ours: one reference per occurrence with key=value fields, the short form's defaults.
    assert_eq!(
        refs(
            &[
                "source=a,target=/etc/a.pem,uid=1000,gid=50,mode=0400",
                "src=b",
                "c:x"
            ],
            "secret"
        ),
        Ok(vec![
            reference("a", "/etc/a.pem", "1000", "50", 0o400),
            reference("b", "b", "", "", 0o444),
            reference("c", "x", "", "", 0o444),
        ])
    );
    assert_eq!(
        refs(&["source=cfg,mode=644"], "config"),
        Ok(vec![reference("cfg", "cfg", "", "", 0o644)])
    );
    for (given, err) in [
        (&["target=x"][..], "invalid secret name provided"),
        (&["source=a,target="], "invalid presentation name provided"),
        (
            &["a,source=b"],
            "invalid field 'a' in a secret reference: expected key=value",
        ),
        (
            &["source=a,owner=me"],
            "invalid field 'owner' in a secret reference: expected source, target, uid, gid or mode",
        ),
        (
            &["source=a,uid=root"],
            "invalid uid 'root' in a secret reference: expected a number",
        ),
        (
            &["source=a,gid=-1"],
            "invalid gid '-1' in a secret reference: expected a number",
        ),
        (
            &["source=a,mode=0999"],
            "invalid mode '0999' in a secret reference: expected octal permissions up to 0777",
        ),
        (
            &["source=a,mode=4755"],
            "invalid mode '4755' in a secret reference: expected octal permissions up to 0777",
        ),
        (
            &["a:../x"],
            "malformed file secret reference, invalid target file name provided: '../x' contains a '..' component",
        ),
        (
            &["source=a,target=/run/../x"],
            "malformed file secret reference, invalid target file name provided: '/run/../x' contains a '..' component",
        ),
    ] {
        assert_eq!(refs(given, "secret"), Err(err.into()), "{given:?}");
    }
    for (given, err) in [
        (&["c:a/../x"][..], "'a/../x' contains a '..' component"),
        (
            &["source=d,target=/etc/../x"],
            "'/etc/../x' contains a '..' component",
        ),
        (&["c:."], "'.' names no file"),
        (&["c:/"], "'/' names no file"),
    ] {
        assert_eq!(
            refs(given, "config"),
            Err(format!(
                "malformed file config reference, invalid target file name provided: {err}"
            )
            .into()),
            "{given:?}"
        );
    }
    // A `=` in SwarmKit's short form is part of the target, not a long-form key.
    assert_eq!(
        refs(&["s:a=b", "t:x=1,u"], "secret"),
        Ok(vec![
            reference("s", "a=b", "", "", 0o444),
            reference("t", "x=1", "", "", 0o444),
            reference("u", "u", "", "", 0o444),
        ])
    );
}

#[test]
fn secrets_resolve_by_name() {
    let mut s = base();
    let found = BTreeMap::from([("db".to_string(), "X1".to_string())]);
    add_secrets(
        &mut s,
        &[reference("db", "target.txt", "", "", 0o444)],
        &found,
    )
    .expect("found");
    assert_eq!(
        c(&mut s).secrets,
        vec![api::SecretReference {
            secret_id: "X1".into(),
            secret_name: "db".into(),
            target: Some(api::secret_reference::Target::File(api::FileTarget {
                name: "target.txt".into(),
                uid: String::new(),
                gid: String::new(),
                mode: 0o444,
            })),
        }]
    );
    assert_eq!(
        add_secrets(&mut s, &[reference("nope", "nope", "", "", 0o444)], &found),
        Err("secret not found: nope".into())
    );
    remove_secrets(&mut s, &["db".into()]);
    assert!(c(&mut s).secrets.is_empty());
}

#[test]
fn configs_resolve_by_name() {
    let mut s = base();
    let found = BTreeMap::from([("cfg".to_string(), "C1".to_string())]);
    add_configs(&mut s, &[reference("cfg", "cfg", "1", "2", 0o440)], &found).expect("found");
    assert_eq!(c(&mut s).configs.len(), 1);
    assert_eq!(c(&mut s).configs[0].config_id, "C1");
    assert_eq!(
        c(&mut s).configs[0].target,
        Some(api::config_reference::Target::File(api::FileTarget {
            name: "cfg".into(),
            uid: "1".into(),
            gid: "2".into(),
            mode: 0o440,
        }))
    );
    assert_eq!(
        add_configs(&mut s, &[reference("x", "x", "", "", 0o444)], &found),
        Err("config not found: x".into())
    );
    remove_configs(&mut s, &["other".into()]);
    assert_eq!(c(&mut s).configs.len(), 1);
    remove_configs(&mut s, &["cfg".into()]);
    assert!(c(&mut s).configs.is_empty());
}

#[test]
fn capabilities_move_between_lists() {
    let mut s = base();
    c(&mut s).capability_add = strings(&["CAP_A"]);
    c(&mut s).capability_drop = strings(&["CAP_B", "CAP_C"]);
    add_capabilities(&mut s, &strings(&["CAP_B", "CAP_A", "CAP_D"]));
    assert_eq!(
        c(&mut s).capability_add,
        strings(&["CAP_A", "CAP_B", "CAP_D"])
    );
    assert_eq!(c(&mut s).capability_drop, strings(&["CAP_C"]));
    drop_capabilities(&mut s, &strings(&["CAP_A", "CAP_C", "CAP_E"]));
    assert_eq!(c(&mut s).capability_add, strings(&["CAP_B", "CAP_D"]));
    assert_eq!(
        c(&mut s).capability_drop,
        strings(&["CAP_C", "CAP_A", "CAP_E"])
    );
}

#[test]
fn same_spec_treats_unset_delays_as_zero() {
    let mut a = base();
    a.update = Some(api::UpdateConfig::default());
    let mut b = a.clone();
    b.update.as_mut().expect("set").delay = secs(0);
    assert!(same_spec(&a, &b));
    b.update.as_mut().expect("set").delay = secs(1);
    assert!(!same_spec(&a, &b));
}

#[test]
fn errors_follow_swarmkit_order() {
    // Container flags are applied before ports, ports before restart.
    check_err(
        &["--ports", "80", "--tty=x"],
        "invalid argument \"x\" for \"--tty\" flag: strconv.ParseBool: parsing \"x\": invalid syntax",
    );
    check_err(
        &["--restart-condition", "x", "--ports", "80"],
        "insufficient parameters in port configuration",
    );
}
