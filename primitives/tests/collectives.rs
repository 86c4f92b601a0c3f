//! Every collective against a serial reference, N = 1..8, every dtype and op.

mod common;

use common::coll::{LENS, TestElem, inputs, run_all_dtypes};
use zccl_primitives::Fabric;
use zccl_primitives::collectives::{
    all_gather_with, all_reduce, all_reduce_with, barrier, broadcast_with, reduce_scatter,
};
use zccl_primitives::dtype::{Elem, bf16, f16};
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::schedule::algo::Algo;
use zccl_primitives::schedule::chunks::chunk_range;
use zccl_primitives::schedule::ring::reduction_order;
use zccl_primitives::sim::run_ranks;

#[test]
fn every_collective_every_dtype_and_op_n1_to_8() {
    for n in 1..=8 {
        let outs = run_ranks(n, |f| {
            let v = run_all_dtypes(f, &LENS);
            barrier(f, 9).unwrap();
            v
        });
        // All ranks hold bit-identical all_reduce results.
        for o in &outs[1..] {
            assert!(o == &outs[0], "n={n}: ranks disagree bitwise");
        }
    }
}

/// The documented rounding for f16/bf16 ring all-reduce: an f32 left fold in
/// `reduction_order`, rounded once.
fn half_ring_exact<T: TestElem + Elem<Acc = f32>>(n: usize) {
    let len = 37;
    for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod] {
        let inp = inputs::<T>(99, n, len, op);
        let inp2 = inp.clone();
        let outs = run_ranks(n, move |f| {
            let mut b = inp2[f.rank()].clone();
            all_reduce_with(f, 0, &mut b, op, Algo::Ring).unwrap();
            b
        });
        for e in 0..len {
            let j = (0..n)
                .find(|&j| chunk_range(len, n, j).contains(&e))
                .unwrap();
            let ord = reduction_order(j, n);
            let mut acc = inp[ord[0]][e].to_acc();
            for &k in &ord[1..] {
                let x = inp[k][e].to_acc();
                acc = if op == ReduceOp::Prod {
                    acc * x
                } else {
                    acc + x
                };
            }
            if op == ReduceOp::Avg {
                acc /= n as f32;
            }
            let want = T::from_acc(acc);
            for o in &outs {
                assert_eq!(o[e], want, "{} {op} n={n} element {e}", T::DTYPE);
            }
        }
    }
}

#[test]
fn half_precision_rounds_once_as_documented() {
    for n in [1, 2, 3, 5, 8] {
        half_ring_exact::<f16>(n);
        half_ring_exact::<bf16>(n);
    }
}

#[test]
fn half_precision_integer_sums_are_exact() {
    for n in 1..=8 {
        let outs = run_ranks(n, move |f| {
            let mut v: Vec<bf16> = (0..50)
                .map(|i| bf16::from_f32(((i * 7 + f.rank() * 3) % 17) as f32 - 8.0))
                .collect();
            let mut w: Vec<f16> = v.iter().map(|x| f16::from_f32(x.to_f32())).collect();
            all_reduce_with(f, 0, &mut v, ReduceOp::Sum, Algo::Tree).unwrap();
            all_reduce_with(f, 0, &mut w, ReduceOp::Sum, Algo::Ring).unwrap();
            (v, w)
        });
        for i in 0..50 {
            let want: f32 = (0..n).map(|r| ((i * 7 + r * 3) % 17) as f32 - 8.0).sum();
            for (v, w) in &outs {
                assert_eq!(v[i].to_f32(), want);
                assert_eq!(w[i].to_f32(), want);
            }
        }
    }
}

#[test]
fn large_messages_mib() {
    // 4 MiB f32 sum over 8 ranks (ring by size), odd count 3 MiB + 1 bf16 over 5 ranks,
    // 16 MiB f32 over 2 ranks, large all_gather / reduce_scatter / broadcast.
    for (n, len) in [(8usize, 1usize << 20), (2, 4 << 20)] {
        let outs = run_ranks(n, move |f| {
            let mut v: Vec<f32> = (0..len)
                .map(|i| ((i * 31 + f.rank() * 7) % 1001) as f32)
                .collect();
            all_reduce(f, 0, &mut v, ReduceOp::Sum).unwrap();
            v
        });
        for i in (0..len).step_by(997).chain([len - 1]) {
            let want: f32 = (0..n).map(|r| ((i * 31 + r * 7) % 1001) as f32).sum();
            assert!(outs.iter().all(|o| o[i] == want), "n={n} i={i}");
        }
    }
    let len = (3 << 20) / 2 + 1;
    let outs = run_ranks(5, move |f| {
        let mut v: Vec<bf16> = (0..len)
            .map(|i| bf16::from_f32(((i + f.rank()) % 5) as f32))
            .collect();
        all_reduce(f, 0, &mut v, ReduceOp::Max).unwrap();
        let g = all_gather_with(f, 1, &v[..(1 << 18)], Algo::Ring).unwrap();
        let rs = reduce_scatter(f, 2, &v[..(1 << 19)], ReduceOp::Sum).unwrap();
        let mut b: Vec<u8> = if f.rank() == 3 {
            (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect()
        } else {
            vec![0; (3 << 20) + 5]
        };
        broadcast_with(f, 3, &mut b, 3, Algo::Ring).unwrap();
        assert!(b.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
        (v, g.len(), rs)
    });
    for (v, glen, rs) in &outs {
        assert!(v.iter().all(|x| x.to_f32() == 4.0));
        assert_eq!(*glen, 5 << 18);
        assert!(rs.iter().all(|x| x.to_f32() == 20.0));
    }
}

#[test]
fn barrier_every_size() {
    for n in 1..=8 {
        run_ranks(n, |f| {
            for ch in 0..3 {
                barrier(f, ch).unwrap();
            }
        });
    }
}
