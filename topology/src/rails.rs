//! Rails: the NICs of different hosts that belong together, so that traffic
//! leaving host A on NIC k can enter host B on its NIC of the same rail
//! (what `NCCL_CROSS_NIC=0` requires and what the router matches on).
//!
//! A pure function of each host's NIC list. The key, tried in order:
//! 1. an explicit `rail` (NCCL XML attribute) on every NIC;
//! 2. the IP subnet, when every NIC has an address and no host has two NICs
//!    in one subnet;
//! 3. the NIC's index on its host (NIC `dev` order).

use serde::Serialize;
use std::net::IpAddr;

/// What [`assign_rails`] needs to know of one NIC.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RailNic {
    /// NIC (port) name.
    pub name: String,
    /// Addresses with prefix length, e.g. `10.77.1.2/24`.
    pub addrs: Vec<String>,
    /// Explicit rail id, if the topology gives one.
    pub rail: Option<u32>,
}

/// How a rail was recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", content = "key", rename_all = "lowercase")]
pub enum RailKey {
    /// Explicit `rail` attribute.
    Explicit(u32),
    /// Common IP subnet (`10.77.1.0/24`).
    Subnet(String),
    /// Same NIC index on every host.
    Index(usize),
}

/// One rail: a NIC (or none) of each host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rail {
    /// Rail number, from 0.
    pub id: usize,
    /// Why these NICs belong together.
    pub key: RailKey,
    /// `(host index, NIC index on that host)` of each member.
    pub members: Vec<(usize, usize)>,
}

/// The network (address with host bits cleared) of `ip/prefix`.
///
/// ```
/// use zccl_topology::rails::subnet_of;
/// assert_eq!(subnet_of("10.77.1.2/24").as_deref(), Some("10.77.1.0/24"));
/// assert_eq!(subnet_of("fd00::2/64").as_deref(), Some("fd00::/64"));
/// assert_eq!(subnet_of("not-an-ip"), None);
/// ```
pub fn subnet_of(cidr: &str) -> Option<String> {
    let (ip, len) = cidr.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    match ip {
        IpAddr::V4(v4) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let net = std::net::Ipv4Addr::from(u32::from(v4) & mask);
            Some(format!("{net}/{len}"))
        }
        IpAddr::V6(v6) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            Some(format!("{net}/{len}"))
        }
        _ => None,
    }
}

fn first_subnet(nic: &RailNic) -> Option<String> {
    // Prefer IPv4, skip link-local IPv6 (every port has one).
    let subnets: Vec<String> = nic
        .addrs
        .iter()
        .filter(|a| !a.starts_with("fe80:"))
        .filter_map(|a| subnet_of(a))
        .collect();
    subnets
        .iter()
        .find(|s| !s.contains(':'))
        .or(subnets.first())
        .cloned()
}

/// Group the NICs of `hosts` into rails.
///
/// ```
/// use zccl_topology::rails::{assign_rails, RailNic, RailKey};
/// let nic = |name: &str, a: &str| RailNic { name: name.into(), addrs: vec![a.into()], rail: None };
/// let hosts = vec![
///     vec![nic("eth0", "10.0.1.1/24"), nic("eth1", "10.0.2.1/24")],
///     vec![nic("ens1", "10.0.2.2/24"), nic("ens0", "10.0.1.2/24")],
/// ];
/// let rails = assign_rails(&hosts);
/// assert_eq!(rails[0].key, RailKey::Subnet("10.0.1.0/24".into()));
/// assert_eq!(rails[0].members, vec![(0, 0), (1, 1)]);
/// ```
pub fn assign_rails(hosts: &[Vec<RailNic>]) -> Vec<Rail> {
    let all = || hosts.iter().flat_map(|h| h.iter());
    let keys: Vec<Vec<RailKey>> = if all().next().is_some() && all().all(|n| n.rail.is_some()) {
        hosts
            .iter()
            .map(|h| {
                h.iter()
                    .map(|n| RailKey::Explicit(n.rail.unwrap_or(0)))
                    .collect()
            })
            .collect()
    } else {
        let subnets: Option<Vec<Vec<String>>> = hosts
            .iter()
            .map(|h| h.iter().map(first_subnet).collect::<Option<Vec<_>>>())
            .collect();
        let distinct = |h: &Vec<String>| {
            let mut s = h.clone();
            s.sort();
            s.dedup();
            s.len() == h.len()
        };
        match subnets {
            Some(s) if s.iter().all(distinct) => s
                .into_iter()
                .map(|h| h.into_iter().map(RailKey::Subnet).collect())
                .collect(),
            _ => hosts
                .iter()
                .map(|h| (0..h.len()).map(RailKey::Index).collect())
                .collect(),
        }
    };
    let mut rails: Vec<Rail> = Vec::new();
    for (h, host_keys) in keys.iter().enumerate() {
        for (i, key) in host_keys.iter().enumerate() {
            match rails.iter_mut().find(|r| &r.key == key) {
                Some(r) => r.members.push((h, i)),
                None => rails.push(Rail {
                    id: rails.len(),
                    key: key.clone(),
                    members: vec![(h, i)],
                }),
            }
        }
    }
    if rails.iter().all(|r| matches!(r.key, RailKey::Explicit(_))) {
        rails.sort_by_key(|r| match r.key {
            RailKey::Explicit(k) => k,
            _ => 0,
        });
        for (i, r) in rails.iter_mut().enumerate() {
            r.id = i;
        }
    }
    rails
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, addrs: &[&str], rail: Option<u32>) -> RailNic {
        RailNic {
            name: name.into(),
            addrs: addrs.iter().map(|s| s.to_string()).collect(),
            rail,
        }
    }

    #[test]
    fn explicit_rails_win() {
        let hosts = vec![
            vec![nic("a", &[], Some(1)), nic("b", &[], Some(0))],
            vec![nic("c", &[], Some(0)), nic("d", &[], Some(1))],
        ];
        let r = assign_rails(&hosts);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].key.clone(), r[0].members.clone()),
            (RailKey::Explicit(0), vec![(0, 1), (1, 0)])
        );
        assert_eq!(r[1].members, vec![(0, 0), (1, 1)]);
    }

    #[test]
    fn subnets_group_across_hosts_and_ignore_link_local() {
        let hosts = vec![
            vec![
                nic("v0", &["fe80::1/64", "10.77.0.1/24"], None),
                nic("v1", &["10.77.1.1/24"], None),
            ],
            vec![
                nic("v1", &["10.77.1.2/24"], None),
                nic("v0", &["10.77.0.2/24", "fd00::2/64"], None),
            ],
        ];
        let r = assign_rails(&hosts);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].key, RailKey::Subnet("10.77.0.0/24".into()));
        assert_eq!(r[0].members, vec![(0, 0), (1, 1)]);
        assert_eq!(r[1].members, vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn falls_back_to_index_when_addresses_are_missing_or_ambiguous() {
        let hosts = vec![
            vec![nic("a", &["10.0.0.1/24"], None), nic("b", &[], None)],
            vec![
                nic("c", &["10.0.0.2/24"], None),
                nic("d", &["10.0.1.2/24"], None),
            ],
        ];
        let r = assign_rails(&hosts);
        assert_eq!(r[1].key, RailKey::Index(1));
        assert_eq!(r[1].members, vec![(0, 1), (1, 1)]);
        // Two NICs of one host in one subnet: subnets cannot tell rails apart.
        let hosts = vec![vec![
            nic("a", &["10.0.0.1/16"], None),
            nic("b", &["10.0.0.2/16"], None),
        ]];
        assert_eq!(assign_rails(&hosts)[0].key, RailKey::Index(0));
        // Uneven NIC counts: the extra NIC forms a rail of its own.
        let hosts = vec![
            vec![nic("a", &[], None)],
            vec![nic("b", &[], None), nic("c", &[], None)],
        ];
        let r = assign_rails(&hosts);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].members, vec![(1, 1)]);
        assert!(assign_rails(&[]).is_empty());
    }
}
