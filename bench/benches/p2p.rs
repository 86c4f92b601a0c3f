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
//! `ZCCL_SHM_SPIN`) configure both ranks.
//! Ranks are threads of this process, each with its own communicator and
//! progress engine, exactly as separate processes would have.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
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

/// Two ranks (threads) of one job; rank 0 pings, rank 1 echoes. `extra`
/// adds environment settings, `tweak` changes the configuration built from
/// them. Returns (8 B latency in µs, 64 MiB GB/s).
fn zccl_pair(plan: &Plan, extra: &[(&str, &str)], tweak: impl Fn(&mut Config)) -> (f64, f64) {
    let mut env: HashMap<String, String> = HashMap::from([
        ("ZCCL_SOCKET_IFNAME".into(), "lo".into()),
        ("ZCCL_TIMEOUT".into(), "60".into()),
    ]);
    // `ZCCL_*` settings of the environment apply too (e.g. `ZCCL_NTHREADS`),
    // except those the measure itself fixes.
    for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("ZCCL_")) {
        env.insert(k, v);
    }
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let mut cfg = Config::from_lookup(|k| env.get(k).cloned()).expect("config");
    tweak(&mut cfg);
    let root = BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        Duration::from_secs(30),
    )
    .expect("bootstrap root");
    let id = root.unique_id();
    let (pp, reps) = (plan.pingpongs, plan.big_reps);
    let ready = Arc::new(Barrier::new(2));
    let ranks: Vec<_> = (0..2u32)
        .map(|r| {
            let (cfg, ready) = (cfg.clone(), ready.clone());
            std::thread::spawn(move || {
                let c = Communicator::init(&id, r, 2, cfg).expect("init");
                let peer = 1 - r;
                ready.wait();
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
                let mut bigs: Vec<Vec<u8>> = if r == 0 {
                    vec![vec![3u8; BIG]; reps]
                } else {
                    Vec::new()
                };
                for _ in 0..reps {
                    let t = Instant::now();
                    if r == 0 {
                        c.send(peer, bigs.pop().unwrap()).unwrap();
                        c.recv::<u8>(peer, 1).unwrap();
                        bws.push(BIG as f64 / t.elapsed().as_secs_f64() / 1e9);
                    } else {
                        let got = c.recv::<u8>(peer, BIG).unwrap();
                        assert_eq!(got.as_bytes().len(), BIG);
                        c.send(peer, vec![1u8]).unwrap();
                    }
                }
                (lat, if bws.is_empty() { 0.0 } else { median(bws) })
            })
        })
        .collect();
    let out: Vec<(f64, f64)> = ranks.into_iter().map(|t| t.join().expect("rank")).collect();
    drop(root);
    out[0]
}

fn main() {
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
    let (tcp_lat, tcp_bw) = zccl_pair(&plan, &[("ZCCL_SHM_DISABLE", "1")], |_| {});
    let (local_lat, local_bw) = zccl_pair(&plan, &[], |_| {});
    let (_, ring_bw) = zccl_pair(&plan, &[], |c| c.shm.cma_min_bytes = 0);
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
