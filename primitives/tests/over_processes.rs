//! The attention-level algorithms and the collectives over real
//! communicators in separate processes (the test binary re-executed once per
//! rank, with the launcher's environment). Each worker checks its own rank's
//! results against the f64 references and prints a hash of its outputs'
//! bits; the parent checks that every rank reported, and that the bits equal
//! those of the same case on the simulated fabric.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::coll::run_all_dtypes;
use common::procs::{RankOutput, is_worker, run_job};
use common::sp::{CASES, run_case};
use zccl_primitives::Fabric;
use zccl_primitives::collectives::iall_reduce;
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::sim::run_ranks;
use zccl_runtime::Communicator;

const CASES_VAR: &str = "ZCCL_PRIMITIVES_CASES";
const JOB_DEADLINE: Duration = Duration::from_secs(90);

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Parses `ZCCL-RESULT rank <r> <case> <hex>` lines: (case, hash) in order.
fn results(r: usize, out: &RankOutput) -> Vec<(String, u64)> {
    out.results()
        .into_iter()
        .map(|f| {
            assert_eq!(f[0..2], ["rank".to_string(), r.to_string()], "{f:?}");
            (f[2].clone(), u64::from_str_radix(&f[3], 16).unwrap())
        })
        .collect()
}

/// Worker: run the cases named in `ZCCL_PRIMITIVES_CASES` as one rank.
fn sp_worker() {
    let c = Communicator::from_env().expect("init from env");
    let r = Fabric::rank(&c);
    let cases = std::env::var(CASES_VAR).unwrap();
    for case in cases.split(',') {
        let h = run_case(case, &c);
        println!("{} rank {r} {case} {h:016x}", common::procs::RESULT);
    }
}

fn sp_job(test: &str, n: usize, cases: &[&'static str], env: &[(&str, String)]) {
    let mut env = env.to_vec();
    env.push((CASES_VAR, cases.join(",")));
    // Small rings, so the held 1 MiB block of "two_directions" cannot fit in one.
    env.push(("ZCCL_SHM_RING_BYTES", (256 << 10).to_string()));
    let outs = run_job(test, n as u32, &env, JOB_DEADLINE);
    let cs: Vec<&'static str> = cases.to_vec();
    let sim = run_ranks(n, move |f| {
        cs.iter().map(|c| run_case(c, f)).collect::<Vec<_>>()
    });
    for (r, out) in outs.iter().enumerate() {
        let got = results(r, out);
        let want: Vec<(String, u64)> = cases
            .iter()
            .map(|c| c.to_string())
            .zip(sim[r].iter().copied())
            .collect();
        assert_eq!(
            got, want,
            "n={n} rank {r}: cases reported / bits vs the simulated fabric"
        );
    }
}

#[test]
fn sp_cases_across_processes_n2_shm() {
    if is_worker() {
        return sp_worker();
    }
    sp_job("sp_cases_across_processes_n2_shm", 2, &CASES, &[]);
}

#[test]
fn sp_cases_across_processes_n3_tcp() {
    if is_worker() {
        return sp_worker();
    }
    let env = [("ZCCL_SHM_DISABLE", "1".to_string())];
    sp_job("sp_cases_across_processes_n3_tcp", 3, &CASES, &env);
}

#[test]
fn sp_cases_across_processes_n3_shm() {
    if is_worker() {
        return sp_worker();
    }
    sp_job("sp_cases_across_processes_n3_shm", 3, &CASES, &[]);
}

#[test]
fn sp_cases_across_processes_n4_shm() {
    if is_worker() {
        return sp_worker();
    }
    sp_job("sp_cases_across_processes_n4_shm", 4, &CASES, &[]);
}

#[test]
fn sp_cases_across_processes_n8_shm() {
    if is_worker() {
        return sp_worker();
    }
    sp_job("sp_cases_across_processes_n8_shm", 8, &CASES, &[]);
}

/// Lengths of the collectives sweep over processes (elements).
const LENS: [usize; 4] = [0, 1, 7, 1000];

/// Every dtype × op × algorithm of every collective at N = 3 processes, small
/// sizes, against the serial references; bits equal to the simulated fabric's.
#[test]
fn collectives_every_dtype_and_op_across_processes_n3() {
    if is_worker() {
        let c = Communicator::from_env().expect("init from env");
        let h = fnv(&run_all_dtypes(&c, &LENS));
        println!(
            "{} rank {} collectives {h:016x}",
            common::procs::RESULT,
            Fabric::rank(&c)
        );
        return;
    }
    let outs = run_job(
        "collectives_every_dtype_and_op_across_processes_n3",
        3,
        &[],
        JOB_DEADLINE,
    );
    let sim = run_ranks(3, |f| fnv(&run_all_dtypes(f, &LENS)));
    for (r, out) in outs.iter().enumerate() {
        assert_eq!(
            results(r, out),
            vec![("collectives".to_string(), sim[r])],
            "rank {r}"
        );
    }
}

/// A 16 MiB f32 all-reduce between two processes over shared memory, started
/// non-blocking while the caller computes; exact (integer-valued) sums.
#[test]
fn all_reduce_16_mib_across_processes_over_shared_memory() {
    const LEN: usize = 4 << 20; // 16 MiB of f32
    let val = |r: usize, i: usize| ((i * 31 + r * 7) % 1001) as f32;
    if is_worker() {
        let c = Arc::new(Communicator::from_env().expect("init from env"));
        let (r, n) = (Fabric::rank(&*c), Fabric::size(&*c));
        for p in (0..n).filter(|&p| p != r) {
            assert!(
                c.uses_shm(p as u32),
                "rank {r}: peer {p} not over shared memory"
            );
        }
        let x: Vec<f32> = (0..LEN).map(|i| val(r, i)).collect();
        let h = iall_reduce(c.clone(), 0, x, ReduceOp::Sum);
        let busy: u64 = (0..1_000_000u64).map(|i| i % 7).sum();
        let got = h.wait().unwrap();
        let ok = got.len() == LEN
            && got
                .iter()
                .enumerate()
                .all(|(i, &v)| v == (0..n).map(|q| val(q, i)).sum::<f32>());
        assert!(ok, "rank {r}: 16 MiB all_reduce result wrong");
        println!(
            "{} rank {r} all_reduce_16mib {busy:016x}",
            common::procs::RESULT
        );
        return;
    }
    let outs = run_job(
        "all_reduce_16_mib_across_processes_over_shared_memory",
        2,
        &[],
        JOB_DEADLINE,
    );
    let busy: u64 = (0..1_000_000u64).map(|i| i % 7).sum();
    for (r, out) in outs.iter().enumerate() {
        assert_eq!(
            results(r, out),
            vec![("all_reduce_16mib".to_string(), busy)]
        );
    }
}

/// Ring reductions of buffers large enough that the reduce-scatter's
/// receives reduce what they get as it comes (`combine_as_received`: 3
/// ranks of 12 MiB, 36 MiB together), between three processes over shared
/// memory, where a same-host peer's pieces are read by CMA a cache-sized
/// part at a time and reduced at once: all-reduce out of place and in
/// place, and reduce-scatter, against references computed here (exact:
/// integer-valued sums and maxima). Three ranks, so the reduce-scatter has a
/// middle step (partial results passed on) as well as the last.
#[test]
fn large_ring_reductions_reduce_as_they_receive_across_processes() {
    const LEN: usize = 3 << 20; // 12 MiB of f32 or i32
    let val = |r: usize, i: usize| ((i * 31 + r * 7) % 1001) as i32 - 500;
    if is_worker() {
        use zccl_primitives::collectives::{all_reduce, all_reduce_into, reduce_scatter};
        use zccl_primitives::schedule::chunks::chunk_range;
        let c = Communicator::from_env().expect("init from env");
        let (r, n) = (Fabric::rank(&c), Fabric::size(&c));
        let sum = |i: usize| (0..n).map(|q| val(q, i) as f32).sum::<f32>();
        let max = |i: usize| (0..n).map(|q| val(q, i)).max().unwrap();
        let x: Vec<f32> = (0..LEN).map(|i| val(r, i) as f32).collect();
        let mut out = vec![0f32; LEN];
        all_reduce_into(&c, 0, &x, &mut out, ReduceOp::Sum).unwrap();
        let bad = (0..LEN).filter(|&i| out[i] != sum(i)).count();
        assert_eq!(bad, 0, "rank {r}: out-of-place sum wrong in {bad} places");
        let mut y: Vec<i32> = (0..LEN).map(|i| val(r, i)).collect();
        all_reduce(&c, 0, &mut y, ReduceOp::Max).unwrap();
        let bad = (0..LEN).filter(|&i| y[i] != max(i)).count();
        assert_eq!(bad, 0, "rank {r}: in-place max wrong in {bad} places");
        let mine = reduce_scatter(&c, 0, &x, ReduceOp::Sum).unwrap();
        let at = chunk_range(LEN, n, r);
        assert_eq!(mine.len(), at.len(), "rank {r}: reduce-scatter length");
        let bad = at.clone().filter(|&i| mine[i - at.start] != sum(i)).count();
        assert_eq!(bad, 0, "rank {r}: reduce-scatter wrong in {bad} places");
        let h =
            fnv(zccl_primitives::dtype::as_bytes(&out)) ^ fnv(zccl_primitives::dtype::as_bytes(&y));
        println!("{} rank {r} large_ring {h:016x}", common::procs::RESULT);
        return;
    }
    let outs = run_job(
        "large_ring_reductions_reduce_as_they_receive_across_processes",
        3,
        &[],
        JOB_DEADLINE,
    );
    let hashes: Vec<u64> = outs
        .iter()
        .enumerate()
        .map(|(r, out)| {
            let got = results(r, out);
            assert_eq!(got.len(), 1, "rank {r}: {got:?}");
            assert_eq!(got[0].0, "large_ring");
            got[0].1
        })
        .collect();
    assert!(
        hashes.iter().all(|&h| h == hashes[0]),
        "every rank ends with the same bits: {hashes:x?}"
    );
}
