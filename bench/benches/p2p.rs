//! Point-to-point latency and bandwidth of the communicator, each printed
//! beside this machine's limit measured in the same run:
//!
//! * 8 B ping-pong latency (half the round trip) and 64 MiB one-way
//!   bandwidth over TCP loopback, against a plain blocking TCP socket pair;
//! * the same between ranks of one host over the default transport (shared
//!   memory where it is available), against a single-thread memcpy; the
//!   64 MiB transfer twice: with the default single copy by cross-memory
//!   attach (CMA) where the shared-memory transport can use it, and with CMA
//!   off (`cma_min_bytes = 0`: two copies, through the ring).
//!
//! `cargo bench -p zccl-bench --bench p2p` (add `-- --quick` for a short run).
//! `ZCCL_*` variables of the environment (e.g. `ZCCL_NTHREADS`,
//! `ZCCL_SHM_SPIN`) configure both ranks; `ZCCL_P2P_BENCH_VERBOSE=1` prints
//! every 64 MiB repetition (the table shows medians).
//! Ranks are two processes (this benchmark started again in rank mode), as
//! in a real job: ranks as threads of one process share the allocator, the
//! receive-buffer pool and the scheduler's view of one process, and their
//! TCP transfers showed 200 ms stalls that separate processes do not have.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};

const BIG: usize = 64 << 20;

struct Plan {
    pingpongs: usize,
    big_reps: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Single-thread memcpy of 64 MiB, GB/s.
fn memcpy_gbps(reps: usize) -> f64 {
    let src = vec![1u8; BIG];
    let mut dst = vec![0u8; BIG];
    dst.copy_from_slice(&src); // fault the pages in
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&dst);
                BIG as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .collect(),
    )
}

/// Plain blocking TCP socket pair on loopback: (8 B latency in µs, 64 MiB GB/s).
fn socket_pair(plan: &Plan) -> (f64, f64) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (pp, reps) = (plan.pingpongs, plan.big_reps);
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 8];
        for _ in 0..pp {
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
        let mut big = vec![0u8; BIG];
        for _ in 0..reps {
            s.read_exact(&mut big).unwrap();
            s.write_all(&[1]).unwrap();
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [0u8; 8];
    let t = Instant::now();
    for _ in 0..pp {
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
    }
    let lat = t.elapsed().as_secs_f64() / pp as f64 / 2.0 * 1e6;
    let big = vec![2u8; BIG];
    let bw = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                s.write_all(&big).unwrap();
                s.read_exact(&mut b[..1]).unwrap();
                BIG as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .collect(),
    );
    echo.join().unwrap();
    (lat, bw)
}

/// One rank of a pair (run in a child process of this benchmark): rank 0
/// pings, rank 1 echoes. Returns (8 B latency in µs, 64 MiB GB/s) on rank 0.
fn rank_main(r: u32, id: UniqueId, pp: usize, reps: usize) -> (f64, f64) {
    let cfg = Config::from_env().expect("config");
    let c = Communicator::init(&id, r, 2, cfg).expect("init");
    let peer = 1 - r;
    // Warm up both directions.
    for _ in 0..10 {
        if r == 0 {
            c.send(peer, vec![0u8; 8]).unwrap();
            c.recv::<u8>(peer, 8).unwrap();
        } else {
            let m = c.recv::<u8>(peer, 8).unwrap();
            c.send(peer, m).unwrap();
        }
    }
    let t = Instant::now();
    for _ in 0..pp {
        if r == 0 {
            c.send(peer, vec![0u8; 8]).unwrap();
            c.recv::<u8>(peer, 8).unwrap();
        } else {
            let m = c.recv::<u8>(peer, 8).unwrap();
            c.send(peer, m).unwrap();
        }
    }
    let lat = t.elapsed().as_secs_f64() / pp as f64 / 2.0 * 1e6;
    let mut bws = Vec::new();
    // Buffers are handed over by value: make them before the clock starts.
    // One more for an untimed first exchange: the first 64 MiB transfers
    // after fresh allocations stall on this VM (first touch of memory).
    let mut bigs: Vec<Vec<u8>> = if r == 0 {
        vec![vec![3u8; BIG]; reps + 1]
    } else {
        Vec::new()
    };
    for rep in 0..=reps {
        let t = Instant::now();
        if r == 0 {
            c.send(peer, bigs.pop().unwrap()).unwrap();
            c.recv::<u8>(peer, 1).unwrap();
            if rep > 0 {
                bws.push(BIG as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        } else {
            let got = c.recv::<u8>(peer, BIG).unwrap();
            assert_eq!(got.as_bytes().len(), BIG);
            c.send(peer, vec![1u8]).unwrap();
        }
    }
    if std::env::var_os("ZCCL_P2P_BENCH_VERBOSE").is_some() && r == 0 {
        eprintln!("64 MiB reps (GB/s): {bws:.2?}");
    }
    (lat, if bws.is_empty() { 0.0 } else { median(bws) })
}

/// Two ranks of one job, as two processes (this benchmark started again in
/// rank mode), configured by the `ZCCL_*` variables of the environment plus
/// `extra`. Returns rank 0's (8 B latency in µs, 64 MiB GB/s).
fn zccl_pair(plan: &Plan, extra: &[(&str, &str)]) -> (f64, f64) {
    let root = BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        Duration::from_secs(60),
    )
    .expect("bootstrap root");
    let id = root.unique_id().to_string();
    let exe = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..2u32)
        .map(|r| {
            Command::new(&exe)
                .env("ZCCL_SOCKET_IFNAME", "lo")
                .env("ZCCL_TIMEOUT", "60")
                .envs(extra.iter().copied())
                .env(RANK_ENV, r.to_string())
                .env(ID_ENV, &id)
                .env(PLAN_ENV, format!("{} {}", plan.pingpongs, plan.big_reps))
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a rank")
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("rank"))
        .collect();
    drop(root);
    for (r, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {r} failed: {:?}", o.status);
    }
    let text = String::from_utf8_lossy(&outs[0].stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("P2P-RESULT "))
        .unwrap_or_else(|| panic!("no result from rank 0: {text}"));
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

const RANK_ENV: &str = "ZCCL_P2P_BENCH_RANK";
const ID_ENV: &str = "ZCCL_P2P_BENCH_ID";
const PLAN_ENV: &str = "ZCCL_P2P_BENCH_PLAN";

fn main() {
    if let Ok(r) = std::env::var(RANK_ENV) {
        let id: UniqueId = std::env::var(ID_ENV).unwrap().parse().unwrap();
        let plan = std::env::var(PLAN_ENV).unwrap();
        let mut it = plan.split_whitespace().map(|x| x.parse::<usize>().unwrap());
        let (pp, reps) = (it.next().unwrap(), it.next().unwrap());
        let (lat, bw) = rank_main(r.parse().unwrap(), id, pp, reps);
        println!("P2P-RESULT {lat} {bw}");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            pingpongs: 500,
            big_reps: 3,
        }
    } else {
        Plan {
            pingpongs: 5000,
            big_reps: 7,
        }
    };
    let memcpy = memcpy_gbps(plan.big_reps);
    let (sock_lat, sock_bw) = socket_pair(&plan);
    let (tcp_lat, tcp_bw) = zccl_pair(&plan, &[("ZCCL_SHM_DISABLE", "1")]);
    let (local_lat, local_bw) = zccl_pair(&plan, &[]);
    let (_, ring_bw) = zccl_pair(&plan, &[("ZCCL_SHM_CMA_DISABLE", "1")]);
    println!(
        "# zccl point-to-point, 2 ranks on one host ({} ping-pongs, {} x 64 MiB)",
        plan.pingpongs, plan.big_reps
    );
    println!(
        "{:<34} {:>12} {:>14} {:>8}  target",
        "measure", "zccl", "machine limit", "ratio"
    );
    let row = |name: &str, z: f64, base: f64, unit: &str, target: &str| {
        println!(
            "{name:<34} {:>9.2} {unit:<2} {:>11.2} {unit:<2} {:>8.2}  {target}",
            z,
            base,
            z / base
        );
    };
    row(
        "TCP 8 B latency (us, vs socket)",
        tcp_lat,
        sock_lat,
        "us",
        "-",
    );
    row(
        "TCP 64 MiB (GB/s, vs socket)",
        tcp_bw,
        sock_bw,
        "GB",
        ">= 0.80",
    );
    row(
        "same-host 8 B latency (us)",
        local_lat,
        sock_lat,
        "us",
        "< 10 us (shm)",
    );
    row(
        "same-host 64 MiB (GB/s, vs memcpy)",
        local_bw,
        memcpy,
        "GB",
        ">= 0.50 (shm)",
    );
    row(
        "same-host 64 MiB, CMA off (ring)",
        ring_bw,
        memcpy,
        "GB",
        "-",
    );
}
