//! IP addresses as numbers and subnets as first address plus length, for both families: what the
//! IPAM bookkeeping computes with. Parsing follows Go's `net.ParseCIDR` and `net.ParseIP`, which
//! SwarmKit and libnetwork use: an address as written plus a prefix length, masked to the subnet.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family. IPv4 numbers use the low 32 bits of a `u128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// Index into per-family tables.
    pub(crate) fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// An address as its family and number; an IPv4-mapped IPv6 address counts as IPv4, as in Go.
pub(crate) fn to_number(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(v4) => (Family::V4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (Family::V4, u128::from(u32::from(v4))),
            None => (Family::V6, u128::from(v6)),
        },
    }
}

/// The address of `number` in `family` (`number` fits the family).
pub(crate) fn to_ip(family: Family, number: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(number).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(number)),
    }
}

/// Parses a single address (Go's `net.ParseIP`).
pub(crate) fn parse_ip(s: &str) -> Option<(Family, u128)> {
    s.parse::<IpAddr>().ok().map(to_number)
}

/// A subnet: its family, its first address (the host bits are zero) and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Prefix {
    pub(crate) family: Family,
    pub(crate) first: u128,
    pub(crate) len: u8,
}

impl Prefix {
    /// The subnet of `number/len`, host bits cleared; `None` if `len` is too long for the family.
    pub(crate) fn new(family: Family, number: u128, len: u8) -> Option<Prefix> {
        if len > family.bits() {
            return None;
        }
        let prefix = Prefix {
            family,
            first: 0,
            len,
        };
        Some(Prefix {
            first: number & !prefix.host_mask(),
            ..prefix
        })
    }

    /// Parses `address/length` as Go's `net.ParseCIDR`: the address as written (`10.1.2.3` of
    /// `10.1.2.3/16`) and the subnet it lies in.
    pub(crate) fn parse_cidr(s: &str) -> Option<(u128, Prefix)> {
        let (addr, len) = s.split_once('/')?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Go parses the address part strictly: no IPv4-mapped form counts as IPv4 here.
        let (family, number) = match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => (Family::V4, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (Family::V6, u128::from(v6)),
        };
        let prefix = Prefix::new(family, number, len.parse().ok()?)?;
        Some((number, prefix))
    }

    /// The number of host bits.
    pub(crate) fn host_bits(&self) -> u32 {
        u32::from(self.family.bits() - self.len)
    }

    fn host_mask(&self) -> u128 {
        match self.host_bits() {
            128 => u128::MAX,
            bits => (1u128 << bits) - 1,
        }
    }

    /// The last address's number (the broadcast address of an IPv4 subnet).
    pub(crate) fn last(&self) -> u128 {
        self.first | self.host_mask()
    }

    /// The highest offset of an address from the first one.
    pub(crate) fn last_offset(&self) -> u128 {
        self.host_mask()
    }

    /// Whether the address `number` of `family` lies in the subnet.
    pub(crate) fn contains(&self, family: Family, number: u128) -> bool {
        family == self.family && (self.first..=self.last()).contains(&number)
    }

    /// Whether the two subnets share an address.
    pub(crate) fn overlaps(&self, other: &Prefix) -> bool {
        self.family == other.family && self.first <= other.last() && other.first <= self.last()
    }

    /// The address at `offset` from the first one, in CIDR form with the subnet's length
    /// (`10.0.0.3/24`), as SwarmKit stores addresses.
    pub(crate) fn address_cidr(&self, offset: u128) -> String {
        format!("{}/{}", to_ip(self.family, self.first + offset), self.len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", to_ip(self.family, self.first), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Prefix {
        Prefix::parse_cidr(s).expect(s).1
    }

    #[test]
    fn parses_and_masks_like_go() {
        let (addr, p) = Prefix::parse_cidr("10.1.2.3/16").expect("valid");
        assert_eq!(to_ip(Family::V4, addr).to_string(), "10.1.2.3");
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert_eq!(to_ip(Family::V4, p.last()).to_string(), "10.1.255.255");
        assert_eq!(cidr("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(cidr("0.0.0.0/0").last_offset(), u128::from(u32::MAX));
        assert_eq!(cidr("::/0").last(), u128::MAX);
        for bad in [
            "bogus",
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "fd00::/129",
        ] {
            assert!(Prefix::parse_cidr(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let a = cidr("10.1.0.0/16");
        assert!(a.contains(Family::V4, parse_ip("10.1.255.1").expect("ip").1));
        assert!(!a.contains(Family::V4, parse_ip("10.2.0.1").expect("ip").1));
        assert_eq!(parse_ip("::ffff:10.1.0.1").expect("ip").0, Family::V4);
        assert!(a.overlaps(&cidr("10.1.3.0/24")));
        assert!(a.overlaps(&cidr("10.0.0.0/8")));
        assert!(!a.overlaps(&cidr("10.2.0.0/16")));
        assert!(!a.overlaps(&cidr("::/0")));
        assert_eq!(a.address_cidr(3), "10.1.0.3/16");
    }
}
