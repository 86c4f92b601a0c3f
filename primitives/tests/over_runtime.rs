//! The primitives over the real runtime: every rank a communicator with its
//! own progress engine and transports (shared memory or TCP on loopback),
//! first as threads of this process, then as separate processes. The math is
//! checked in depth on the simulated fabric (the other test files); here the
//! point is that the same algorithms produce the same bits over real
//! transports.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use zccl_primitives::Fabric;
use zccl_primitives::alltoall::all_to_all_v;
use zccl_primitives::collectives::{all_gather, all_reduce, barrier, broadcast, reduce_scatter};
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::ring::ring_shift;
use zccl_primitives::scan::{DiagState, all_scan_diag};
use zccl_primitives::schedule::scan::ScanDirection;
use zccl_primitives::sim::run_ranks;
use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};

fn job<R: Send + 'static>(
    n: u32,
    extra: &[(&str, &str)],
    f: impl Fn(Communicator) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let mut env: HashMap<String, String> = HashMap::from([
        ("ZCCL_SOCKET_IFNAME".into(), "lo".into()),
        ("ZCCL_TIMEOUT".into(), "30".into()),
        ("ZCCL_NTHREADS".into(), "1".into()),
    ]);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let cfg = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let root = BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    let id = root.unique_id();
    let f = Arc::new(f);
    let ranks: Vec<_> = (0..n)
        .map(|r| {
            let (f, cfg) = (f.clone(), cfg.clone());
            std::thread::spawn(move || f(Communicator::init(&id, r, n, cfg).expect("init")))
        })
        .collect();
    ranks
        .into_iter()
        .map(|t| t.join().expect("rank panicked"))
        .collect()
}

/// A 1-rank communicator's collectives send no message; after `abort()`
/// (or `close()`) they still fail, naming the reason, instead of returning
/// as if nothing happened.
#[test]
fn a_one_rank_communicator_fails_its_collectives_after_abort_or_close() {
    for how in ["abort", "close"] {
        let errs = job(1, &[], move |c| {
            let mut v = vec![1.0f32; 8];
            all_reduce(&c, 0, &mut v, ReduceOp::Sum).unwrap();
            if how == "abort" {
                c.abort();
            } else {
                c.close();
            }
            let input = vec![1.0f32; 8];
            vec![
                all_reduce(&c, 0, &mut v, ReduceOp::Sum).err(),
                broadcast(&c, 0, &mut v, 0).err(),
                reduce_scatter(&c, 0, &input, ReduceOp::Sum).err(),
                barrier(&c, 0).err(),
                all_gather(&c, 0, &input).err(),
                zccl_primitives::alltoall::all_to_all(&c, 0, &input).err(),
                zccl_primitives::scan::all_scan_with(
                    &c,
                    0,
                    &input,
                    ScanDirection::Forward,
                    &[0.0; 8],
                    |a, b| a.iter().zip(b).map(|(x, y)| x + y).collect(),
                    true,
                )
                .err(),
                ring_shift(&c, 0, vec![1u8; 4], 4, 1).err(),
            ]
        });
        for (i, e) in errs[0].iter().enumerate() {
            let e = e
                .as_ref()
                .unwrap_or_else(|| panic!("{how}: op {i} returned Ok"));
            // The ring shift (to itself) goes through the engine, which
            // words it its own way.
            if i < 7 {
                assert!(
                    e.to_string().contains(&format!("{how}() called")),
                    "{how}: op {i}: {e}"
                );
            }
        }
    }
}

fn data(rank: usize, len: usize) -> Vec<i64> {
    (0..len)
        .map(|i| (i as i64 * 7919 + rank as i64 * 104_729) % 1_000_003 - 500_000)
        .collect()
}

#[test]
fn collectives_over_real_transports_match_the_serial_reference() {
    for (n, extra) in [(3u32, vec![]), (4, vec![("ZCCL_SHM_DISABLE", "1")])] {
        let out = job(n, &extra, move |c| {
            let r = Fabric::rank(&c);
            let mut res = Vec::new();
            for len in [0usize, 1, 1001, 300_000] {
                let mut v = data(r, len);
                all_reduce(&c, 0, &mut v, ReduceOp::Sum).unwrap();
                res.push(v);
                let mut m = data(r, len);
                all_reduce(&c, 1, &mut m, ReduceOp::Max).unwrap();
                res.push(m);
            }
            let g = all_gather(&c, 0, &data(r, 5)).unwrap();
            let rs = reduce_scatter(&c, 0, &data(r, 4 * n as usize + 3), ReduceOp::Sum).unwrap();
            let mut b = if r == 2 {
                data(9, 70_000)
            } else {
                vec![0; 70_000]
            };
            broadcast(&c, 0, &mut b, 2).unwrap();
            barrier(&c, 0).unwrap();
            (res, g, rs, b)
        });
        let n = n as usize;
        for (rank, (res, g, rs, b)) in out.iter().enumerate() {
            for (k, len) in [0usize, 1, 1001, 300_000].into_iter().enumerate() {
                let inputs: Vec<Vec<i64>> = (0..n).map(|r| data(r, len)).collect();
                let sum: Vec<i64> = (0..len)
                    .map(|i| inputs.iter().map(|v| v[i]).sum())
                    .collect();
                let max: Vec<i64> = (0..len)
                    .map(|i| inputs.iter().map(|v| v[i]).max().unwrap())
                    .collect();
                assert_eq!(res[2 * k], sum, "n={n} rank {rank} sum len {len}");
                assert_eq!(res[2 * k + 1], max, "n={n} rank {rank} max len {len}");
            }
            let want_g: Vec<i64> = (0..n).flat_map(|r| data(r, 5)).collect();
            assert_eq!(g, &want_g);
            assert_eq!(b, &data(9, 70_000));
            assert!(!rs.is_empty());
        }
        // reduce_scatter: the chunks of all ranks concatenated are the full sum.
        let total = 4 * n + 3;
        let inputs: Vec<Vec<i64>> = (0..n).map(|r| data(r, total)).collect();
        let full: Vec<i64> = (0..total)
            .map(|i| inputs.iter().map(|v| v[i]).sum())
            .collect();
        let joined: Vec<i64> = out.iter().flat_map(|o| o.2.clone()).collect();
        assert_eq!(joined, full);
    }
}

#[test]
fn all_to_all_v_ring_shift_and_all_scan_match_the_simulated_fabric() {
    fn counts(src: usize, dst: usize) -> usize {
        [0, 3, 17, 0, 1000, 5][(src * 7 + dst * 3) % 6]
    }
    let n = 4usize;
    let body = move |f: &dyn Fabric| {
        let r = f.rank();
        let send: Vec<usize> = (0..n).map(|d| counts(r, d)).collect();
        let recv: Vec<usize> = (0..n).map(|s| counts(s, r)).collect();
        let input: Vec<f32> = (0..send.iter().sum::<usize>())
            .map(|i| (r * 10_000 + i) as f32)
            .collect();
        let a2a = all_to_all_v(f, 0, &input, &send, &recv).unwrap();
        let shifted = ring_shift(f, 1, vec![r as u8; 100 + r], 100 + (r + n - 1) % n, 1).unwrap();
        let (rows, cols) = (8, 4);
        let state: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 + r * 17) % 97) as f32 / 97.0)
            .collect();
        let decay: Vec<f32> = (0..rows)
            .map(|i| 0.5 + ((i + r) % 5) as f32 / 10.0)
            .collect();
        let fwd = all_scan_diag(
            f,
            2,
            DiagState {
                state: &state,
                decay: &decay,
                cols,
            },
            ScanDirection::Forward,
            4,
            true,
        )
        .unwrap();
        let rev = all_scan_diag(
            f,
            2,
            DiagState {
                state: &state,
                decay: &decay,
                cols,
            },
            ScanDirection::Reverse,
            2,
            false,
        )
        .unwrap();
        (a2a, shifted, fwd.exclusive, fwd.inclusive, rev.exclusive)
    };
    let real = job(n as u32, &[], move |c| body(&c));
    let sim = run_ranks(n, move |f| body(f));
    assert_eq!(real.len(), sim.len());
    for (r, (a, b)) in real.iter().zip(&sim).enumerate() {
        assert_eq!(a.0, b.0, "all_to_all_v on rank {r}");
        assert_eq!(a.1, vec![((r + n - 1) % n) as u8; 100 + (r + n - 1) % n]);
        assert_eq!(a.1, b.1);
        // Bitwise: same algorithm, same combine order, whatever the transport.
        let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.2), bits(&b.2), "scan forward on rank {r}");
        assert_eq!(a.3.as_ref().map(bits), b.3.as_ref().map(bits));
        assert_eq!(bits(&a.4), bits(&b.4), "scan reverse on rank {r}");
    }
}

/// One rank of the multi-process test (the test binary re-executed).
fn worker() {
    let c = Communicator::from_env().expect("init from env");
    let r = Fabric::rank(&c);
    let mut v: Vec<f64> = (0..50_001).map(|i| (i % 1000) as f64 + r as f64).collect();
    all_reduce(&c, 0, &mut v, ReduceOp::Sum).unwrap();
    let n = Fabric::size(&c) as f64;
    let ok = v
        .iter()
        .enumerate()
        .all(|(i, x)| *x == n * (i % 1000) as f64 + n * (n - 1.0) / 2.0);
    println!("rank {r} all_reduce {}", if ok { "OK" } else { "WRONG" });
}

#[test]
fn all_reduce_across_processes() {
    if std::env::var_os("ZCCL_PRIMITIVES_WORKER").is_some() {
        return worker();
    }
    let n = 3;
    let ports = zccl_runtime::launcher::pick_ports(None).unwrap();
    let secret = "5a".repeat(16);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..n)
        .map(|r| {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "all_reduce_across_processes",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ZCCL_PRIMITIVES_WORKER", "1")
            .env("ZCCL_SOCKET_IFNAME", "lo")
            .env("ZCCL_TIMEOUT", "30");
            for (k, v) in zccl_runtime::launcher::rank_env(r, n, ports, &secret) {
                cmd.env(k, v);
            }
            cmd.stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    // Each child has its own deadline (ZCCL_TIMEOUT); a wedged child is still
    // killed below rather than hanging the suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (r, mut child) in children.into_iter().enumerate() {
        loop {
            if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "rank {r} failed: {text}");
        assert!(
            text.contains(&format!("rank {r} all_reduce OK")),
            "rank {r}: {text}"
        );
    }
}

/// Over real communicators (threads, shared memory and TCP): TokenRing's two
/// directions progress independently (one direction's receiver held, the
/// other waited with a deadline, then released); All-Scan block callbacks run
/// while later blocks move (causal handshake); non-blocking collectives on
/// different channels in flight at once, equal to the blocking results.
#[test]
fn overlap_and_nonblocking_over_real_communicators() {
    use common::sp::{
        DV, forward_local, random_decay, scan_blocks_handshake, seq, two_directions_concurrent,
    };
    use zccl_primitives::alltoall::iall_to_all_v;
    use zccl_primitives::collectives::{iall_gather, iall_reduce, ibarrier};
    use zccl_primitives::token_ring::TokenRingChannels;
    for (n, extra) in [
        (3u32, vec![("ZCCL_SHM_RING_BYTES", "65536")]),
        (4, vec![("ZCCL_SHM_DISABLE", "1")]),
    ] {
        let body = move |c: Communicator| {
            let (r, nn) = (Fabric::rank(&c), Fabric::size(&c));
            let ch = TokenRingChannels { q: 5, out: 6 };
            for hold_q in [true, false] {
                two_directions_concurrent(&c, ch, hold_q, 1 << 20, 4);
            }
            let s = seq(nn, 77, random_decay);
            let (state, gamma) = forward_local(&s, r);
            let (cb, o) = scan_blocks_handshake(
                &c,
                &state,
                &gamma,
                DV,
                ScanDirection::Reverse,
                4,
                7,
                8,
                &|_| {},
            );
            assert_eq!(cb, o.exclusive);
            let c = Arc::new(c);
            let x = data(r, 10_001);
            let counts: Vec<usize> = (0..nn).map(|d| (r + 2 * d) % 4).collect();
            let recv: Vec<usize> = (0..nn).map(|src| (src + 2 * r) % 4).collect();
            let a2a_in: Vec<i64> = (0..counts.iter().sum::<usize>() as i64).collect();
            let h1 = iall_reduce(c.clone(), 10, x.clone(), ReduceOp::Sum);
            let h2 = iall_gather(c.clone(), 11, x[..3].to_vec());
            let h3 = iall_to_all_v(c.clone(), 12, a2a_in.clone(), counts.clone(), recv.clone());
            let h4 = ibarrier(c.clone(), 13);
            let mut blocking = x.clone();
            all_reduce(&*c, 14, &mut blocking, ReduceOp::Sum).unwrap();
            let g = all_gather(&*c, 14, &x[..3]).unwrap();
            let a = all_to_all_v(&*c, 14, &a2a_in, &counts, &recv).unwrap();
            h4.wait().unwrap();
            assert_eq!(h3.wait().unwrap(), a);
            assert_eq!(h2.wait().unwrap(), g);
            assert_eq!(h1.wait().unwrap(), blocking);
            (o.exclusive, blocking)
        };
        let out = job(n, &extra, body);
        let n = n as usize;
        let inputs: Vec<Vec<i64>> = (0..n).map(|r| data(r, 10_001)).collect();
        let sum: Vec<i64> = (0..10_001)
            .map(|i| inputs.iter().map(|v| v[i]).sum())
            .collect();
        for (r, (_, b)) in out.iter().enumerate() {
            assert_eq!(b, &sum, "n={n} rank {r}");
        }
    }
}

/// A callback error midway through a ring pass leaves the ranks in
/// different steps of it; before `Fabric::abandon` the failing rank's next
/// pass on the channel sent blocks the others took for the first pass's
/// (3 ranks: rank 2's first pass returned Ok with rank 1's second-pass
/// block). Now every rank's pass on that channel fails, the first one at
/// once, naming the rank that gave up, and other channels still work.
#[test]
fn a_callback_error_fails_the_channel_on_every_rank_instead_of_shifting_the_next_op() {
    let t0 = std::time::Instant::now();
    let out = job(3, &[], |c| {
        let r = Fabric::rank(&c);
        let mut rounds = Vec::new();
        for k in 0..3usize {
            let mut seen = Vec::new();
            let res = zccl_primitives::ring::ring_pass_elems(
                &c,
                1,
                1,
                vec![(100 * k + r) as f32; 16],
                |_| 16,
                |b| {
                    if k == 0 && r == 1 && b.step == 0 {
                        return Err(zccl_primitives::Error::InvalidArgument("cb fails".into()));
                    }
                    seen.push((b.origin, b.data.to_vec()));
                    Ok(())
                },
            );
            rounds.push((res.map_err(|e| e.to_string()), seen));
        }
        // Another channel is in step.
        let mut other = Vec::new();
        zccl_primitives::ring::ring_pass_elems(
            &c,
            2,
            1,
            vec![r as f32; 4],
            |_| 4,
            |b| {
                other.push((b.origin, b.data[0]));
                Ok(())
            },
        )
        .expect("another channel");
        (rounds, other)
    });
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    for (r, (rounds, other)) in out.iter().enumerate() {
        for (k, (res, seen)) in rounds.iter().enumerate() {
            // Whatever a callback saw is the right pass's data.
            for (origin, data) in seen {
                let want = (100 * k + origin) as f32;
                assert!(
                    data.iter().all(|&x| x == want),
                    "rank {r} pass {k}: {origin} {data:?}"
                );
            }
            match (k, res) {
                (0, Err(e)) if r == 1 => assert!(e.contains("cb fails"), "{e}"),
                (0, Err(e)) => assert!(e.contains("rank 1 gave up"), "rank {r}: {e}"),
                // Rank 0 needs nothing rank 1 would have sent after its
                // callback failed: it may finish the first pass (its data
                // checked above) before the news comes. Rank 2 waits for
                // rank 1's second step.
                (0, Ok(())) if r == 0 => {}
                (_, Err(e)) => assert!(e.contains("out of step"), "rank {r} pass {k}: {e}"),
                (_, Ok(())) => panic!("rank {r} pass {k} returned Ok on a channel out of step"),
            }
        }
        let mut other = other.clone();
        other.sort_by_key(|o| o.0);
        assert_eq!(other, vec![(0, 0.0), (1, 1.0), (2, 2.0)], "rank {r}");
    }
}

/// A rank that times out in an all-reduce stops there: before, its next
/// all-reduce on the channel sent its messages where the late rank's first
/// one still expected the rest of the first's (2 ranks, 32768 f32, the
/// late rank 0.6 s past the timeout: both returned `Ok` with half of the
/// elements wrong). Now the ops after a timeout fail at once, and no op
/// returns wrong data. (The late rank starts 1.5 s past the other's
/// deadline.)
#[test]
fn ops_after_a_timeout_fail_instead_of_matching_another_ops_messages() {
    let done = Arc::new(std::sync::Barrier::new(2));
    let out = job(2, &[("ZCCL_TIMEOUT", "2")], move |c| {
        let r = Fabric::rank(&c);
        if r == 1 {
            std::thread::sleep(Duration::from_millis(3500));
        }
        let ops = (0..3)
            .map(|k| {
                let t = std::time::Instant::now();
                let mut v = vec![(k * 10 + r) as f32; 32768];
                let res = all_reduce(&c, 1, &mut v, ReduceOp::Sum);
                (res.map_err(|e| e.to_string()), v, t.elapsed())
            })
            .collect::<Vec<_>>();
        // Neither rank closes its communicator before the other is done.
        done.wait();
        ops
    });
    for (r, ops) in out.iter().enumerate() {
        for (k, (res, v, took)) in ops.iter().enumerate() {
            match res {
                Ok(()) => {
                    let want = (k * 10 + k * 10 + 1) as f32;
                    assert!(v.iter().all(|&x| x == want), "rank {r} op {k}: wrong data");
                }
                Err(e) if k > 0 => {
                    assert!(e.contains("out of step"), "rank {r} op {k}: {e}");
                    assert!(*took < Duration::from_secs(1), "rank {r} op {k}: {took:?}");
                }
                Err(e) => assert!(e.contains("timed out"), "rank {r} op {k}: {e}"),
            }
        }
        assert!(
            ops[0].0.is_err(),
            "rank {r}: the first op cannot have completed"
        );
    }
}
