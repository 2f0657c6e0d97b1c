//! `swarmctl network`: ls, inspect, create and remove (SwarmKit's
//! `swarmd/cmd/swarmctl/network`). Rendering and IPAM flag handling are pure functions.

use std::net::IpAddr;

use clap::{Args, Subcommand};

use crate::common::{
    CliError, CmdResult, Ctx, ListArgs, Positionals, annotations_name, emit, enum_name,
    get_network, one_arg, print_header, string_slice, usage_err,
};
use crate::tabwriter::TabWriter;

/// Network management
#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network
    #[command(override_usage = "create")]
    Create(CreateArgs),
    /// Inspect a network
    #[command(override_usage = "inspect <network ID>")]
    Inspect(Positionals),
    /// List networks
    #[command(override_usage = "ls")]
    Ls(ListArgs),
    /// Remove a network
    #[command(visible_alias = "rm", override_usage = "remove <network ID>")]
    Remove(Positionals),
}

/// Flags of `network create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Network driver
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    driver: Option<String>,
    /// Gateway IP addresses for network segments
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    gateway: Vec<String>,
    /// Create the cluster's ingress (routing mesh) network (ours; SwarmKit's API allows it,
    /// its swarmctl has no flag): remove the default one first. Hidden so that the usage text
    /// stays SwarmKit's; the README lists it
    #[arg(long, hide = true)]
    ingress: bool,
    /// IP ranges to allocate from within the subnets
    #[arg(long = "ip-range", value_name = "strings", allow_hyphen_values = true)]
    ip_range: Vec<String>,
    /// IPAM driver
    #[arg(
        long = "ipam-driver",
        value_name = "string",
        allow_hyphen_values = true
    )]
    ipam_driver: Option<String>,
    /// Network name
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    name: Option<String>,
    /// Network driver options
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    opts: Vec<String>,
    /// Subnets in CIDR format that represents a network segments
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    subnet: Vec<String>,
    #[command(flatten)]
    pos: Positionals,
}

/// Runs one network command.
pub async fn run(cmd: NetworkCommand, ctx: &mut Ctx) -> CmdResult {
    match cmd {
        NetworkCommand::Ls(a) => {
            if !a.pos.args.is_empty() {
                return Err(usage_err("ls command takes no arguments"));
            }
            let networks = ctx
                .client
                .list_networks(api::ListNetworksRequest::default())
                .await?
                .into_inner()
                .networks;
            emit(&render_list(&networks, a.quiet));
            Ok(())
        }
        NetworkCommand::Inspect(a) => {
            let arg = one_arg(
                &a.args,
                "network ID missing",
                "inspect command takes exactly 1 argument",
            )?;
            let network = get_network(ctx, arg).await?;
            emit(&render_summary(&network));
            Ok(())
        }
        NetworkCommand::Create(a) => {
            let spec = create_spec(&a)?;
            let req = api::CreateNetworkRequest { spec: Some(spec) };
            let created = ctx.client.create_network(req).await?.into_inner();
            emit(&format!(
                "{}\n",
                created.network.map(|n| n.id).unwrap_or_default()
            ));
            Ok(())
        }
        NetworkCommand::Remove(a) => {
            let arg = one_arg(
                &a.args,
                "network ID missing",
                "remove command takes exactly 1 argument",
            )?;
            let network = get_network(ctx, arg).await?;
            let req = api::RemoveNetworkRequest {
                network_id: network.id,
                ..Default::default()
            };
            ctx.client.remove_network(req).await?;
            emit(&format!("{arg}\n"));
            Ok(())
        }
    }
}

/// The spec `network create` sends.
fn create_spec(a: &CreateArgs) -> Result<api::NetworkSpec, CliError> {
    if !a.pos.args.is_empty() {
        return Err(usage_err("create command takes no arguments"));
    }
    let Some(name) = &a.name else {
        return Err(usage_err("--name is required"));
    };
    let driver_config = match &a.driver {
        Some(d) => {
            let mut driver = api::Driver {
                name: d.clone(),
                ..Default::default()
            };
            for opt in string_slice("opts", &a.opts)? {
                let pair: Vec<&str> = opt.split('=').collect();
                let [k, v] = pair[..] else {
                    return Err(usage_err(format!("Malformed opts: {opt}")));
                };
                driver.options.insert(k.to_string(), v.to_string());
            }
            Some(driver)
        }
        None => None,
    };
    Ok(api::NetworkSpec {
        annotations: Some(api::Annotations {
            name: name.clone(),
            ..Default::default()
        }),
        driver_config,
        ipam: ipam_options(
            a.ipam_driver.as_deref(),
            &string_slice("subnet", &a.subnet)?,
            &string_slice("gateway", &a.gateway)?,
            &string_slice("ip-range", &a.ip_range)?,
        )?,
        ingress: a.ingress,
        ..Default::default()
    })
}

/// A parsed CIDR: the masked network address and the prefix length.
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Go's `net.ParseCIDR`.
    fn parse(s: &str) -> Result<Cidr, CliError> {
        let bad = || usage_err(format!("invalid CIDR address: {s}"));
        let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits.is_empty() || bits.len() > 3 || !bits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        if bits > max {
            return Err(bad());
        }
        let net = match ip {
            IpAddr::V4(v4) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        };
        Ok(Cidr { net, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bits)
                };
                u32::from(i) & mask == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.bits)
                };
                u128::from(i) & mask == u128::from(n)
            }
            _ => false,
        }
    }
}

/// IPAM options from the flags: each gateway and range is attached to the first subnet that
/// contains it (SwarmKit's `processIPAMOptions`).
fn ipam_options(
    driver: Option<&str>,
    subnets: &[String],
    gateways: &[String],
    ranges: &[String],
) -> Result<Option<api::IpamOptions>, CliError> {
    let mut ipam = driver.map(|d| api::IpamOptions {
        driver: Some(api::Driver {
            name: d.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    });
    // SwarmKit's swarmctl drops a gateway or range that lies in none of the subnets; ours says so.
    let unattached = |kind: &str, value: &str| {
        usage_err(format!(
            "--{kind} {value} is in none of the subnets given with --subnet"
        ))
    };
    if subnets.is_empty() {
        if let Some(g) = gateways.first() {
            return Err(unattached("gateway", g));
        }
        if let Some(r) = ranges.first() {
            return Err(unattached("ip-range", r));
        }
        return Ok(ipam);
    }
    let mut gateways = gateways.to_vec();
    let mut ranges = ranges.to_vec();
    let mut configs = Vec::new();
    for s in subnets {
        let subnet = Cidr::parse(s)?;
        let family = if subnet.net.is_ipv4() {
            api::ipam_config::AddressFamily::Ipv4
        } else {
            api::ipam_config::AddressFamily::Ipv6
        };
        let mut gateway = String::new();
        if let Some(i) = gateways
            .iter()
            .position(|g| g.parse::<IpAddr>().is_ok_and(|ip| subnet.contains(ip)))
        {
            gateway = gateways.remove(i);
        }
        let mut range = String::new();
        let mut found = None;
        for (i, r) in ranges.iter().enumerate() {
            if subnet.contains(Cidr::parse(r)?.net) {
                found = Some(i);
                break;
            }
        }
        if let Some(i) = found {
            range = ranges.remove(i);
        }
        configs.push(api::IpamConfig {
            family: family as i32,
            subnet: s.clone(),
            range,
            gateway,
            ..Default::default()
        });
    }
    if let Some(g) = gateways.first() {
        return Err(unattached("gateway", g));
    }
    if let Some(r) = ranges.first() {
        return Err(unattached("ip-range", r));
    }
    ipam.get_or_insert_with(Default::default).configs = configs;
    Ok(ipam)
}

/// The `ls` table (or IDs with `-q`).
pub fn render_list(networks: &[api::Network], quiet: bool) -> String {
    if quiet {
        return networks.iter().map(|n| format!("{}\n", n.id)).collect();
    }
    let mut w = TabWriter::new(0, 4, 2);
    print_header(&mut w, &["ID", "Name", "Driver"]);
    for n in networks {
        w.line(format!(
            "{}\t{}\t{}",
            n.id,
            annotations_name(n.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            n.driver_state
                .as_ref()
                .map(|d| d.name.as_str())
                .unwrap_or("")
        ));
    }
    w.render()
}

/// The `inspect` summary; map entries are printed sorted.
pub fn render_summary(n: &api::Network) -> String {
    let spec = n.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let mut w = TabWriter::new(8, 8, 8);
    if !n.id.is_empty() {
        w.line(format!("ID\t: {}", n.id));
    }
    if !annotations.name.is_empty() {
        w.line(format!("Name\t: {}", annotations.name));
    }
    w.line("Spec:\t");
    if !annotations.labels.is_empty() {
        w.line("  Labels:\t");
        for (k, v) in &annotations.labels {
            w.line(format!("    {k} = {v}"));
        }
    }
    w.line(format!("  IPv6Enabled\t: {}", spec.ipv6_enabled));
    w.line(format!("  Internal\t: {}", spec.internal));
    if let Some(d) = &n.driver_state {
        w.line("Driver:\t");
        if !d.name.is_empty() {
            w.line(format!("  Name\t: {}", d.name));
        }
        if !d.options.is_empty() {
            w.line("  Options:\t");
            for (k, v) in &d.options {
                w.line(format!("    {k} = {v}"));
            }
        }
    }
    if let Some(ipam) = &n.ipam {
        w.line("IPAM:\t");
        if let Some(d) = &ipam.driver {
            w.line("  Driver:\t");
            if !d.name.is_empty() {
                w.line(format!("    Name\t: {}", d.name));
            }
            if !d.options.is_empty() {
                w.line("    Options:\t");
                for (k, v) in &d.options {
                    w.line(format!("      {k} = {v}"));
                }
            }
        }
        for c in &ipam.configs {
            w.line("  IPAM Config:\t");
            w.line(format!(
                "    Family\t: {}",
                enum_name(c.family, api::ipam_config::AddressFamily::as_str_name)
            ));
            if !c.subnet.is_empty() {
                w.line(format!("    Subnet\t: {}", c.subnet));
            }
            // The reference prints the range line twice.
            if !c.range.is_empty() {
                w.line(format!("    Range\t: {}", c.range));
                w.line(format!("    Range\t: {}", c.range));
            }
            if !c.gateway.is_empty() {
                w.line(format!("    Gateway\t: {}", c.gateway));
            }
            if !c.reserved.is_empty() {
                w.line("    Reserved:\t");
                for (k, v) in &c.reserved {
                    w.line(format!("      {k} = {v}"));
                }
            }
        }
    }
    w.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(got: String, expected: &str) {
        assert_eq!(got, expected, "\ngot:\n{got}\nexpected:\n{expected}");
    }

    fn network(id: &str, name: &str, driver: &str) -> api::Network {
        api::Network {
            id: id.into(),
            spec: Some(api::NetworkSpec {
                annotations: Some(api::Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            driver_state: Some(api::Driver {
                name: driver.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn list_table() {
        check(
            render_list(
                &[
                    network("K2-id....................", "bridge", "bridge"),
                    network("K1-id....................", "ingress", "overlay"),
                ],
                false,
            ),
            "ID                         Name     Driver\n\
             --                         ----     ------\n\
             K2-id....................  bridge   bridge\n\
             K1-id....................  ingress  overlay\n",
        );
    }

    #[test]
    fn inspect_ingress_has_per_block_alignment() {
        let mut n = network("K1-id....................", "ingress", "overlay");
        n.driver_state.as_mut().expect("driver").options.insert(
            "com.docker.network.driver.overlay.vxlanid_list".into(),
            "4096".into(),
        );
        n.ipam = Some(api::IpamOptions {
            driver: Some(api::Driver {
                name: "default".into(),
                ..Default::default()
            }),
            configs: vec![api::IpamConfig {
                family: api::ipam_config::AddressFamily::Ipv4 as i32,
                subnet: "10.0.0.0/24".into(),
                gateway: "10.0.0.1".into(),
                ..Default::default()
            }],
        });
        check(
            render_summary(&n),
            "ID                   : K1-id....................\n\
             Name                 : ingress\n\
             Spec:                \n  \
               IPv6Enabled        : false\n  \
               Internal           : false\n\
             Driver:              \n  \
               Name               : overlay\n  \
               Options:           \n    \
                 com.docker.network.driver.overlay.vxlanid_list = 4096\n\
             IPAM:                 \n  \
               Driver:             \n    \
                 Name              : default\n  \
               IPAM Config:        \n    \
                 Family            : IPV4\n    \
                 Subnet            : 10.0.0.0/24\n    \
                 Gateway           : 10.0.0.1\n",
        );
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gateways_and_ranges_follow_their_subnet() {
        let ipam = ipam_options(
            None,
            &args(&["10.1.0.0/16", "fd00::/64"]),
            &args(&["fd00::1", "10.1.0.1"]),
            &args(&["10.1.2.0/24"]),
        )
        .expect("valid")
        .expect("ipam");
        assert!(ipam.driver.is_none());
        assert_eq!(ipam.configs[0].gateway, "10.1.0.1");
        assert_eq!(ipam.configs[0].range, "10.1.2.0/24");
        assert_eq!(
            ipam.configs[0].family,
            api::ipam_config::AddressFamily::Ipv4 as i32
        );
        assert_eq!(ipam.configs[1].gateway, "fd00::1");
        assert_eq!(
            ipam.configs[1].family,
            api::ipam_config::AddressFamily::Ipv6 as i32
        );
        assert_eq!(
            ipam_options(None, &args(&["bogus"]), &[], &[])
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err("invalid CIDR address: bogus".to_string())
        );
        assert!(ipam_options(None, &[], &[], &[]).expect("valid").is_none());
    }

    #[test]
    fn create_requires_name_and_checks_opts() {
        let mut a = CreateArgs {
            driver: Some("overlay".into()),
            gateway: vec![],
            ingress: false,
            ip_range: vec![],
            ipam_driver: None,
            name: None,
            opts: vec!["a=b=c".into()],
            subnet: vec![],
            pos: Positionals::default(),
        };
        assert_eq!(
            create_spec(&a).map(|_| ()).map_err(|e| e.to_string()),
            Err("--name is required".to_string())
        );
        a.name = Some("ov1".into());
        assert_eq!(
            create_spec(&a).map(|_| ()).map_err(|e| e.to_string()),
            Err("Malformed opts: a=b=c".to_string())
        );
        a.opts = vec!["k=v".into()];
        let spec = create_spec(&a).expect("valid");
        let driver = spec.driver_config.expect("driver");
        assert_eq!(driver.options.get("k").map(String::as_str), Some("v"));
    }
}
