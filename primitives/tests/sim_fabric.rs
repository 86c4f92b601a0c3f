//! The simulated fabric honours the Fabric contract and fails loudly.

use std::time::{Duration, Instant};

use zccl_primitives::collectives::all_reduce;
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::sim::{SimConfig, SimError, SimFabric, run_ranks, try_run_ranks};
use zccl_primitives::{Dir, Error, Fabric};

fn short() -> SimConfig {
    SimConfig {
        op_timeout: Duration::from_millis(300),
        run_timeout: Duration::from_secs(20),
    }
}

#[test]
fn fifo_matching_ignores_wait_order() {
    let out = run_ranks(2, |f| {
        if f.rank() == 0 {
            for i in 0..5u8 {
                f.isend(1, 0, 0, vec![i; i as usize])
                    .unwrap()
                    .wait()
                    .unwrap();
            }
            vec![]
        } else {
            let hs: Vec<_> = (0..5).map(|i| f.irecv(0, 0, 0, i).unwrap()).collect();
            hs.into_iter()
                .rev()
                .map(|h| h.wait().unwrap())
                .collect::<Vec<_>>()
        }
    });
    assert_eq!(
        out[1],
        (0..5u8)
            .rev()
            .map(|i| vec![i; i as usize])
            .collect::<Vec<_>>()
    );
}

#[test]
fn sends_never_block_and_self_sends_work() {
    run_ranks(3, |f| {
        // Post everything before any receive.
        let sends: Vec<_> = (0..3)
            .map(|to| f.isend(to, 0, 1, vec![f.rank() as u8; 1000]).unwrap())
            .collect();
        for from in 0..3 {
            assert_eq!(
                f.irecv(from, 0, 1, 1000).unwrap().wait().unwrap(),
                vec![from as u8; 1000]
            );
        }
        for s in sends {
            s.wait().unwrap();
        }
    });
}

#[test]
fn channels_progress_independently() {
    // Channel 0's receive on rank 1 is stalled (rank 0 sends on it last); channel 1 completes meanwhile.
    run_ranks(2, |f| {
        if f.rank() == 0 {
            f.isend(1, 1, 0, vec![1]).unwrap();
            let ack = f.irecv(1, 1, 0, 1).unwrap().wait().unwrap();
            assert_eq!(ack, vec![2]);
            f.isend(1, 0, 0, vec![3]).unwrap();
        } else {
            let stalled = f.irecv(0, 0, 0, 1).unwrap();
            assert_eq!(f.irecv(0, 1, 0, 1).unwrap().wait().unwrap(), vec![1]);
            f.isend(0, 1, 0, vec![2]).unwrap();
            assert_eq!(stalled.wait().unwrap(), vec![3]);
        }
    });
}

#[test]
fn timeout_names_the_peer_and_channel() {
    let ranks = SimFabric::world(3, short());
    let t0 = Instant::now();
    let e = ranks[0].irecv(2, 7, 0x42, 8).unwrap().wait().unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        e,
        Error::Timeout {
            rank: 0,
            dir: Dir::Recv,
            peer: 2,
            channel: 7,
            tag: 0x42,
            after: Duration::from_millis(300)
        }
    );
    assert_eq!(
        e.to_string(),
        "rank 0: recv from rank 2 on channel 7 (tag 0x42) timed out after 0.3 s"
    );
}

#[test]
fn size_and_tag_mismatches_are_reported() {
    let ranks = SimFabric::world(2, short());
    ranks[0].isend(1, 0, 5, vec![0; 4]).unwrap();
    let e = ranks[1].irecv(0, 0, 5, 8).unwrap().wait().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Mismatch {
                expected_len: 8,
                got_len: 4,
                ..
            }
        ),
        "{e}"
    );
    ranks[0].isend(1, 0, 6, vec![0; 4]).unwrap();
    let e = ranks[1].irecv(0, 0, 5, 4).unwrap().wait().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Mismatch {
                expected_tag: 5,
                got_tag: 6,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        ranks[0].isend(2, 0, 0, vec![]).is_err(),
        "rank out of range"
    );
}

#[test]
fn a_failing_rank_aborts_the_others_fast() {
    let t0 = Instant::now();
    let cfg = SimConfig {
        op_timeout: Duration::from_secs(30),
        run_timeout: Duration::from_secs(60),
    };
    let err = try_run_ranks(cfg, 4, |f| {
        if f.rank() == 2 {
            panic!("rank 2 gives up");
        }
        let mut v = vec![1.0f32; 4];
        all_reduce(f, 0, &mut v, ReduceOp::Sum).unwrap();
    })
    .unwrap_err();
    assert_eq!(
        err,
        SimError::Panicked {
            rank: 2,
            message: "rank 2 gives up".into()
        }
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "others did not wait for their 30 s deadline"
    );
}

#[test]
fn algorithms_run_over_dyn_fabric() {
    let out = run_ranks(3, |f| {
        let d: &dyn Fabric = f;
        let mut v = vec![d.rank() as i32; 3];
        all_reduce(d, 0, &mut v, ReduceOp::Sum).unwrap();
        v
    });
    assert!(out.iter().all(|v| v == &[3, 3, 3]));
}
