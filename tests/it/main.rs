//! Integration tests: the real `swarmd` and `swarmctl` binaries on a temp dir each, talking over
//! the control socket. One binary so cargo links once; nextest runs these one at a time (the
//! `serial-cluster` group in .config/nextest.toml).

mod harness;

mod assignments;
mod atrest;
mod atrest_ha;
mod cli;
mod cluster;
mod daemon;
mod docker;
mod faults;
mod ha_addresses;
mod ha_cluster;
mod ha_faults;
mod ha_hosts;
mod ha_members;
mod ha_proxy;
mod ha_recovery;
mod ha_ride;
mod ha_roles;
mod history;
mod interop;
mod limits;
mod logs;
mod metrics;
mod netplane;
mod network_keys;
mod networks;
mod orchestration;
mod overlay;
mod persistence;
mod progress;
mod secrets;
mod security;
mod slow_clients;
mod tls;
mod watch;
