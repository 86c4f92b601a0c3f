//! The simulator and the runtime make the same decisions for the same
//! inputs: the cluster the runtime builds from its ranks' address-book
//! entries equals the simulator's, the simulator's plan is the runtime
//! planner's, and the runtime executor's first chunks go out on the lanes
//! and in the order the simulator's executor state sends them.

use std::time::Instant;

use bytes::Bytes;
use zccl_runtime::router::cluster::{RouteCluster, RouteInfo, RouteNic, build};
use zccl_runtime::router::wire::ChunkHeader;
use zccl_runtime::router::{
    Action, LiveState, NicId, NicState, Policy, Router, RouterMode, Transfer, plan,
};
use zccl_sim::cluster::ClusterSpec;
use zccl_sim::run::{outgoing, plan_transfer};
use zccl_transports::{Message, MessageKind};

/// What the testbed's ranks publish: 4 NICs `nic0..3` on subnets
/// 10.77.k.0/24 at 200 Mbit/s, GPU l affine to `nic{l}`.
fn runtime_cluster(hosts: usize, nics: usize, ranks: usize) -> RouteCluster {
    let info = |h: usize| RouteInfo {
        nics: (0..nics)
            .map(|k| RouteNic {
                name: format!("nic{k}"),
                cidr: Some(format!("10.77.{k}.{}/24", h + 1)),
                rail: None,
                speed_mbps: Some(200),
            })
            .collect(),
        gpu_nics: (0..ranks).map(|l| format!("nic{}", l % nics)).collect(),
    };
    let host_ids: Vec<String> = (0..hosts * ranks)
        .map(|r| format!("host{}", r / ranks))
        .collect();
    let local: Vec<u32> = (0..hosts * ranks).map(|r| (r % ranks) as u32).collect();
    let infos: Vec<RouteInfo> = (0..hosts * ranks).map(|r| info(r / ranks)).collect();
    build(&host_ids, &local, &infos).expect("cluster")
}

#[test]
fn the_simulated_cluster_is_the_one_the_runtime_builds() {
    let rc = runtime_cluster(2, 4, 4);
    let sim = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    assert_eq!(sim.router, rc.cluster);
}

#[test]
fn the_simulator_plans_with_the_runtime_planner() {
    let rc = runtime_cluster(2, 4, 4);
    let sim = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    let mut busy = LiveState::default();
    busy.nics.insert(
        NicId { host: 0, index: 2 },
        NicState {
            backlog_bytes: 8 << 20,
            ..NicState::default()
        },
    );
    let mut down = LiveState::default();
    down.nics.insert(
        NicId { host: 0, index: 0 },
        NicState {
            up: false,
            ..NicState::default()
        },
    );
    let policies = [
        Policy::default(),
        Policy::from_lookup(|k| (k == "ZCCL_CROSS_NIC").then(|| "0".into())).unwrap(),
        Policy::from_lookup(|k| (k == "ZCCL_PXN_DISABLE").then(|| "1".into())).unwrap(),
    ];
    for policy in &policies {
        for live in [LiveState::default(), busy.clone(), down.clone()] {
            for (src, dst, bytes) in [
                (0, 4, 64u64 << 20),
                (1, 6, 3 << 20),
                (2, 3, 1 << 20),
                (3, 7, 4096),
                (0, 5, 0),
            ] {
                let t = Transfer { src, dst, bytes };
                let runtime = plan(&t, &rc.cluster, &live, policy);
                let simulated =
                    plan_transfer(&sim, src as usize, dst as usize, bytes, &live, policy);
                match (runtime, simulated) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{t:?}"),
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!("{t:?}: runtime {a:?} vs simulator {b:?}"),
                }
            }
        }
    }
}

#[test]
fn the_runtime_executor_sends_what_the_simulated_one_sends() {
    let rc = runtime_cluster(2, 4, 4);
    let sim = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    let bytes = 16u64 << 20;
    let now = Instant::now();
    let mut router = Router::new(0, RouterMode::On, rc, Policy::default(), 1 << 30);
    let msg = Message {
        kind: MessageKind::Data,
        dtype: 0,
        comm: 1,
        channel: 0,
        seq: 1,
        payload: Bytes::from(vec![0u8; bytes as usize]),
    };
    // The runtime: which chunk leaves on which lane (through which proxy).
    let mut runtime = Vec::new();
    for a in router.start_send(4, msg, now) {
        if let Action::Send { peer, msg, .. } = a {
            let h = ChunkHeader::decode(&msg.payload).expect("a routed chunk");
            runtime.push((h.index as usize, h.lane as usize, h.src_nic as usize, peer));
        }
    }
    // The simulator: the same plan into the same executor state.
    let p = plan_transfer(&sim, 0, 4, bytes, &LiveState::default(), &Policy::default()).unwrap();
    let mut out = outgoing(&sim, &p);
    let simulated: Vec<_> = out
        .dispatch(now)
        .into_iter()
        .map(|d| {
            let lane = &out.lanes[d.lane];
            (d.chunk, d.lane, lane.src_nic.index, lane.proxy.unwrap_or(4))
        })
        .collect();
    assert!(runtime.len() >= 4, "{runtime:?}");
    assert_eq!(runtime, simulated);
}
