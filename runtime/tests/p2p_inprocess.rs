//! Semantics of the communicator with every rank as a thread of this process
//! (fast; the multi-process acceptance tests are in `multiprocess.rs`).

use std::time::{Duration, Instant};

mod thread_ranks;

use thread_ranks::{config, job};
use zccl_runtime::{Communicator, Error, Op, UniqueId};

fn pattern(src: u32, len: usize, salt: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(31) ^ (u64::from(src) * 131) ^ salt) as u8)
        .collect()
}

#[test]
fn ring_shift_sizes_and_types() {
    job(3, &[], |c| {
        let (r, n) = (c.rank(), c.size());
        for offset in [1, n - 1] {
            let (to, from) = ((r + offset) % n, (r + n - offset) % n);
            for len in [0usize, 1, 7, 4097, (1 << 20) + 3] {
                let out = c
                    .batch(vec![
                        Op::send(to, pattern(r, len, len as u64)),
                        Op::recv::<u8>(from, len),
                    ])
                    .unwrap()
                    .wait()
                    .unwrap();
                let got = out[1].as_ref().unwrap().to_buffer::<u8>().unwrap();
                assert_eq!(
                    got.into_vec(),
                    pattern(from, len, len as u64),
                    "rank {r} len {len}"
                );
            }
        }
        let f64s: Vec<f64> = (0..1000)
            .map(|i| f64::from(r) + f64::from(i) * 0.5)
            .collect();
        let h = c.isend((r + 1) % n, f64s).unwrap();
        let got = c
            .irecv::<f64>((r + n - 1) % n, 1000)
            .unwrap()
            .wait()
            .unwrap();
        h.wait().unwrap();
        assert_eq!(got[3], f64::from((r + n - 1) % n) + 1.5);
        let bf: Vec<zccl_runtime::bf16> = vec![zccl_runtime::bf16::from_f32(r as f32); 5];
        let h = c.isend((r + 1) % n, bf).unwrap();
        let got = c
            .irecv::<zccl_runtime::bf16>((r + n - 1) % n, 5)
            .unwrap()
            .wait()
            .unwrap();
        h.wait().unwrap();
        assert_eq!(got[4].to_f32(), ((r + n - 1) % n) as f32);
    });
}

/// A size or type mismatch fails the receive naming both sides, then the
/// channel on both ranks (the small send itself completed when it went,
/// eager, as `MPI_Send`'s; the sender learns it at its next op there); a
/// send larger than the eager size fails itself. Other channels stay usable.
#[test]
fn mismatch_fails_both_sides_with_both_sizes() {
    let big = zccl_runtime::flow::EAGER_MAX as usize / 4 + 2;
    let res = job(2, &[], move |c| {
        let r = c.rank();
        let mut errs = Vec::new();
        // (channel, what rank 0 sends, what rank 1 expects)
        for (ch, case) in [(1u32, 0), (2, 1), (3, 2)] {
            let chan = c.channel(ch);
            if r == 0 {
                let sent = match case {
                    0 => chan.isend(1, vec![1.0f32; 10]).unwrap().wait(),
                    1 => chan.isend(1, vec![1i32; 4]).unwrap().wait(),
                    _ => chan.isend(1, vec![1.0f32; big]).unwrap().wait(),
                };
                match (case, sent) {
                    // Eager: complete; the channel's next op fails.
                    (0 | 1, Ok(())) => errs.push(chan.recv::<u8>(1, 1).unwrap_err()),
                    (2, Err(e)) => errs.push(e),
                    (_, other) => panic!("case {case}: {other:?}"),
                }
            } else {
                let e = match case {
                    0 => chan.irecv::<f32>(0, 12).unwrap().wait().unwrap_err(),
                    1 => chan.irecv::<f32>(0, 4).unwrap().wait().unwrap_err(),
                    _ => chan.irecv::<f32>(0, big - 1).unwrap().wait().unwrap_err(),
                };
                errs.push(e);
            }
        }
        // Another channel stays usable after a mismatch.
        let ok = if r == 0 {
            c.send(1, vec![7u8; 3]).map(|_| vec![])
        } else {
            c.recv::<u8>(0, 3).map(|b| b.into_vec())
        };
        (errs, ok.unwrap())
    });
    let big_b = 4 * big;
    for (r, (errs, _)) in res.iter().enumerate() {
        let want = [
            ("40 B (10 x f32)", "48 B (12 x f32)"),
            ("16 B (4 x i32)", "16 B (4 x f32)"),
            (&*format!("{big_b} B"), &*format!("{} B", big_b - 4)),
        ];
        for (e, (a, b)) in errs.iter().zip(want) {
            let s = e.to_string();
            assert!(s.contains(a) && s.contains(b), "rank {r}: {s}");
        }
        if r == 1 {
            assert!(
                errs.iter().all(|e| matches!(e, Error::Mismatch { .. })),
                "{errs:?}"
            );
            assert!(
                errs[0].to_string().contains("send is 40 B (10 x f32)"),
                "{}",
                errs[0]
            );
        } else {
            assert!(matches!(errs[0], Error::Disagreement { .. }), "{}", errs[0]);
            assert!(matches!(errs[2], Error::Mismatch { .. }), "{}", errs[2]);
        }
    }
    assert_eq!(res[1].1, vec![7u8; 3]);
}

#[test]
fn per_call_timeout_names_the_peer() {
    let res = job(2, &[], |c| {
        if c.rank() == 0 {
            let t0 = Instant::now();
            let e = c
                .channel(3)
                .with_timeout(Duration::from_millis(300))
                .irecv::<i64>(1, 2)
                .unwrap()
                .wait()
                .unwrap_err();
            Some((e, t0.elapsed()))
        } else {
            std::thread::sleep(Duration::from_millis(600));
            None
        }
    });
    let (e, took) = res[0].clone().unwrap();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("recv seq 0 from rank 1 on channel 3") && s.contains("NIC lo"),
        "{s}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn abort_from_another_thread_is_bounded_and_idempotent() {
    let res = job(2, &[], |c| {
        if c.rank() == 0 {
            let h = c.irecv::<u8>(1, 10).unwrap();
            let c2 = c.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                let t0 = Instant::now();
                c2.abort();
                c2.abort();
                t0.elapsed()
            });
            let t0 = Instant::now();
            let e = h.wait().unwrap_err();
            let abort_took = t.join().unwrap();
            assert!(abort_took < Duration::from_secs(2), "{abort_took:?}");
            let after = c.isend(1, vec![1u8]).unwrap().wait().unwrap_err();
            Some((e, t0.elapsed(), after))
        } else {
            // Rank 1 learns that rank 0 aborted.
            let e = c.irecv::<u8>(0, 1).unwrap().wait().unwrap_err();
            assert!(e.to_string().contains("rank 0"), "{e}");
            None
        }
    });
    let (e, took, after) = res[0].clone().unwrap();
    assert!(matches!(e, Error::Aborted { .. }), "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(matches!(after, Error::Aborted { .. }), "{after}");
}

#[test]
fn channels_are_independent_and_ordered() {
    job(2, &[], |c| {
        if c.rank() == 0 {
            // Channel 1: a receive whose send comes late does not hold channel 0 back.
            let late = c.channel(1).irecv::<u8>(1, 4).unwrap();
            let x = c.channel(0).recv::<u8>(1, 4).unwrap();
            assert_eq!(&x[..], &[0, 0, 0, 0]);
            assert!(!late.test());
            // Channel 2: `b` (a self-send) has its data first but completes after `a`.
            let ch2 = c.channel(2);
            let a = ch2.irecv::<u8>(1, 1).unwrap();
            let b = ch2.irecv::<i32>(0, 2).unwrap();
            let s = ch2.isend(0, vec![-1i32, 2]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert!(!a.test() && !b.test() && !s.test());
            c.channel(0).send(1, vec![1u8]).unwrap();
            assert_eq!(&a.wait().unwrap()[..], &[5]);
            assert_eq!(&b.wait().unwrap()[..], &[-1, 2]);
            s.wait().unwrap();
            assert_eq!(&late.wait().unwrap()[..], &[1, 1, 1, 1]);
        } else {
            c.channel(0).send(0, vec![0u8; 4]).unwrap();
            c.channel(0).recv::<u8>(0, 1).unwrap();
            c.channel(2).send(0, vec![5u8]).unwrap();
            c.channel(1).send(0, vec![1u8; 4]).unwrap();
        }
    });
}

#[test]
fn async_wait_and_shuffled_batches() {
    job(4, &[], |c| {
        let (r, n) = (c.rank(), c.size());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for it in 0..20u64 {
            let mut ops = Vec::new();
            for p in (0..n).filter(|&p| p != r) {
                ops.push(Op::send(
                    p,
                    pattern(r, (it as usize * 13 + p as usize) % 300, it),
                ));
                ops.push(Op::recv::<u8>(p, (it as usize * 13 + r as usize) % 300));
            }
            // A different op order on every rank and iteration.
            let k = (r as usize * 7 + it as usize * 3) % ops.len();
            ops.rotate_left(k);
            if (r + it as u32).is_multiple_of(2) {
                ops.reverse();
            }
            let expect: Vec<Option<(u32, usize)>> = ops
                .iter()
                .map(|o| match o {
                    Op::Recv { peer, count, .. } => Some((*peer, *count)),
                    Op::Send { .. } => None,
                })
                .collect();
            let out = rt.block_on(c.batch(ops).unwrap().wait_async()).unwrap();
            for (got, want) in out.iter().zip(expect) {
                if let Some((peer, len)) = want {
                    assert_eq!(got.as_ref().unwrap().bytes(), &pattern(peer, len, it)[..]);
                }
            }
        }
    });
}

#[test]
fn clean_close_of_a_peer_fails_only_its_ops() {
    let res = job(3, &[], |c| {
        match c.rank() {
            0 => {
                let from1 = c.irecv::<u8>(1, 8).unwrap();
                c.send(2, vec![1u8]).unwrap(); // rank 2 is alive
                std::thread::sleep(Duration::from_millis(300)); // rank 1 has gone by now
                let e = from1.wait().unwrap_err();
                // Ops with other ranks still work.
                c.send(2, vec![2u8]).unwrap();
                Some(e)
            }
            1 => {
                drop(c);
                None
            }
            _ => {
                c.recv::<u8>(0, 1).unwrap();
                c.recv::<u8>(0, 1).unwrap();
                None
            }
        }
    });
    let e = res[0].clone().unwrap();
    assert!(matches!(e, Error::PeerClosed { .. }), "{e}");
    assert!(e.to_string().contains("rank 1 closed"), "{e}");
}

#[test]
fn bad_ifname_lists_existing_interfaces() {
    let id = UniqueId::new(
        "127.0.0.1:9".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
    );
    let e =
        Communicator::init(&id, 0, 2, config(&[("ZCCL_SOCKET_IFNAME", "nosuch0")])).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("nosuch0") && s.contains("lo (127.0.0.1)"), "{s}");
}

#[test]
fn single_rank_and_self_send() {
    job(1, &[], |c| {
        assert_eq!(
            (c.rank(), c.size(), c.local_rank(), c.local_size()),
            (0, 1, 0, 1)
        );
        let out = c
            .batch(vec![
                Op::recv::<f32>(0, 3),
                Op::send(0, vec![1.0f32, 2.0, 3.0]),
            ])
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(
            &out[0].as_ref().unwrap().to_buffer::<f32>().unwrap()[..],
            &[1.0, 2.0, 3.0]
        );
        assert!(c.isend(5, vec![0u8]).is_err());
    });
}

#[test]
fn local_ranks_follow_host_identity() {
    let res = job(3, &[], |c| (c.local_rank(), c.local_size()));
    assert_eq!(res, vec![(0, 3), (1, 3), (2, 3)]);
}

#[test]
fn a_rank_that_issues_late_is_waited_for() {
    job(2, &[], move |c| {
        if c.rank() == 1 {
            std::thread::sleep(Duration::from_millis(300));
        }
        let peer = 1 - c.rank();
        c.batch(vec![
            Op::send(peer, vec![c.rank() as u8]),
            Op::recv::<u8>(peer, 1),
        ])
        .unwrap()
        .wait()
        .unwrap();
    });
}

/// Even/odd split with keys that reverse the order; data exchanged in each
/// half; a duplicate of the world and the halves never match each other's
/// traffic even on the same channel, peer and sequence number.
fn split_even_odd(n: u32) {
    let res = job(n, &[], |c| {
        let (r, n) = (c.rank(), c.size());
        let color = r % 2;
        let half = c
            .split(Some(color), -(r as i32))
            .unwrap()
            .expect("every rank has a color");
        // Members in (key, rank) order: descending world rank.
        let mut want: Vec<u32> = (0..n).filter(|w| w % 2 == color).collect();
        want.reverse();
        assert_eq!(half.world_ranks(), &want[..], "rank {r}");
        assert_eq!(half.size(), want.len() as u32);
        assert_eq!(
            half.rank(),
            want.iter().position(|&w| w == r).unwrap() as u32
        );
        assert_ne!(half.comm_id(), c.comm_id());
        assert_eq!(
            (half.local_rank(), half.local_size()),
            (half.rank(), half.size())
        );
        // A ring inside the half.
        let (hr, hn) = (half.rank(), half.size());
        let (to, from) = ((hr + 1) % hn, (hr + hn - 1) % hn);
        let out = half
            .batch(vec![
                Op::send(to, vec![r as i64, i64::from(color)]),
                Op::recv::<i64>(from, 2),
            ])
            .unwrap()
            .wait()
            .unwrap();
        let got = out[1].as_ref().unwrap().to_buffer::<i64>().unwrap();
        assert_eq!(
            &got[..],
            &[i64::from(want[from as usize]), i64::from(color)]
        );

        // Isolation on channel 77, where every communicator is at seq 0.
        let dup = c.split(Some(0), 0).unwrap().unwrap();
        assert_eq!(dup.world_ranks(), &(0..n).collect::<Vec<_>>()[..]);
        assert!(dup.comm_id() != c.comm_id() && dup.comm_id() != half.comm_id());
        let (right, left) = ((r + 1) % n, (r + n - 1) % n);
        let world_recv = c
            .channel(77)
            .with_timeout(Duration::from_millis(400))
            .irecv::<u8>(left, 3)
            .unwrap();
        let half_send = half.channel(77).isend(to, vec![2u8; 3]).unwrap();
        let dup_send = dup.channel(77).isend(right, vec![1u8; 3]).unwrap();
        // Neither the dup's nor the half's message matches the world's receive.
        let e = world_recv.wait().unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "rank {r}: {e}");
        assert_eq!(
            &dup.channel(77).recv::<u8>(left, 3).unwrap()[..],
            &[1, 1, 1]
        );
        assert_eq!(
            &half.channel(77).recv::<u8>(from, 3).unwrap()[..],
            &[2, 2, 2]
        );
        dup_send.wait().unwrap();
        half_send.wait().unwrap();
        // The world communicator is unaffected: its own exchange on channel 77
        // (seq 1 on the receive side now, seq 0 on the send side: use a batch
        // that lines both up again).
        let out = c
            .channel(78)
            .batch(vec![
                Op::send(right, vec![r as u8]),
                Op::recv::<u8>(left, 1),
            ])
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(out[1].as_ref().unwrap().bytes(), &[left as u8]);
        // And the other way round: no rank ends (closing its communicator,
        // which fails a neighbour's pending receive from it) before both
        // neighbours are past their timed-out receive (small sends are eager:
        // completing one does not wait for the peer).
        c.channel(79)
            .batch(vec![Op::send(left, vec![0u8]), Op::recv::<u8>(right, 1)])
            .unwrap()
            .wait()
            .unwrap();
        (half.comm_id(), dup.comm_id())
    });
    // Context ids agree on every rank.
    assert!(res.windows(2).all(|w| w[0] == w[1]), "{res:?}");
}

#[test]
fn split_even_odd_n4() {
    split_even_odd(4);
}

#[test]
fn split_even_odd_n5() {
    split_even_odd(5);
}

#[test]
fn split_with_no_color_and_nested_split() {
    let res = job(4, &[], |c| {
        let r = c.rank();
        // Rank 0 opts out (MPI_UNDEFINED).
        let sub = c.split((r != 0).then_some(1), 0).unwrap();
        if r == 0 {
            assert!(sub.is_none());
            return None;
        }
        let sub = sub.unwrap();
        assert_eq!(sub.world_ranks(), &[1, 2, 3]);
        assert_eq!(sub.rank(), r - 1);
        // Split the sub-communicator again: {1} and {2, 3}.
        let inner = sub.split(Some(u32::from(r >= 2)), 0).unwrap().unwrap();
        if r >= 2 {
            assert_eq!(inner.world_ranks(), &[2, 3]);
            let peer = 1 - inner.rank();
            let out = inner
                .batch(vec![Op::send(peer, vec![r as u8]), Op::recv::<u8>(peer, 1)])
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!(
                out[1].as_ref().unwrap().bytes(),
                &[inner.world_ranks()[peer as usize] as u8]
            );
        } else {
            assert_eq!((inner.size(), inner.rank()), (1, 0));
            // Self-send in a communicator of one.
            let out = inner
                .batch(vec![Op::recv::<u8>(0, 1), Op::send(0, vec![9u8])])
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!(out[0].as_ref().unwrap().bytes(), &[9]);
        }
        // A peer outside the communicator is rejected.
        assert!(inner.isend(5, vec![0u8]).is_err());
        Some(inner.comm_id())
    });
    assert!(res[0].is_none());
    assert!(res[1].is_some() && res[2] == res[3], "{res:?}");
}

#[test]
fn ranks_of_one_host_use_shared_memory_unless_disabled() {
    let shm = job(3, &[], |c| {
        (0..3).map(|p| c.uses_shm(p)).collect::<Vec<_>>()
    });
    for (r, v) in shm.iter().enumerate() {
        for (p, &s) in v.iter().enumerate() {
            assert_eq!(s, p != r, "rank {r} peer {p}");
        }
    }
    let tcp = job(2, &[("ZCCL_SHM_DISABLE", "1")], |c| {
        c.uses_shm(1 - c.rank())
    });
    assert_eq!(tcp, vec![false, false]);
}

/// Lent sends deliver exactly the lent bytes over shared memory (CMA: the
/// peer copies them from the lender's buffer), over TCP and to itself (both
/// copy them when issued); once a handle is waited, the buffer is the
/// lender's again: rewriting it changes nothing already sent.
#[test]
fn lent_sends_deliver_the_lent_bytes_and_free_the_buffer() {
    for shm in ["0", "1"] {
        let out = job(2, &[("ZCCL_SHM_DISABLE", shm)], |c| {
            let (r, peer) = (c.rank(), 1 - c.rank());
            let ch = c.channel(1);
            let sizes = [0usize, 1000, 3 << 20, (1 << 20) + 7];
            let recvs: Vec<_> = sizes
                .iter()
                .map(|&len| ch.irecv::<u8>(peer, len).unwrap())
                .collect();
            let self_recv = ch.irecv::<u8>(r, 4096).unwrap();
            let mut bufs: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| pattern(r, len, i as u64))
                .collect();
            let mine = pattern(r, 4096, 99);
            // SAFETY: every buffer stays untouched until its handle is waited.
            let sends: Vec<_> = bufs
                .iter()
                .map(|b| unsafe { ch.isend_lent(peer, b) }.unwrap())
                .collect();
            let to_self = unsafe { ch.isend_lent(r, &mine) }.unwrap();
            for s in sends {
                s.wait().unwrap();
            }
            to_self.wait().unwrap();
            for b in &mut bufs {
                b.iter_mut().for_each(|x| *x = !*x);
            }
            let got: Vec<Vec<u8>> = recvs
                .into_iter()
                .map(|h| h.wait().unwrap().into_vec())
                .collect();
            assert_eq!(self_recv.wait().unwrap().into_vec(), mine);
            got
        });
        for (r, got) in out.iter().enumerate() {
            let from = 1 - r as u32;
            for (i, g) in got.iter().enumerate() {
                let want = pattern(from, [0usize, 1000, 3 << 20, (1 << 20) + 7][i], i as u64);
                assert!(
                    g == &want,
                    "shm disabled {shm}: rank {r} message {i} differs"
                );
            }
        }
    }
}

/// Receives into the caller's buffer: a large same-host message lands there
/// by CMA as it arrives; a small one, a TCP one, one sent before the
/// receive was posted and one to itself are copied in at the match; a size
/// mismatch fails and leaves the buffer alone; a buffer given back before
/// its message arrived is never written.
#[test]
fn receives_into_the_callers_buffer() {
    for shm in ["0", "1"] {
        let out = job(2, &[("ZCCL_SHM_DISABLE", shm)], move |c| {
            let (r, peer) = (c.rank(), 1 - c.rank());
            let ch = c.channel(2);
            let big = 3 << 20;
            let mut a = vec![0u8; big];
            let mut b = vec![0u8; 1000];
            let mut m = vec![0u8; 64 << 10];
            let mut own = vec![0u8; 64];
            // SAFETY (all below): every buffer is untouched until its
            // handle is waited or dropped.
            let ra = unsafe { ch.irecv_into(peer, &mut a) }.unwrap();
            let rb = unsafe { ch.irecv_into(peer, &mut b) }.unwrap();
            let rm = unsafe { ch.irecv_into(peer, &mut m) }.unwrap();
            let ro = unsafe { ch.irecv_into(r, &mut own) }.unwrap();
            // Both ranks posted their receives before either sends (a
            // message that arrives first is copied in at the match instead).
            let sync = c.channel(9);
            let ready = sync.isend(peer, vec![1u8]).unwrap();
            sync.irecv::<u8>(peer, 1).unwrap().wait().unwrap();
            ready.wait().unwrap();
            let sa = ch.isend(peer, pattern(r, big, 1)).unwrap();
            let sb = ch.isend(peer, pattern(r, 1000, 2)).unwrap();
            let sm = ch.isend(peer, pattern(r, 64 << 10, 6)).unwrap();
            let so = ch.isend(r, pattern(r, 64, 3)).unwrap();
            let until = Instant::now() + Duration::from_secs(10);
            while !ra.test() {
                assert!(Instant::now() < until);
                std::thread::yield_now();
            }
            let landed = ra.landed();
            ra.wait().unwrap();
            rb.wait().unwrap();
            rm.wait().unwrap();
            ro.wait().unwrap();
            for s in [sa, sb, sm, so] {
                s.wait().unwrap();
            }
            assert!(a == pattern(peer, big, 1), "large message");
            assert!(b == pattern(peer, 1000, 2), "small message");
            // (Through the shared-memory ring, and into the buffer straight
            // from it when a waiting thread's poll takes it.)
            assert!(m == pattern(peer, 64 << 10, 6), "medium message");
            assert!(own == pattern(r, 64, 3), "to itself");
            // Sent before the receive is posted: copied in at the match.
            let early = ch.isend(peer, pattern(r, big, 4)).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut c2 = vec![0u8; big];
            unsafe { ch.irecv_into(peer, &mut c2) }
                .unwrap()
                .wait()
                .unwrap();
            early.wait().unwrap();
            assert!(c2 == pattern(peer, big, 4), "early message");
            // Sent as (or just before) its receive is posted, a CMA message
            // of more than 1 MiB waits for the receive's zone (up to 33 ms at
            // 64 MiB) and lands in it, instead of a buffer of its own.
            // (Buffers made first and the ranks lined up, so that the two
            // sends go within moments of each other: a rank still building
            // its buffers when the peer's message came would post its
            // receive after the wait, in a slow debug build.)
            let huge = 64 << 20;
            let payload = pattern(r, huge, 5);
            let mut e = vec![0u8; huge];
            let ready = sync.isend(peer, vec![2u8]).unwrap();
            sync.irecv::<u8>(peer, 1).unwrap().wait().unwrap();
            ready.wait().unwrap();
            let late = ch.isend(peer, payload).unwrap();
            let re = unsafe { ch.irecv_into(peer, &mut e) }.unwrap();
            while !re.test() {
                assert!(Instant::now() < until + Duration::from_secs(10));
                std::thread::yield_now();
            }
            let landed_late = re.landed();
            re.wait().unwrap();
            late.wait().unwrap();
            assert!(e == pattern(peer, huge, 5), "late receive");
            // A mismatch fails the receive (and then the channel, on both
            // ranks: both ranks mismatch here, and the one that finds it
            // second may already have the other's disagreement); the buffer
            // is not written. Each on a channel of its own.
            let ch = c.channel(5).peerwise();
            let mut d = vec![7u8; 10];
            let rd = unsafe { ch.irecv_into(peer, &mut d) }.unwrap();
            let sd = ch.isend(peer, vec![1u8; 12]).unwrap();
            let bad = |r: Result<_, Error>| {
                matches!(r, Err(Error::Mismatch { .. } | Error::Disagreement { .. }))
            };
            assert!(bad(rd.wait()));
            let _ = sd.wait(); // eager: it may have completed
            assert_eq!(d, vec![7u8; 10]);
            // Also for a message the ring could have landed.
            let ch = c.channel(6);
            let mut d = vec![7u8; 32 << 10];
            let rd = unsafe { ch.irecv_into(peer, &mut d) }.unwrap();
            let sd = ch.isend(peer, vec![1u8; (32 << 10) + 8]).unwrap();
            assert!(bad(rd.wait()));
            let _ = sd.wait();
            assert!(d.iter().all(|&x| x == 7));
            (landed, landed_late)
        });
        // Over shared memory the large messages landed (CMA); over TCP
        // they were copied in at the match.
        let want = shm == "0";
        assert_eq!(out, vec![(want, want); 2], "shm disabled {shm}");
    }
}

/// Plain receives of 4 MiB or more from a same-host peer: the CMA copy
/// lands in the receive's own buffer (it does not wait for a zone a plain
/// receive would never post); a message that came before its receive was
/// posted is handed over as it came; a smaller one comes in the
/// transport's buffer; over TCP nothing lands. Blocking, non-blocking and
/// batch.
#[test]
fn plain_receives_of_large_same_host_messages_land_in_their_own_buffer() {
    for shm in ["0", "1"] {
        let out = job(2, &[("ZCCL_SHM_DISABLE", shm)], move |c| {
            let (r, peer) = (c.rank(), 1 - c.rank());
            let (ch, sync) = (c.channel(2), c.channel(9));
            let line_up = || {
                let s = sync.isend(peer, vec![1u8]).unwrap();
                sync.irecv::<u8>(peer, 1).unwrap().wait().unwrap();
                s.wait().unwrap();
            };
            let mut landed = Vec::new();
            for (i, len) in [(1usize << 20) + 8, 4 << 20, 8 << 20]
                .into_iter()
                .enumerate()
            {
                // Posted first, then sent.
                let h = ch.irecv::<u8>(peer, len).unwrap();
                line_up();
                let s = ch.isend(peer, pattern(r, len, i as u64)).unwrap();
                let until = Instant::now() + Duration::from_secs(20);
                while !h.test() {
                    assert!(Instant::now() < until);
                    std::thread::yield_now();
                }
                landed.push(h.landed());
                assert!(
                    h.wait().unwrap().to_vec() == pattern(peer, len, i as u64),
                    "posted {len}"
                );
                s.wait().unwrap();
                // Sent well before the receive is posted.
                let s = ch.isend(peer, pattern(r, len, 10 + i as u64)).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                let got = ch.recv::<u8>(peer, len).unwrap();
                assert!(
                    got.to_vec() == pattern(peer, len, 10 + i as u64),
                    "early {len}"
                );
                s.wait().unwrap();
            }
            // In a batch, with a small receive beside it.
            let len = 4 << 20;
            let b = ch
                .batch(vec![
                    Op::send(peer, pattern(r, len, 20)),
                    Op::recv::<u8>(peer, len),
                    Op::send(peer, pattern(r, 16, 21)),
                    Op::recv::<u8>(peer, 16),
                ])
                .unwrap()
                .wait()
                .unwrap();
            let bytes = |o: &Option<zccl_runtime::Received>| o.as_ref().unwrap().bytes().to_vec();
            assert!(bytes(&b[1]) == pattern(peer, len, 20), "batch, large");
            assert_eq!(bytes(&b[3]), pattern(peer, 16, 21), "batch, small");
            landed
        });
        // Over shared memory the posted ones of 4 MiB and more landed (a
        // smaller one came in the transport's buffer); over TCP none did.
        let want = shm == "0";
        assert_eq!(out, vec![vec![false, want, want]; 2], "shm disabled {shm}");
    }
}

#[test]
fn a_receive_buffer_given_back_early_is_never_written() {
    let out = job(2, &[], |c| {
        let ch = c.channel(3);
        let big = 2 << 20;
        if c.rank() == 1 {
            let mut buf = vec![5u8; big];
            // SAFETY: the handle is dropped before `buf` is read.
            let h = unsafe { ch.irecv_into(0, &mut buf) }.unwrap();
            drop(h);
            // The message the dropped receive would have matched arrives
            // now (rank 0 sends after this one is told to go ahead).
            ch.isend(0, vec![1u8]).unwrap().wait().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            buf.iter().all(|&b| b == 5)
        } else {
            ch.irecv::<u8>(1, 1).unwrap().wait().unwrap();
            // Completes: the dropped receive still consumes the message.
            ch.isend(1, pattern(0, big, 9)).unwrap().wait().unwrap();
            true
        }
    });
    assert_eq!(out, vec![true, true]);
}

#[test]
fn a_small_receive_into_memory_is_copied_in_by_its_wait_or_its_drop_and_never_after() {
    // Small receives into memory post no landing zone: the message comes
    // in a buffer of the transport's and the handle copies it in, at its
    // wait, or at its drop if the message came before (as a zone filled at
    // the match was); dropped before its message, it never writes the
    // buffer, and the channel goes on with the next message.
    for shm in ["0", "1"] {
        let out = job(2, &[("ZCCL_SHM_DISABLE", shm)], move |c| {
            let (r, peer) = (c.rank(), 1 - c.rank());
            let ch = c.channel(4);
            let sync = c.channel(5);
            let mut came = vec![0u8; 100];
            {
                // SAFETY: `came` is untouched until the handle drops.
                let h = unsafe { ch.irecv_into(peer, &mut came) }.unwrap();
                ch.isend(peer, vec![7u8; 100]).unwrap().wait().unwrap();
                let until = Instant::now() + Duration::from_secs(10);
                while !h.test() {
                    assert!(Instant::now() < until, "the message came");
                    std::thread::yield_now();
                }
            }
            // Rank 0 drops its receive before rank 1 sends; rank 1 waits
            // for that, then sends.
            let mut early = vec![0u8; 100];
            if r == 0 {
                // SAFETY: `early` is untouched until the handle drops.
                drop(unsafe { ch.irecv_into(peer, &mut early) }.unwrap());
                sync.isend(peer, vec![1u8]).unwrap().wait().unwrap();
            } else {
                sync.irecv::<u8>(peer, 1).unwrap().wait().unwrap();
                ch.isend(peer, vec![8u8; 100]).unwrap().wait().unwrap();
            }
            let mut next = vec![0u8; 100];
            // SAFETY: `next` is untouched until the handle is waited.
            let h = unsafe { ch.irecv_into(peer, &mut next) }.unwrap();
            ch.isend(peer, vec![9u8; 100]).unwrap().wait().unwrap();
            h.wait().unwrap();
            // Rank 0's dropped receive took the 8s (and discarded them):
            // both ranks' next receive gets the 9s. (A size mismatch on
            // this path: `receives_into_the_callers_buffer`'s 10 B case.)
            (
                came == vec![7u8; 100],
                early.iter().all(|&b| b == 0),
                next == vec![9u8; 100],
            )
        });
        assert!(
            out.iter().all(|&(c, e, n)| c && e && n),
            "shm disabled={shm}: {out:?}"
        );
    }
}

/// torch.distributed's pairwise exchange with receives posted first: every
/// rank posts its receives from `r - 1` and `r - 2`, then waits for its
/// send to `r + 1` before it issues the one to `r + 2`. On a channel whose
/// ops complete in issue order the first send waits behind the receive
/// from `r - 2`, whose sender waits likewise: nothing completes before the
/// timeout. A peerwise channel (the Python backend's point-to-point ops)
/// keeps order per peer and direction only.
#[test]
fn a_peerwise_channel_does_not_hold_a_send_behind_receives_from_other_peers() {
    let out = job(4, &[("ZCCL_TIMEOUT", "10")], |c| {
        let (r, n) = (c.rank(), c.size());
        let ch = c.channel(5).peerwise();
        let t = Instant::now();
        let q1 = ch.irecv::<u8>((r + n - 1) % n, 8).unwrap();
        let q2 = ch.irecv::<u8>((r + n - 2) % n, 8).unwrap();
        ch.isend((r + 1) % n, vec![r as u8; 8])
            .unwrap()
            .wait()
            .unwrap();
        let s2 = ch.isend((r + 2) % n, vec![r as u8 + 10; 8]).unwrap();
        let a = q1.wait().unwrap().into_vec();
        let b = q2.wait().unwrap().into_vec();
        s2.wait().unwrap();
        // Messages from one peer still complete in the order posted.
        let (x, y) = (
            ch.irecv::<u8>((r + n - 1) % n, 1).unwrap(),
            ch.irecv::<u8>((r + n - 1) % n, 1).unwrap(),
        );
        ch.isend((r + 1) % n, vec![1u8]).unwrap().wait().unwrap();
        ch.isend((r + 1) % n, vec![2u8]).unwrap().wait().unwrap();
        let order = (x.wait().unwrap().into_vec(), y.wait().unwrap().into_vec());
        (a, b, order, t.elapsed())
    });
    for (r, (a, b, order, took)) in out.into_iter().enumerate() {
        let r = r as u32;
        assert_eq!(a, vec![((r + 3) % 4) as u8; 8]);
        assert_eq!(b, vec![((r + 2) % 4) as u8 + 10; 8]);
        assert_eq!(order, (vec![1u8], vec![2u8]));
        assert!(took < Duration::from_secs(5), "rank {r} took {took:?}");
    }
}

/// The communicator's own point-to-point calls (`isend`, `irecv`, channel
/// 0) are peerwise, as MPI's: the pairwise exchange above completes
/// through them too (it waited for the timeout when channel 0 kept issue
/// order).
#[test]
fn the_communicators_own_isend_and_irecv_do_not_hold_a_send_behind_other_peers_receives() {
    let out = job(4, &[("ZCCL_TIMEOUT", "10")], |c| {
        let (r, n) = (c.rank(), c.size());
        let q1 = c.irecv::<i32>((r + n - 1) % n, 2).unwrap();
        let q2 = c.irecv::<i32>((r + n - 2) % n, 2).unwrap();
        c.isend((r + 1) % n, vec![r as i32; 2])
            .unwrap()
            .wait()
            .unwrap();
        c.send((r + 2) % n, vec![r as i32 + 10; 2]).unwrap();
        (q1.wait().unwrap().into_vec(), q2.wait().unwrap().into_vec())
    });
    for (r, (a, b)) in out.into_iter().enumerate() {
        assert_eq!(a, vec![((r + 3) % 4) as i32; 2]);
        assert_eq!(b, vec![((r + 2) % 4) as i32 + 10; 2]);
    }
}

/// The communicator's own calls (peerwise) and ordered ops of
/// `comm.channel(0)` share channel 0's sequence numbers with each peer:
/// messages match in the order posted across both kinds, and the
/// peerwise ops, numbered in their completion lane by a count of their
/// own, still complete (numbered by the shared sequence number, a
/// peerwise op after an ordered one waited for a lane position that never
/// came: the timeout, with its message delivered).
#[test]
fn ordered_and_peerwise_ops_on_channel_0_match_in_order_and_all_complete() {
    let out = job(2, &[("ZCCL_TIMEOUT", "10")], |c| {
        let peer = 1 - c.rank();
        let me = c.rank() as i32;
        let ch = c.channel(0);
        let mut got = Vec::new();
        for round in 0..2 {
            let v = |k: i32| vec![me * 100 + round * 10 + k; 3];
            if c.rank() == 0 {
                ch.send(peer, v(1)).unwrap();
                c.send(peer, v(2)).unwrap();
                let r = c.irecv::<i32>(peer, 3).unwrap();
                got.push(ch.recv::<i32>(peer, 3).unwrap().into_vec());
                got.push(r.wait().unwrap().into_vec());
            } else {
                got.push(c.recv::<i32>(peer, 3).unwrap().into_vec());
                let mut out = vec![0i32; 3];
                // SAFETY: `out` is read only after the handle is waited.
                unsafe { ch.irecv_into(peer, &mut out) }
                    .unwrap()
                    .wait()
                    .unwrap();
                got.push(out);
                c.isend(peer, v(3)).unwrap().wait().unwrap();
                ch.send(peer, v(4)).unwrap();
            }
        }
        got
    });
    let want = |r: i32, round: i32, k: i32| vec![r * 100 + round * 10 + k; 3];
    for round in 0..2 {
        let i = 2 * round as usize;
        // Rank 0 waited its second receive (ordered) first: it got the
        // second message; the first receive (peerwise) the first one.
        assert_eq!(out[0][i..i + 2], [want(1, round, 4), want(1, round, 3)]);
        assert_eq!(out[1][i..i + 2], [want(0, round, 1), want(0, round, 2)]);
    }
}

/// A rank that gives a channel up tells its communicator's ranks only: the
/// communicators `split` makes share their id, and the other colour's
/// channel of the same number stays in step (the first version told every
/// rank of the job, and the odd half's channel 5 failed too).
#[test]
fn a_channel_given_up_in_one_half_of_a_split_leaves_the_other_half_in_step() {
    let done = std::sync::Arc::new(std::sync::Barrier::new(4));
    let out = job(4, &[], move |c| {
        let r = c.rank();
        let half = c.split(Some(r % 2), r as i32).unwrap().expect("a member");
        if r == 0 {
            half.channel(5).abandon();
        }
        // Then (after the news had time to reach every rank it went to)
        // both halves exchange on their channel 5.
        done.wait();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let peer = 1 - half.rank();
        let got = half.channel(5).irecv::<i32>(peer, 1).unwrap();
        let sent = half.channel(5).isend(peer, vec![r as i32]);
        let got = got.wait().map(|b| b.into_vec());
        let sent = sent.and_then(|s| s.wait());
        // Keep every rank's connections until all are done.
        done.wait();
        (
            got.map_err(|e| e.to_string()),
            sent.map_err(|e| e.to_string()),
        )
    });
    for (r, (got, sent)) in out.iter().enumerate() {
        if r % 2 == 1 {
            assert_eq!(got.as_deref(), Ok(&[(r ^ 2) as i32][..]), "rank {r}");
            assert!(sent.is_ok(), "rank {r}: {sent:?}");
        } else {
            let e = got.as_ref().unwrap_err();
            assert!(e.contains("out of step"), "rank {r}: {e}");
        }
    }
}
