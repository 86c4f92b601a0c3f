//! Op signatures across processes (issue #12): ranks that call a collective
//! with different sizes, element types of equal byte size, operations,
//! broadcast roots, all-to-all-v counts or All-Scan directions get an error
//! naming the disagreement on **every** rank, within 1 s, never data.
//!
//! The test binary re-executes itself once per rank (`common::procs`); rank
//! 1 is the odd one out. Each case runs on a channel of its own (a channel
//! on which ranks disagreed stays failed); before each case the ranks line
//! up with a barrier on channel 1. A rank whose call returned runs a
//! barrier on the case's channel, which must fail at once: that is how a
//! rank that only talked to ranks agreeing with it learns of the
//! disagreement (broadcasts must fail in the call itself).

mod common;

use std::time::{Duration, Instant};

use common::procs::{is_worker, run_job};
use zccl_primitives::Fabric;
use zccl_primitives::alltoall::all_to_all_v;
use zccl_primitives::collectives::{all_gather, all_reduce, barrier, broadcast};
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::scan::{DiagState, all_scan_diag};
use zccl_primitives::schedule::scan::ScanDirection;
use zccl_runtime::Communicator;

const ODD: usize = 1;
const CASE: &str = "ZCCL-CASE";

/// The cases and, for each, the words every rank's message must contain
/// (element counts and sizes appear as "1024 x f32", "4096 B").
const CASES: [(&str, &[&str]); 7] = [
    ("size", &["mismatch", "all_reduce(sum)", "f32"]),
    ("dtype_equal_bytes", &["mismatch", "f32", "f64"]),
    (
        "op_kind",
        &["operation mismatch", "all_gather", "all_reduce(sum)"],
    ),
    // Every rank fails in the broadcast itself: with 2 ranks the two
    // broadcasts' first messages cross; with more, the root check each
    // broadcast runs first (its messages carry the root's label) fails.
    ("root", &["operation mismatch", "broadcast(root 1 mod 11)"]),
    // The odd rank names a root that is not itself (with 4 ranks, one whose
    // tree never sends to it): it must not wait for its timeout.
    ("root_other", &["operation mismatch", "broadcast(root "]),
    (
        "all_to_all_v_counts",
        &["size/type mismatch", "all_to_all_v"],
    ),
    // The odd rank scans in reverse, the others forward: it and rank 0
    // each send the other a block neither receives (with 2 ranks neither
    // receives anything), and with 4 ranks 1 and 2 each wait for the
    // other (with one label for both directions every rank waited out its
    // timeout, blaming a stalled rank). The odd rank must fail in the scan
    // itself, naming both directions (its direction check meets rank 0's
    // block): with 2 ranks the barrier after the scan would catch the stray
    // blocks anyway. (Rank 0, which only sends, may meet a stray reverse
    // block in its barrier before the report: that names one direction.)
    (
        "scan_direction",
        &["operation mismatch", "all_scan(reverse)"],
    ),
];

fn run_case(case: &str, c: &Communicator, ch: u32) -> zccl_primitives::Result<()> {
    let (r, n) = (Fabric::rank(c), Fabric::size(c));
    let odd = r == ODD;
    match case {
        "size" => {
            let mut x = vec![1.0f32; if odd { 1000 } else { 1024 }];
            all_reduce(c, ch, &mut x, ReduceOp::Sum)
        }
        "dtype_equal_bytes" => {
            if odd {
                all_reduce(c, ch, &mut vec![1.0f64; 1024], ReduceOp::Sum)
            } else {
                all_reduce(c, ch, &mut vec![1.0f32; 2048], ReduceOp::Sum)
            }
        }
        "op_kind" => {
            if odd {
                all_gather(c, ch, &[1.0f32; 1024]).map(drop)
            } else {
                all_reduce(c, ch, &mut vec![1.0f32; 1024 * n], ReduceOp::Sum)
            }
        }
        "root" => {
            let mut x = vec![r as f32; 256];
            broadcast(c, ch, &mut x, if odd { 1 } else { 0 })
        }
        "root_other" => {
            let mut x = vec![r as f32; 256];
            broadcast(c, ch, &mut x, if odd { n - 1 } else { 0 })
        }
        "all_to_all_v_counts" => {
            // Every rank sends 8 elements to every rank; rank 1 expects
            // 9 from rank 0 (and 7 from rank 2).
            let input = vec![r as i32; 8 * n];
            let send = vec![8; n];
            let mut recv = vec![8; n];
            if odd {
                recv[0] = 9;
                if n > 2 {
                    recv[2] = 7;
                }
            }
            all_to_all_v(c, ch, &input, &send, &recv).map(drop)
        }
        "scan_direction" => {
            let dir = if odd {
                ScanDirection::Reverse
            } else {
                ScanDirection::Forward
            };
            let state = [r as f32; 64];
            let local = DiagState {
                state: &state,
                decay: &[0.5; 16],
                cols: 4,
            };
            all_scan_diag(c, ch, local, dir, 2, false).map(drop)
        }
        _ => unreachable!("{case}"),
    }
}

fn worker() {
    let c = Communicator::from_env().expect("init from env");
    let r = Fabric::rank(&c);
    for (i, (case, _)) in CASES.iter().enumerate() {
        let ch = 10 + i as u32;
        barrier(&c, 1).expect("line up");
        let t0 = Instant::now();
        let (how, msg) = match run_case(case, &c, ch) {
            Err(e) => ("raised", e.to_string()),
            // Returned: the channel must have failed all the same.
            Ok(()) => match barrier(&c, ch) {
                Err(e) => ("raised_next", e.to_string()),
                Ok(()) => ("returned", String::new()),
            },
        };
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{CASE} {case} rank {r} {how} {secs:.3} {}",
            msg.replace('\n', " ")
        );
    }
    barrier(&c, 1).expect("the communicator is usable after the cases");
}

fn check(test: &str, n: u32) {
    let outs = run_job(test, n, &[], Duration::from_secs(120));
    let mut problems = Vec::new();
    for (case, words) in CASES {
        for (r, out) in outs.iter().enumerate() {
            let prefix = format!("{CASE} {case} rank {r} ");
            let Some(line) = out
                .stdout
                .lines()
                .find_map(|l| l.find(&prefix).map(|i| l[i + prefix.len()..].to_string()))
            else {
                problems.push(format!("{case}: rank {r} did not report"));
                continue;
            };
            let mut f = line.splitn(3, ' ');
            let (how, secs, msg) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""));
            let secs: f64 = secs.parse().unwrap();
            if how == "returned" {
                problems.push(format!("{case}: rank {r} returned data"));
            } else if how != "raised" && case.starts_with("root") {
                problems.push(format!(
                    "{case}: rank {r}'s broadcast returned; it should fail"
                ));
            } else if case == "scan_direction" && r == ODD && how != "raised" {
                problems.push(format!(
                    "{case}: rank {r}'s reverse scan returned; its check should fail it"
                ));
            } else if case == "scan_direction" && r == ODD && !msg.contains("all_scan of") {
                problems.push(format!(
                    "{case}: rank {r}'s error does not name the forward scan: {msg}"
                ));
            } else if secs > 1.0 {
                problems.push(format!("{case}: rank {r} raised after {secs} s: {msg}"));
            } else if let Some(w) = words.iter().find(|w| !msg.contains(*w)) {
                problems.push(format!(
                    "{case}: rank {r}'s error does not name {w:?}: {msg}"
                ));
            }
            eprintln!("n={n} {case} rank {r}: {how} after {secs} s: {msg}");
        }
    }
    assert!(problems.is_empty(), "n={n}:\n{}", problems.join("\n"));
}

#[test]
fn disagreements_fail_every_rank_within_a_second_n2() {
    if is_worker() {
        return worker();
    }
    check("disagreements_fail_every_rank_within_a_second_n2", 2);
}

#[test]
fn disagreements_fail_every_rank_within_a_second_n4() {
    if is_worker() {
        return worker();
    }
    check("disagreements_fail_every_rank_within_a_second_n4", 4);
}
