//! A receiver's memory stays bounded however far a sender runs ahead: 100
//! sends of 64 MiB that the receiver has not asked for yet, over shared
//! memory and over TCP. The receiver's peak resident memory stays under
//! `ZCCL_MAX_UNEXPECTED_BYTES` + 64 MiB (+ its baseline and a margin for
//! allocator slack), and every message still arrives, exactly.
//!
//! The test binary re-executes itself: with `ZCCL_TEST_ROLE` set, `worker`
//! runs one rank; without it, `worker` does nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zccl_runtime::{BootstrapRoot, Communicator, UniqueId};

const MSGS: usize = 100;
const LEN: usize = 64 << 20;
const BOUND: u64 = 128 << 20;
/// Distinct buffers the sender cycles through (so a message delivered into
/// the wrong receive shows), all lent: the sender holds 4 × 64 MiB.
const BUFS: usize = 4;

fn fill(i: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
    (0..LEN)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn worker() {
    let Ok(role) = std::env::var("ZCCL_TEST_ROLE") else {
        return;
    };
    assert_eq!(role, "unexpected");
    let c = Communicator::from_env().unwrap();
    let data = c.channel(0);
    let ctl = c.channel(1);
    if c.rank() == 0 {
        let bufs: Vec<Vec<u8>> = (0..BUFS).map(fill).collect();
        // SAFETY: `bufs` outlives every handle (all waited below).
        let sends: Vec<_> = (0..MSGS)
            .map(|i| unsafe { data.isend_lent(1, &bufs[i % BUFS]) }.unwrap())
            .collect();
        // Everything is issued: tell the receiver, which only then posts.
        ctl.send(1, vec![1u8]).unwrap();
        for s in sends {
            s.wait().unwrap();
        }
    } else {
        let want: Vec<Vec<u8>> = (0..BUFS).map(fill).collect();
        let base = status_kib("VmRSS:");
        ctl.recv::<u8>(0, 1).unwrap();
        // Give the sender's messages time to arrive (or to be held back).
        std::thread::sleep(Duration::from_millis(1500));
        let mut out = vec![0u8; LEN];
        for i in 0..MSGS {
            // SAFETY: `out` is borrowed until the handle is waited.
            unsafe { data.irecv_into(0, &mut out) }
                .unwrap()
                .wait()
                .unwrap();
            assert!(out == want[i % BUFS], "message {i} differs");
        }
        let peak = status_kib("VmHWM:");
        println!("RSS base_kib={base} peak_kib={peak}");
    }
    println!("OK rank {}", c.rank());
}

/// One job at a time: an unbounded receiver would hold 6.4 GB.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(tcp: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|r| {
            let mut cmd = Command::new(&exe);
            cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"])
                .env("ZCCL_TEST_ROLE", "unexpected")
                .env("ZCCL_RANK", r.to_string())
                .env("ZCCL_WORLD_SIZE", "2")
                .env("ZCCL_SOCKET_IFNAME", "lo")
                .env("ZCCL_UNIQUE_ID", root.unique_id().to_string())
                .env("ZCCL_MAX_UNEXPECTED_BYTES", BOUND.to_string())
                .env("ZCCL_TIMEOUT", "120")
                .env("RUST_BACKTRACE", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            for k in ["RANK", "WORLD_SIZE", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"] {
                cmd.env_remove(k);
            }
            if tcp {
                cmd.env("ZCCL_SHM_DISABLE", "1");
            }
            cmd.spawn().unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut outs = Vec::new();
    for k in kids.iter_mut() {
        let mut out = String::new();
        for line in BufReader::new(k.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
        {
            out.push_str(&line);
            out.push('\n');
        }
        outs.push(out);
    }
    for k in kids.iter_mut() {
        loop {
            if let Some(st) = k.try_wait().unwrap() {
                assert!(st.success(), "a rank failed: {outs:?}");
                break;
            }
            if Instant::now() > deadline {
                let _ = k.kill();
                panic!("timed out: {outs:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(outs.iter().all(|o| o.contains("OK rank")), "{outs:?}");
    let line = outs[1]
        .lines()
        .find_map(|l| l.find("RSS base_kib=").map(|i| &l[i..]))
        .expect("the receiver reports its memory");
    let kib = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (base, peak) = (kib("base_kib="), kib("peak_kib="));
    // The receiver's reference buffers are in the baseline, its own 64 MiB
    // output is the "+ 64 MiB"; 32 MiB of slack for the allocator.
    let allowed = base + (BOUND + (64 << 20) + (32 << 20)) / 1024;
    eprintln!(
        "{}: receiver RSS baseline {} MiB, peak {} MiB, allowed {} MiB ({} unexpected sends of {} MiB, bound {} MiB)",
        if tcp { "tcp" } else { "shm" },
        base / 1024,
        peak / 1024,
        allowed / 1024,
        MSGS,
        LEN >> 20,
        BOUND >> 20
    );
    assert!(
        peak <= allowed,
        "receiver peaked at {} MiB, over the allowed {} MiB",
        peak / 1024,
        allowed / 1024
    );
}

#[test]
fn hundred_unexpected_64_mib_messages_stay_bounded_shm() {
    run(false);
}

#[test]
fn hundred_unexpected_64_mib_messages_stay_bounded_tcp() {
    run(true);
}
