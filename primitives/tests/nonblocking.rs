//! The non-blocking forms: same bits as the blocking calls, several in flight
//! on different channels, progress while the caller is busy (shown by
//! causality, not timing), errors and panics through `wait()`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use common::sp::{DV, a2a_counts, forward_local, random_decay, seq, wait_with_deadline};
use zccl_primitives::alltoall::{all_to_all, all_to_all_v, iall_to_all, iall_to_all_v};
use zccl_primitives::collectives::{
    all_gather, all_reduce, broadcast, iall_gather, iall_reduce, ibarrier, ibroadcast,
    ireduce_scatter, reduce_scatter,
};
use zccl_primitives::dtype::{Elem, bf16};
use zccl_primitives::layout::{
    UlyssesShape, heads_to_seq, iheads_to_seq, iseq_to_heads, seq_to_heads,
};
use zccl_primitives::nonblocking::{OpHandle, start};
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::scan::{
    DiagState, OwnedDiagState, all_scan_diag, all_scan_with, iall_scan_diag, iall_scan_with,
};
use zccl_primitives::schedule::scan::ScanDirection::{Forward, Reverse};
use zccl_primitives::sim::{SimConfig, SimFabric, run_ranks, try_run_ranks};
use zccl_primitives::{Error, Fabric};

fn vals<T: Elem>(r: usize, len: usize, f: impl Fn(f64) -> T) -> Vec<T> {
    let mut rng = Rng::new(r as u64 * 77 + len as u64);
    (0..len).map(|_| f(rng.range(-3.0, 3.0))).collect()
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| 0.5 * x + y).collect()
}

/// Every `i*` operation returns exactly what its blocking form returns.
#[test]
fn every_nonblocking_op_equals_its_blocking_form() {
    for n in [1usize, 2, 3, 5, 8] {
        run_ranks(n, move |f| {
            let (r, af) = (f.rank(), Arc::new(f.clone()));
            for len in [0usize, 1, 13, 1000] {
                let x = vals(r, len, |v| v as f32);
                let mut want = x.clone();
                all_reduce(f, 0, &mut want, ReduceOp::Sum).unwrap();
                let got = iall_reduce(af.clone(), 0, x.clone(), ReduceOp::Sum)
                    .wait()
                    .unwrap();
                assert_eq!(got, want, "all_reduce n={n} len={len}");
                let xb = vals(r, len, bf16::from_f64);
                let mut wb = xb.clone();
                all_reduce(f, 0, &mut wb, ReduceOp::Avg).unwrap();
                assert_eq!(
                    iall_reduce(af.clone(), 0, xb, ReduceOp::Avg)
                        .wait()
                        .unwrap(),
                    wb
                );
                let xi = vals(r, len, |v| (v * 1e6) as i64);
                assert_eq!(
                    ireduce_scatter(af.clone(), 1, xi.clone(), ReduceOp::Max)
                        .wait()
                        .unwrap(),
                    reduce_scatter(f, 1, &xi, ReduceOp::Max).unwrap()
                );
                assert_eq!(
                    iall_gather(af.clone(), 2, x.clone()).wait().unwrap(),
                    all_gather(f, 2, &x).unwrap()
                );
                let root = len % n;
                let mut wbc = x.clone();
                broadcast(f, 3, &mut wbc, root).unwrap();
                assert_eq!(
                    ibroadcast(af.clone(), 3, x.clone(), root).wait().unwrap(),
                    wbc
                );
                let xa = vals(r, len * n, |v: f64| v);
                assert_eq!(
                    iall_to_all(af.clone(), 4, xa.clone()).wait().unwrap(),
                    all_to_all(f, 4, &xa).unwrap()
                );
                ibarrier(af.clone(), 5).wait().unwrap();
            }
            let counts = a2a_counts(n, 5 + n as u64);
            let send = counts[r].clone();
            let recv: Vec<usize> = (0..n).map(|i| counts[i][r]).collect();
            let input: Vec<u8> = (0..send.iter().sum::<usize>())
                .map(|i| (i + r) as u8)
                .collect();
            assert_eq!(
                iall_to_all_v(af.clone(), 6, input.clone(), send.clone(), recv.clone())
                    .wait()
                    .unwrap(),
                all_to_all_v(f, 6, &input, &send, &recv).unwrap()
            );
            let shape = UlyssesShape {
                batch: 2,
                seq_local: 3,
                heads: 2 * n,
                dim: 4,
            };
            let x = vals(r, shape.seq_shard_len(), |v| v as f32);
            let y = iseq_to_heads(af.clone(), 7, x.clone(), shape)
                .wait()
                .unwrap();
            assert_eq!(y, seq_to_heads(f, 7, &x, shape).unwrap());
            assert_eq!(
                iheads_to_seq(af.clone(), 7, y.clone(), shape)
                    .wait()
                    .unwrap(),
                x
            );
            assert_eq!(heads_to_seq(f, 7, &y, shape).unwrap(), x);
            let s = seq(n, 31 + n as u64, random_decay);
            let (state, decay) = forward_local(&s, r);
            for dir in [Forward, Reverse] {
                let blocking = all_scan_diag(
                    f,
                    8,
                    DiagState {
                        state: &state,
                        decay: &decay,
                        cols: DV,
                    },
                    dir,
                    4,
                    true,
                )
                .unwrap();
                let local = OwnedDiagState {
                    state: state.clone(),
                    decay: decay.clone(),
                    cols: DV,
                };
                let nb = iall_scan_diag(af.clone(), 8, local, dir, 4, true)
                    .wait()
                    .unwrap();
                assert_eq!(nb, blocking);
                let id = vec![0.0f32; state.len()];
                let a = all_scan_with(f, 9, &state, dir, &id, add, true).unwrap();
                let b = iall_scan_with(af.clone(), 9, state.clone(), dir, id, add, true)
                    .wait()
                    .unwrap();
                assert_eq!(a, b);
            }
        });
    }
}

/// Several operations in flight at once on different channels, started in
/// different orders and waited in different orders on different ranks.
#[test]
fn several_ops_in_flight_on_different_channels() {
    for n in [2usize, 3, 4, 8] {
        run_ranks(n, move |f| {
            let (r, af) = (f.rank(), Arc::new(f.clone()));
            let x = vals(r, 5000, |v| v as f32);
            let mut want_sum = x.clone();
            all_reduce(f, 10, &mut want_sum, ReduceOp::Sum).unwrap();
            let want_gather = all_gather(f, 10, &x[..7]).unwrap();
            let want_a2a = all_to_all(f, 10, &x[..4 * n]).unwrap();
            let mut hs = (
                Some(iall_reduce(af.clone(), 0, x.clone(), ReduceOp::Sum)),
                Some(iall_gather(af.clone(), 1, x[..7].to_vec())),
                Some(iall_to_all(af.clone(), 2, x[..4 * n].to_vec())),
                Some(ibarrier(af.clone(), 3)),
            );
            // The caller computes meanwhile, then waits in a rank-dependent order.
            let busy: f64 = (0..20_000).map(|i| (i as f64).sqrt()).sum();
            assert!(busy > 0.0);
            for k in 0..4 {
                match (k + r) % 4 {
                    0 => assert_eq!(hs.0.take().unwrap().wait().unwrap(), want_sum),
                    1 => assert_eq!(hs.1.take().unwrap().wait().unwrap(), want_gather),
                    2 => assert_eq!(hs.2.take().unwrap().wait().unwrap(), want_a2a),
                    _ => hs.3.take().unwrap().wait().unwrap(),
                }
            }
        });
    }
}

/// The operation progresses while the caller's thread is blocked elsewhere:
/// rank 0 starts an all-reduce and then blocks on a receive that rank 1 only
/// sends after its own (blocking) all-reduce finished — which needs rank 0's
/// contribution. Without background progress this deadlocks and fails at the
/// deadline; no timing is involved.
#[test]
fn progress_while_the_caller_is_blocked() {
    let cfg = SimConfig {
        op_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    for n in [2usize, 3, 6] {
        try_run_ranks(cfg.clone(), n, move |f| {
            let r = f.rank();
            let x = vec![r as i32 + 1; 100];
            let want = vec![(n * (n + 1) / 2) as i32; 100];
            if r == 0 {
                let h = iall_reduce(Arc::new(f.clone()), 0, x, ReduceOp::Sum);
                let token = wait_with_deadline(f.irecv(1, 1, 0, 1).unwrap(), "token").unwrap();
                assert_eq!(token, vec![42]);
                assert_eq!(h.wait().unwrap(), want);
            } else {
                let mut v = x;
                all_reduce(f, 0, &mut v, ReduceOp::Sum).unwrap();
                assert_eq!(v, want);
                if r == 1 {
                    f.isend(0, 1, 0, vec![42]).unwrap().wait().unwrap();
                }
            }
        })
        .unwrap_or_else(|e| panic!("n={n}: {e}"));
    }
}

/// test() and wait_until() report completion; errors (argument and
/// transport) come out of wait(); a panicking operation re-raises in wait().
#[test]
fn handles_report_completion_errors_and_panics() {
    let cfg = SimConfig {
        op_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let run = try_run_ranks(cfg, 2, |f: &SimFabric| {
        let af = Arc::new(f.clone());
        let mut h = iall_reduce(af.clone(), 0, vec![1.0f64; 3], ReduceOp::Sum);
        assert!(h.wait_until(Instant::now() + Duration::from_secs(10)));
        assert!(h.test());
        assert_eq!(h.wait().unwrap(), vec![2.0; 3]);
        // Argument error: reported by wait, on every rank, no traffic.
        let e = iall_to_all(af.clone(), 1, vec![1u8; 3]).wait().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        // Transport error: a receive from a peer that never sends on channel 2
        // comes back from wait() as a Timeout naming that peer and channel.
        let peer = 1 - f.rank();
        let mut h = start(af.clone(), "lonely recv", move |f| {
            f.irecv(peer, 2, 0, 1)?.wait()
        });
        assert!(!h.wait_until(Instant::now()), "nothing can have arrived");
        let e = h.wait().unwrap_err();
        assert!(
            matches!(e, Error::Timeout { peer: p, channel: 2, .. } if p == peer),
            "{e}"
        );
        // A panic on the progress thread comes back to the caller.
        let h: OpHandle<()> = start(af, "buggy", |_| panic!("bug in a schedule"));
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.wait())).unwrap_err();
        assert_eq!(p.downcast_ref::<&str>(), Some(&"bug in a schedule"));
        f.rank()
    })
    .unwrap();
    assert_eq!(run.results, vec![0, 1]);
    let ready = OpHandle::ready(Ok(5u8));
    assert_eq!(format!("{ready:?}"), "OpHandle(ready: done)");
    assert_eq!(ready.wait().unwrap(), 5);
}

/// Over `dyn Fabric` too (the trait object is what a runtime binding passes around).
#[test]
fn nonblocking_over_dyn_fabric() {
    let out = run_ranks(3, |f| {
        let d: Arc<dyn Fabric> = Arc::new(f.clone());
        iall_reduce(d, 0, vec![f.rank() as u8; 2], ReduceOp::Sum)
            .wait()
            .unwrap()
    });
    assert!(out.iter().all(|v| v == &[3, 3]));
}
