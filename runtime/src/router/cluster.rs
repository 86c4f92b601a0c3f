//! What each rank tells the others about its NICs, and the planner's
//! [`Cluster`] built from that (pure).
//!
//! Every rank publishes a [`RouteInfo`] in the address book: the NICs it
//! selected (name, subnet, rail and speed from the topology when known) and
//! the primary NIC of each GPU of its host's topology. [`build`] groups ranks
//! into hosts by host identity, matches NICs of different hosts into rails
//! ([`zccl_topology::rails`]: explicit `rail` attributes, else common
//! subnets, else NIC order), and gives each rank the primary NIC of its GPU
//! (GPU = local rank), or NIC `local rank mod NICs` when its host's topology
//! has no GPU.

use serde::{Deserialize, Serialize};
use zccl_topology::rails::{RailNic, assign_rails};

use super::plan::{Cluster, NicInfo};

/// Rate assumed for a NIC whose speed nobody knows, Gbit/s.
pub const DEFAULT_GBPS: f64 = 10.0;

/// One NIC a rank uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteNic {
    /// Interface name.
    pub name: String,
    /// Address with prefix length (`10.77.1.1/24`), when known.
    pub cidr: Option<String>,
    /// Explicit rail from the topology file.
    pub rail: Option<u32>,
    /// Speed from the topology, Mb/s.
    pub speed_mbps: Option<u64>,
}

/// What a rank publishes for the router.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteInfo {
    /// The NICs it selected, in order.
    pub nics: Vec<RouteNic>,
    /// Interface name of the primary NIC of each GPU of its host, in GPU
    /// order (empty without GPUs).
    pub gpu_nics: Vec<String>,
}

/// The cluster as the router sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCluster {
    /// For the planner.
    pub cluster: Cluster,
    /// Host index of each host identity, in order of first rank.
    pub host_ids: Vec<String>,
}

/// Builds the planner's cluster from every rank's host identity, local rank
/// and [`RouteInfo`]. Errors say why the router cannot run (a rank without
/// NICs, ranks of one host with different NIC lists).
///
/// ```
/// use zccl_runtime::router::cluster::*;
/// let nic = |n: &str, a: &str| RouteNic { name: n.into(), cidr: Some(a.into()), rail: None, speed_mbps: Some(200) };
/// let info = |h: u8| RouteInfo {
///     nics: vec![nic("nic0", &format!("10.77.0.{h}/24")), nic("nic1", &format!("10.77.1.{h}/24"))],
///     gpu_nics: vec!["nic0".into(), "nic1".into()],
/// };
/// let hosts = ["a", "a", "b", "b"].map(String::from);
/// let c = build(&hosts, &[0, 1, 0, 1], &[info(1), info(1), info(2), info(2)]).unwrap();
/// assert_eq!(c.cluster.rank_host, vec![0, 0, 1, 1]);
/// assert_eq!(c.cluster.rank_nic, vec![0, 1, 0, 1]);
/// assert_eq!(c.cluster.hosts[1][1].rail, 1);
/// assert_eq!(c.cluster.hosts[0][0].rate_gbps, 0.2);
/// ```
pub fn build(
    host_of_rank: &[String],
    local_rank: &[u32],
    info: &[RouteInfo],
) -> Result<RouteCluster, String> {
    if host_of_rank.len() != info.len() || local_rank.len() != info.len() {
        return Err("inconsistent rank lists".into());
    }
    let mut host_ids: Vec<String> = Vec::new();
    let mut rank_host = Vec::with_capacity(info.len());
    for h in host_of_rank {
        let i = match host_ids.iter().position(|x| x == h) {
            Some(i) => i,
            None => {
                host_ids.push(h.clone());
                host_ids.len() - 1
            }
        };
        rank_host.push(i);
    }
    // The NICs of each host: those of its first rank; the others must agree.
    let mut first: Vec<usize> = vec![usize::MAX; host_ids.len()];
    for (r, &h) in rank_host.iter().enumerate() {
        if first[h] == usize::MAX {
            first[h] = r;
        }
        let names = |x: usize| info[x].nics.iter().map(|n| &n.name).collect::<Vec<_>>();
        if names(r) != names(first[h]) {
            return Err(format!(
                "ranks {} and {r} of one host use different NICs ({:?} and {:?}); set the same ZCCL_SOCKET_IFNAME on every rank",
                first[h],
                names(first[h]),
                names(r)
            ));
        }
        if info[r].nics.is_empty() {
            return Err(format!("rank {r} published no NIC"));
        }
    }
    let rail_nics: Vec<Vec<RailNic>> = first
        .iter()
        .map(|&r| {
            info[r]
                .nics
                .iter()
                .map(|n| RailNic {
                    name: n.name.clone(),
                    addrs: n.cidr.iter().cloned().collect(),
                    rail: n.rail,
                })
                .collect()
        })
        .collect();
    let rails = assign_rails(&rail_nics);
    let mut rail_of = vec![Vec::new(); host_ids.len()];
    for (h, nics) in rail_nics.iter().enumerate() {
        rail_of[h] = vec![usize::MAX; nics.len()];
    }
    for rail in &rails {
        for &(h, i) in &rail.members {
            rail_of[h][i] = rail.id;
        }
    }
    let mut next = rails.len();
    let hosts: Vec<Vec<NicInfo>> = first
        .iter()
        .enumerate()
        .map(|(h, &r)| {
            info[r]
                .nics
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let rail = if rail_of[h][i] == usize::MAX {
                        next += 1; // on no rail: a network of its own
                        next - 1
                    } else {
                        rail_of[h][i]
                    };
                    NicInfo {
                        name: n.name.clone(),
                        rail,
                        rate_gbps: n
                            .speed_mbps
                            .filter(|&s| s > 0)
                            .map_or(DEFAULT_GBPS, |s| s as f64 / 1000.0),
                    }
                })
                .collect()
        })
        .collect();
    let rank_nic = (0..info.len())
        .map(|r| {
            let nics = &hosts[rank_host[r]];
            let gpus = &info[r].gpu_nics;
            let lr = local_rank[r] as usize;
            (!gpus.is_empty())
                .then(|| &gpus[lr % gpus.len()])
                .and_then(|name| nics.iter().position(|n| &n.name == name))
                .unwrap_or(lr % nics.len())
        })
        .collect();
    Ok(RouteCluster {
        cluster: Cluster {
            hosts,
            rank_host,
            rank_nic,
        },
        host_ids,
    })
}

/// This rank's [`RouteInfo`]: its selected interfaces with their subnets
/// (from the system) and their rail and speed from the topology
/// (`ZCCL_TOPO_FILE`, else the sysfs probe), and the primary NIC of each GPU
/// of the topology. A topology that cannot be read is logged and left out.
pub fn probe_local(nics: &[zccl_transports::ifname::Interface]) -> RouteInfo {
    let names: Vec<String> = nics.iter().map(|n| n.name.clone()).collect();
    let prefixes = zccl_transports::ifname::link_states(&names).unwrap_or_default();
    let topo = match zccl_topology::discover() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(target: crate::logging::ROUTE, "router: no topology ({e}); NIC speeds and GPU affinity unknown");
            None
        }
    };
    let net_of = |name: &str| {
        topo.as_ref()?
            .nets
            .iter()
            .find(|n| n.netdev.as_deref() == Some(name) || n.name == name)
    };
    let route_nics = nics
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let net = net_of(&n.name);
            RouteNic {
                name: n.name.clone(),
                cidr: prefixes
                    .get(i)
                    .and_then(|p| p.1)
                    .map(|len| format!("{}/{len}", n.addr)),
                rail: net.and_then(|x| x.rail),
                speed_mbps: net.and_then(|x| x.speed_mbps),
            }
        })
        .collect();
    let gpu_nics = topo
        .as_ref()
        .map(|t| {
            zccl_topology::affinity::affinity(t)
                .iter()
                .map(|a| {
                    a.primary
                        .and_then(|i| t.nets.get(i))
                        .map(|net| net.netdev.clone().unwrap_or_else(|| net.name.clone()))
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    RouteInfo {
        nics: route_nics,
        gpu_nics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(n: &str, cidr: Option<&str>) -> RouteNic {
        RouteNic {
            name: n.into(),
            cidr: cidr.map(String::from),
            rail: None,
            speed_mbps: None,
        }
    }

    #[test]
    fn rails_by_subnet_even_when_names_differ_in_order() {
        let a = RouteInfo {
            nics: vec![
                nic("eth0", Some("10.0.1.1/24")),
                nic("eth1", Some("10.0.2.1/24")),
            ],
            gpu_nics: vec![],
        };
        let b = RouteInfo {
            nics: vec![
                nic("ens1", Some("10.0.2.2/24")),
                nic("ens0", Some("10.0.1.2/24")),
            ],
            gpu_nics: vec![],
        };
        let hosts = ["x", "y", "y"].map(String::from);
        let c = build(&hosts, &[0, 0, 1], &[a, b.clone(), b]).unwrap();
        let h = &c.cluster.hosts;
        assert_eq!(h[0][0].rail, h[1][1].rail);
        assert_eq!(h[0][1].rail, h[1][0].rail);
        assert_eq!(h[0][0].rate_gbps, DEFAULT_GBPS);
        // No GPUs: local rank modulo NICs.
        assert_eq!(c.cluster.rank_nic, vec![0, 0, 1]);
    }

    #[test]
    fn disagreeing_ranks_of_a_host_are_an_error() {
        let a = RouteInfo {
            nics: vec![nic("eth0", None)],
            gpu_nics: vec![],
        };
        let b = RouteInfo {
            nics: vec![nic("eth1", None)],
            gpu_nics: vec![],
        };
        let hosts = ["x", "x"].map(String::from);
        let e = build(&hosts, &[0, 1], &[a, b]).unwrap_err();
        assert!(e.contains("different NICs"), "{e}");
        let none = RouteInfo::default();
        let e = build(&["z".to_string()], &[0], &[none]).unwrap_err();
        assert!(e.contains("no NIC"), "{e}");
    }
}
