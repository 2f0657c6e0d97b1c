//! IPAM unit tests: default pool subnets, user subnets, ranges and gateways, addresses handed out
//! serially, exhaustion, release and reuse, restore.

use super::*;

fn overlay(id: &str) -> api::Network {
    api::Network {
        id: id.into(),
        spec: Some(api::NetworkSpec {
            driver_config: Some(api::Driver {
                name: "overlay".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An overlay network asking for subnets `(subnet, range, gateway)`.
fn user(id: &str, configs: &[(&str, &str, &str)]) -> api::Network {
    let mut n = overlay(id);
    n.spec.as_mut().expect("spec").ipam = Some(api::IpamOptions {
        driver: None,
        configs: configs
            .iter()
            .map(|(subnet, range, gateway)| api::IpamConfig {
                family: FAMILY_IPV4,
                subnet: subnet.to_string(),
                range: range.to_string(),
                gateway: gateway.to_string(),
                ..Default::default()
            })
            .collect(),
    });
    n
}

/// `(subnet, gateway)` of each config of an allocated IPAM state.
fn subnets(ipam: &api::IpamOptions) -> Vec<(String, String)> {
    ipam.configs
        .iter()
        .map(|c| (c.subnet.clone(), c.gateway.clone()))
        .collect()
}

fn pair(subnet: &str, gateway: &str) -> (String, String) {
    (subnet.to_string(), gateway.to_string())
}

fn small_pool(base: &str, size: u32) -> Ipam {
    Ipam::new(PoolConfig::new(&[base.to_string()], size).expect("pool"))
}

#[test]
fn default_pool_hands_out_24s_from_10_0_0_0_with_the_first_address_as_gateway() {
    let mut ipam = Ipam::default();
    let a = ipam.allocate_network(&overlay("a")).expect("a");
    let driver = a.driver.as_ref().expect("driver");
    assert_eq!(driver.name, "default");
    assert_eq!(a.configs[0].family, FAMILY_IPV4);
    assert_eq!(subnets(&a), [pair("10.0.0.0/24", "10.0.0.1")]);
    let b = ipam.allocate_network(&overlay("b")).expect("b");
    assert_eq!(subnets(&b), [pair("10.0.1.0/24", "10.0.1.1")]);
    assert!(matches!(
        ipam.allocate_network(&overlay("b")),
        Err(IpamError::NetworkAlreadyAllocated { .. })
    ));
}

#[test]
fn default_subnets_skip_user_subnets_and_wrap_around_to_released_ones() {
    let mut ipam = small_pool("10.9.0.0/22", 24);
    ipam.allocate_network(&user("u", &[("10.9.1.128/25", "", "")]))
        .expect("user subnet inside the pool");
    let a = ipam.allocate_network(&overlay("a")).expect("a");
    assert_eq!(subnets(&a)[0].0, "10.9.0.0/24");
    let b = ipam.allocate_network(&overlay("b")).expect("b");
    assert_eq!(subnets(&b)[0].0, "10.9.2.0/24", "10.9.1.0/24 overlaps u");
    assert!(ipam.release_network("a"));
    assert!(!ipam.release_network("a"));
    // Serial: the freed 10.9.0.0/24 waits until the search wraps around.
    let c = ipam.allocate_network(&overlay("c")).expect("c");
    assert_eq!(subnets(&c)[0].0, "10.9.3.0/24");
    let d = ipam.allocate_network(&overlay("d")).expect("d");
    assert_eq!(subnets(&d)[0].0, "10.9.0.0/24");
    let err = ipam.allocate_network(&overlay("e")).expect_err("exhausted");
    assert_eq!(err, IpamError::PoolExhausted);
    assert_eq!(
        err.to_string(),
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    );
    assert!(!ipam.is_allocated("e"));
    assert!(ipam.release_network("u"));
    let e = ipam
        .allocate_network(&overlay("e"))
        .expect("e after u is gone");
    assert_eq!(subnets(&e)[0].0, "10.9.1.0/24");
}

#[test]
fn a_whole_default_pool_of_65536_subnets_is_exhausted_and_searched_cheaply() {
    let mut ipam = Ipam::default();
    for i in 0..65536u32 {
        let n = ipam
            .allocate_network(&overlay(&format!("n{i}")))
            .expect("a /24 left");
        assert_eq!(
            n.configs[0].subnet,
            format!("10.{}.{}.0/24", i >> 8, i & 255)
        );
    }
    assert_eq!(
        ipam.allocate_network(&overlay("x")),
        Err(IpamError::PoolExhausted)
    );
    // A user /9 covering half the pool: the search skips the covered half at once.
    let mut ipam = Ipam::default();
    ipam.allocate_network(&user("half", &[("10.0.0.0/9", "", "")]))
        .expect("half");
    let n = ipam.allocate_network(&overlay("n")).expect("n");
    assert_eq!(n.configs[0].subnet, "10.128.0.0/24");
}

#[test]
fn the_cluster_pool_and_subnet_size_are_respected() {
    let cluster = api::Cluster {
        default_address_pool: vec!["172.20.0.0/16".into(), "10.10.0.0/16".into()],
        subnet_size: 20,
        ..Default::default()
    };
    let pools = PoolConfig::from_cluster(&cluster).expect("valid");
    assert_eq!(pools.pools(), ["172.20.0.0/16", "10.10.0.0/16"]);
    assert_eq!(pools.subnet_size(), 20);
    let mut ipam = Ipam::new(pools);
    for want in ["172.20.0.0/20", "172.20.16.0/20"] {
        let n = ipam.allocate_network(&overlay(want)).expect(want);
        assert_eq!(n.configs[0].subnet, want);
    }
    for i in 2..16 {
        ipam.allocate_network(&overlay(&i.to_string()))
            .expect("first base");
    }
    let n = ipam
        .allocate_network(&overlay("second"))
        .expect("second base");
    assert_eq!(subnets(&n), [pair("10.10.0.0/20", "10.10.0.1")]);
    // An unset pool is the built-in one.
    let default = PoolConfig::from_cluster(&api::Cluster::default()).expect("default");
    assert_eq!(default, PoolConfig::default());
    assert_eq!(default.pools(), ["10.0.0.0/8"]);
    assert_eq!(default.subnet_size(), 24);
}

#[test]
fn bad_default_pools_are_refused() {
    let check = |pools: &[&str], size: u32, want: &str| {
        let pools: Vec<String> = pools.iter().map(|p| p.to_string()).collect();
        let err = PoolConfig::new(&pools, size).expect_err(want);
        assert_eq!(err.to_string(), want);
    };
    check(&["bogus"], 24, "invalid base pool \"bogus\"");
    check(
        &["fd00::/48"],
        64,
        "default address pool fd00::/48 is not IPv4",
    );
    check(
        &["10.0.0.0/16"],
        8,
        "invalid pools size: default address pool 10.0.0.0/16 cannot be cut into /8 subnets",
    );
    check(
        &["10.0.0.0/16"],
        33,
        "invalid pools size: default address pool 10.0.0.0/16 cannot be cut into /33 subnets",
    );
    check(
        &["0.0.0.0/0"],
        32,
        "invalid pools size: default address pool 0.0.0.0/0 cannot be cut into /32 subnets",
    );
    check(&[], 24, "invalid base pool \"\"");
    // 0 means 24, as Docker's swarm init has it.
    let p = PoolConfig::new(&["10.0.0.0/8".into()], 0).expect("valid");
    assert_eq!(p.subnet_size(), 24);
}

#[test]
fn user_subnets_keep_what_was_written_and_get_a_gateway() {
    let mut ipam = Ipam::default();
    let n = ipam
        .allocate_network(&user(
            "n",
            &[
                ("10.1.0.0/16", "", "10.1.0.254"),
                ("192.168.5.7/24", "", ""),
            ],
        ))
        .expect("n");
    assert_eq!(
        subnets(&n),
        [
            pair("10.1.0.0/16", "10.1.0.254"),
            pair("192.168.5.7/24", "192.168.5.1"),
        ]
    );
    // Addresses skip the gateway.
    let addrs: Vec<String> = (0..3)
        .map(|_| ipam.allocate_address("n", None).expect("address"))
        .collect();
    assert_eq!(addrs, ["10.1.0.1/16", "10.1.0.2/16", "10.1.0.3/16"]);
}

#[test]
fn a_range_serves_the_gateway_and_the_addresses() {
    let mut ipam = Ipam::default();
    let n = ipam
        .allocate_network(&user("n", &[("10.1.0.0/16", "10.1.2.0/30", "")]))
        .expect("n");
    // libnetwork takes the gateway from the range, whose first address is not reserved.
    assert_eq!(subnets(&n), [pair("10.1.0.0/16", "10.1.2.0")]);
    assert_eq!(n.configs[0].range, "10.1.2.0/30");
    for want in ["10.1.2.1/16", "10.1.2.2/16", "10.1.2.3/16"] {
        assert_eq!(ipam.allocate_address("n", None).expect(want), want);
    }
    assert_eq!(
        ipam.allocate_address("n", None),
        Err(IpamError::NoAvailableAddress {
            network_id: "n".into()
        })
    );
    // A requested address may lie outside the range, inside the subnet.
    assert_eq!(
        ipam.allocate_address("n", Some("10.1.9.9"))
            .expect("outside the range"),
        "10.1.9.9/16"
    );
}

#[test]
fn bad_user_configs_are_refused_and_hold_nothing() {
    let mut ipam = Ipam::default();
    ipam.allocate_network(&user("a", &[("10.1.0.0/16", "", "")]))
        .expect("a");
    let check = |ipam: &mut Ipam, configs: &[(&str, &str, &str)], want: &str| {
        let err = ipam.allocate_network(&user("b", configs)).expect_err(want);
        assert_eq!(err.to_string(), want);
        assert!(!ipam.is_allocated("b"));
    };
    check(
        &mut ipam,
        &[("10.1.128.0/24", "", "")],
        "subnet 10.1.128.0/24 overlaps with subnet 10.1.0.0/16 of network a",
    );
    check(
        &mut ipam,
        &[("10.0.0.0/8", "", "")],
        "subnet 10.0.0.0/8 overlaps with subnet 10.1.0.0/16 of network a",
    );
    check(
        &mut ipam,
        &[("10.2.0.0/16", "", ""), ("10.2.1.0/24", "", "")],
        "subnet 10.2.1.0/24 overlaps with subnet 10.2.0.0/16 of network b",
    );
    check(&mut ipam, &[("bogus", "", "")], "invalid subnet bogus");
    check(&mut ipam, &[("10.3.0.0/16", "x", "")], "invalid range x");
    check(
        &mut ipam,
        &[("10.3.0.0/16", "10.4.0.0/24", "")],
        "subnet 10.3.0.0/16 does not contain range 10.4.0.0/24",
    );
    check(
        &mut ipam,
        &[("10.3.0.0/16", "10.3.0.0/8", "")],
        "subnet 10.3.0.0/16 does not contain range 10.3.0.0/8",
    );
    check(&mut ipam, &[("10.3.0.0/16", "", "x")], "invalid gateway x");
    check(
        &mut ipam,
        &[("10.3.0.0/16", "", "10.4.0.1")],
        "subnet 10.3.0.0/16 does not contain gateway 10.4.0.1",
    );
    check(
        &mut ipam,
        &[("10.3.0.0/16", "", "10.3.255.255")],
        "gateway 10.3.255.255 is the network or broadcast address of subnet 10.3.0.0/16",
    );
    check(
        &mut ipam,
        &[("10.3.0.0/16", "", "10.3.0.0")],
        "gateway 10.3.0.0 is the network or broadcast address of subnet 10.3.0.0/16",
    );
    // The first config of the failed network was given back.
    ipam.allocate_network(&user("c", &[("10.2.0.0/16", "", "")]))
        .expect("10.2.0.0/16 is free again");
    let mut plugin = overlay("p");
    plugin.spec.as_mut().expect("spec").ipam = Some(api::IpamOptions {
        driver: Some(api::Driver {
            name: "weave".into(),
            ..Default::default()
        }),
        configs: Vec::new(),
    });
    assert_eq!(
        ipam.allocate_network(&plugin)
            .expect_err("plugin")
            .to_string(),
        "could not resolve IPAM driver weave"
    );
}

#[test]
fn addresses_are_serial_wrap_around_and_never_the_reserved_ones() {
    let mut ipam = Ipam::default();
    ipam.allocate_network(&user("n", &[("10.5.0.0/29", "", "")]))
        .expect("n");
    // .0 network, .1 gateway, .7 broadcast: .2 to .6 are free.
    let mut got: Vec<String> = (0..5)
        .map(|_| ipam.allocate_address("n", None).expect("address"))
        .collect();
    assert_eq!(
        got,
        [
            "10.5.0.2/29",
            "10.5.0.3/29",
            "10.5.0.4/29",
            "10.5.0.5/29",
            "10.5.0.6/29"
        ]
    );
    assert!(matches!(
        ipam.allocate_address("n", None),
        Err(IpamError::NoAvailableAddress { .. })
    ));
    assert!(ipam.release_address("n", "10.5.0.3/29"));
    assert!(!ipam.release_address("n", "10.5.0.3/29"));
    assert!(ipam.release_address("n", "10.5.0.5"));
    // The search goes on after .6, wraps, and finds .3 first.
    got = (0..2)
        .map(|_| ipam.allocate_address("n", None).expect("reused"))
        .collect();
    assert_eq!(got, ["10.5.0.3/29", "10.5.0.5/29"]);
    // Reserved addresses are never freed nor handed out.
    for reserved in ["10.5.0.0", "10.5.0.1/29", "10.5.0.7"] {
        assert!(!ipam.release_address("n", reserved), "{reserved}");
        assert!(matches!(
            ipam.allocate_address("n", Some(reserved)),
            Err(IpamError::AddressReserved { .. })
        ));
    }
}

#[test]
fn the_networks_an_address_was_freed_on_are_reported_once() {
    let mut ipam = Ipam::default();
    ipam.allocate_network(&overlay("n")).expect("n");
    ipam.allocate_network(&overlay("m")).expect("m");
    let a = ipam.allocate_address("n", None).expect("a");
    assert!(ipam.take_freed().is_empty());
    assert!(!ipam.release_address("m", "10.0.1.9"));
    assert!(ipam.take_freed().is_empty());
    assert!(ipam.release_address("n", &a));
    assert_eq!(ipam.take_freed(), BTreeSet::from(["n".to_string()]));
    assert!(ipam.take_freed().is_empty());
}

#[test]
fn a_released_address_waits_until_the_search_wraps() {
    let mut ipam = Ipam::default();
    ipam.allocate_network(&overlay("n")).expect("n");
    let a = ipam.allocate_address("n", None).expect("a");
    assert_eq!(a, "10.0.0.2/24");
    assert!(ipam.release_address("n", &a));
    assert_eq!(ipam.allocate_address("n", None).expect("b"), "10.0.0.3/24");
}

#[test]
fn requested_and_reserved_addresses() {
    let mut ipam = Ipam::default();
    ipam.allocate_network(&user(
        "n",
        &[("10.6.0.0/24", "", ""), ("10.7.0.0/24", "", "")],
    ))
    .expect("n");
    assert_eq!(
        ipam.allocate_address("n", Some("10.7.0.9/24"))
            .expect("second subnet"),
        "10.7.0.9/24"
    );
    ipam.reserve_address("n", "10.6.0.5/24").expect("restore");
    assert_eq!(
        ipam.reserve_address("n", "10.6.0.5"),
        Err(IpamError::AddressInUse {
            address: "10.6.0.5".into(),
            network_id: "n".into()
        })
    );
    assert_eq!(
        ipam.allocate_address("n", Some("10.8.0.1"))
            .expect_err("out of range")
            .to_string(),
        "requested address 10.8.0.1 is out of range of network n"
    );
    assert!(matches!(
        ipam.allocate_address("n", Some("nonsense")),
        Err(IpamError::InvalidAddress { .. })
    ));
    assert!(matches!(
        ipam.allocate_address("gone", None),
        Err(IpamError::NetworkNotAllocated { .. })
    ));
    // Serial allocation is not moved by a requested address.
    assert_eq!(
        ipam.allocate_address("n", None).expect("next"),
        "10.6.0.2/24"
    );
    // The first subnet full (.3 to .254 but .5), the next one serves.
    for _ in 0..251 {
        if ipam
            .allocate_address("n", None)
            .expect("first")
            .starts_with("10.7.")
        {
            panic!("second subnet used before the first was full");
        }
    }
    assert_eq!(
        ipam.allocate_address("n", None).expect("second"),
        "10.7.0.2/24"
    );
}

#[test]
fn thousands_of_addresses_in_a_16_stay_a_few_runs() {
    let mut ipam = Ipam::default();
    ipam.allocate_network(&user("n", &[("10.20.0.0/16", "", "")]))
        .expect("n");
    for i in 0..5000u32 {
        let a = ipam.allocate_address("n", None).expect("address");
        let n = i + 2;
        assert_eq!(a, format!("10.20.{}.{}/16", n >> 8, n & 255));
    }
    let pool = &ipam.subnets[0][&(10u128 << 24 | 20 << 16)];
    assert_eq!(
        pool.used.runs(),
        2,
        "network..last handed out, and broadcast"
    );
    for i in (2..5002u32).step_by(2) {
        assert!(ipam.release_address("n", &format!("10.20.{}.{}", i >> 8, i & 255)));
    }
    assert_eq!(
        ipam.allocate_address("n", None).expect("after"),
        "10.20.19.138/16"
    );
}

#[test]
fn restore_rebuilds_subnets_gateways_and_then_addresses() {
    let mut first = Ipam::default();
    let mut a = overlay("a");
    a.ipam = Some(first.allocate_network(&a).expect("a"));
    let mut b = user("b", &[("10.0.1.0/24", "10.0.1.128/25", "")]);
    b.ipam = Some(first.allocate_network(&b).expect("b"));
    assert_eq!(
        subnets(b.ipam.as_ref().expect("ipam")),
        [pair("10.0.1.0/24", "10.0.1.128")]
    );

    let mut second = Ipam::default();
    second.restore_network(&a).expect("restore a");
    second.restore_network(&b).expect("restore b");
    second
        .reserve_address("a", "10.0.0.2/24")
        .expect("a's address");
    assert_eq!(
        second.allocate_network(&overlay("c")).expect("c").configs[0].subnet,
        "10.0.2.0/24",
        "restored subnets are not handed out again"
    );
    assert_eq!(
        second.allocate_address("a", None).expect("next"),
        "10.0.0.3/24"
    );
    assert!(matches!(
        second.allocate_address("b", Some("10.0.1.128")),
        Err(IpamError::AddressReserved { .. })
    ));
    // A network without stored IPAM state cannot be restored.
    assert!(matches!(
        second.restore_network(&overlay("d")),
        Err(IpamError::NetworkNotAllocated { .. })
    ));
}

#[test]
fn node_local_networks_are_not_ipam_managed() {
    let mut ipam = Ipam::default();
    for driver in ["bridge", "host", "macvlan", "ipvlan"] {
        let mut n = overlay(driver);
        n.spec
            .as_mut()
            .expect("spec")
            .driver_config
            .as_mut()
            .expect("driver")
            .name = driver.into();
        assert!(!is_ipam_managed(&n));
        let state = ipam.allocate_network(&n).expect(driver);
        assert_eq!(state.driver, Some(api::Driver::default()));
        assert!(state.configs.is_empty());
        assert!(!ipam.is_allocated(driver));
        ipam.restore_network(&n).expect("restore holds nothing");
    }
    assert!(is_ipam_managed(&overlay("o")));
    let mut unnamed = overlay("u");
    unnamed.spec.as_mut().expect("spec").driver_config = None;
    assert!(is_ipam_managed(&unnamed));
    // The default pool was not touched.
    assert_eq!(
        ipam.allocate_network(&overlay("o")).expect("o").configs[0].subnet,
        "10.0.0.0/24"
    );
}

#[test]
fn ipv6_user_subnets_work_and_reserve_only_the_network_address() {
    let mut ipam = Ipam::default();
    let mut n = user("n", &[("fd00:1::/64", "", "")]);
    n.spec
        .as_mut()
        .expect("spec")
        .ipam
        .as_mut()
        .expect("ipam")
        .configs[0]
        .family = api::ipam_config::AddressFamily::Ipv6 as i32;
    let state = ipam.allocate_network(&n).expect("n");
    assert_eq!(subnets(&state), [pair("fd00:1::/64", "fd00:1::1")]);
    assert_eq!(
        ipam.allocate_address("n", None).expect("address"),
        "fd00:1::2/64"
    );
    assert_eq!(
        ipam.allocate_address("n", Some("fd00:1::ffff:ffff:ffff:ffff"))
            .expect("last address"),
        "fd00:1::ffff:ffff:ffff:ffff/64"
    );
    assert!(matches!(
        ipam.allocate_network(&user("m", &[("fd00::/16", "", "")])),
        Err(IpamError::SubnetOverlap { .. })
    ));
}

#[test]
fn check_network_counts_stored_and_pending_networks() {
    let pools = PoolConfig::new(&["10.9.0.0/23".into()], 24).expect("pool");
    let mut stored = overlay("stored");
    stored.ipam = Some(
        Ipam::new(pools.clone())
            .allocate_network(&stored)
            .expect("stored"),
    );
    // Stored holds 10.9.0.0/24; a pending user network asks 10.9.1.0/24: the pool is full.
    let pending = user("pending", &[("10.9.1.0/24", "", "")]);
    let existing = [stored.clone(), pending];
    assert_eq!(
        check_network(&pools, &existing, &overlay("new")),
        Err(IpamError::PoolExhausted)
    );
    assert!(matches!(
        check_network(&pools, &existing, &user("new", &[("10.9.0.128/25", "", "")])),
        Err(IpamError::SubnetOverlap { ref network_id, .. }) if network_id == "stored"
    ));
    check_network(&pools, &existing, &user("new", &[("10.10.0.0/24", "", "")])).expect("elsewhere");
    // A pending default network takes the last /24 before the new one could.
    let existing = [stored, overlay("pending")];
    assert_eq!(
        check_network(&pools, &existing, &overlay("new")),
        Err(IpamError::PoolExhausted)
    );
}

#[test]
fn check_network_refuses_a_family_its_subnet_is_not_and_ipv6_without_subnet() {
    let pools = PoolConfig::default();
    let with_family = |subnet: &str, family: i32| {
        let mut n = user("new", &[(subnet, "", "")]);
        n.spec.as_mut().unwrap().ipam.as_mut().unwrap().configs[0].family = family;
        n
    };
    assert_eq!(
        check_network(&pools, &[], &with_family("", FAMILY_IPV6)),
        Err(IpamError::Ipv6NeedsSubnet)
    );
    assert_eq!(
        check_network(&pools, &[], &with_family("10.1.0.0/24", FAMILY_IPV6)),
        Err(IpamError::FamilyMismatch {
            subnet: "10.1.0.0/24".into(),
            family: "IPv6"
        })
    );
    assert_eq!(
        check_network(&pools, &[], &with_family("fd00::/64", FAMILY_IPV4)),
        Err(IpamError::FamilyMismatch {
            subnet: "fd00::/64".into(),
            family: "IPv4"
        })
    );
    check_network(&pools, &[], &with_family("fd00::/64", FAMILY_IPV6)).expect("v6");
    check_network(&pools, &[], &with_family("", 0)).expect("default");
    // The allocator names the family of the subnet it gave, whatever the config said.
    let mut ipam = Ipam::default();
    let v6 = ipam
        .allocate_network(&with_family("fd00::/64", 0))
        .expect("v6");
    assert_eq!(v6.configs[0].family, FAMILY_IPV6);
    let mut n = with_family("", 0);
    n.id = "other".into();
    let v4 = ipam.allocate_network(&n).expect("v4");
    assert_eq!(v4.configs[0].family, FAMILY_IPV4);
}
