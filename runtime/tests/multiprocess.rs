//! Acceptance tests with every rank a real process.
//!
//! The test binary re-executes itself: with `ZCCL_TEST_ROLE` set, the `worker`
//! test runs one rank of a scenario (initialised through `Communicator::from_env`)
//! and reports on stdout; without it, `worker` does nothing. Every wait in the
//! parent has a deadline, and children are killed when it passes.
//!
//! All ranks run on this host, so same-host peers talk over shared memory;
//! the `*_tcp_only` tests set `ZCCL_SHM_DISABLE=1` so that TCP stays tested,
//! and `mixed_*` disables shared memory on one rank only. Every worker prints
//! which transport reaches each peer, and the parent checks it, as well as
//! that no `/dev/shm/zccl-<job>-*` segment survives the job.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zccl_runtime::{BootstrapRoot, Communicator, Op, UniqueId};
use zccl_transports::handshake::{
    HELLO_LEN, Hello, JobSecret, PROTOCOL_VERSION, Purpose, ROOT_RANK,
};
use zccl_transports::shm::job_tag;

// ---------------------------------------------------------------------------
// Worker side.

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bytes rank `src` sends to `dst` in round `salt`: every byte checked.
fn pattern(src: u32, dst: u32, len: usize, salt: u64) -> Vec<u8> {
    let mut s = (u64::from(src) << 40) ^ (u64::from(dst) << 20) ^ salt ^ len as u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    std::env::var("ZCCL_TEST_SIZES")
        .unwrap_or_else(|_| "0,1,7,4097,65537,1048577".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect()
}

fn ring(c: &Communicator, offsets: &[u32], sizes: &[usize], salt: u64) {
    let (r, n) = (c.rank(), c.size());
    for &offset in offsets {
        let (to, from) = ((r + offset) % n, (r + n - offset) % n);
        for &len in sizes {
            let out = c
                .batch(vec![
                    Op::send(to, pattern(r, to, len, salt)),
                    Op::recv::<u8>(from, len),
                ])
                .unwrap()
                .wait()
                .unwrap_or_else(|e| panic!("ring offset {offset} len {len}: {e}"));
            let got = out[1].as_ref().unwrap().bytes();
            assert!(
                got == &pattern(from, r, len, salt)[..],
                "rank {r}: corrupted {len} B from rank {from}"
            );
        }
    }
}

fn shuffled_batches(c: &Communicator, batches: u64) {
    let (r, n) = (c.rank(), c.size());
    let mut rng = 0xC0FFEE ^ (u64::from(r) * 7919);
    let size_of = |src: u32, dst: u32, b: u64| {
        let mut s = (u64::from(src) * 1_000_003) ^ (u64::from(dst) * 97) ^ (b << 32);
        (splitmix(&mut s) % 5000) as usize
    };
    for b in 0..batches {
        let mut ops = Vec::new();
        for p in (0..n).filter(|&p| p != r) {
            ops.push(Op::send(p, pattern(r, p, size_of(r, p, b), b)));
            ops.push(Op::recv::<u8>(p, size_of(p, r, b)));
        }
        for i in (1..ops.len()).rev() {
            let j = (splitmix(&mut rng) % (i as u64 + 1)) as usize;
            ops.swap(i, j);
        }
        let want: Vec<Option<u32>> = ops
            .iter()
            .map(|o| {
                if let Op::Recv { peer, .. } = o {
                    Some(*peer)
                } else {
                    None
                }
            })
            .collect();
        let out = c
            .channel((b % 3) as u32)
            .batch(ops)
            .unwrap()
            .wait()
            .unwrap_or_else(|e| panic!("batch {b}: {e}"));
        for (got, peer) in out.iter().zip(want) {
            if let Some(p) = peer {
                assert!(
                    got.as_ref().unwrap().bytes() == &pattern(p, r, size_of(p, r, b), b)[..],
                    "batch {b} from {p}"
                );
            }
        }
    }
}

#[test]
fn worker() {
    let Ok(role) = std::env::var("ZCCL_TEST_ROLE") else {
        return;
    };
    if std::env::var("ZCCL_TEST_TCP_RANK").ok() == std::env::var("ZCCL_RANK").ok() {
        // SAFETY: the worker process is single-threaded at this point
        // (`--test-threads=1`, before the communicator starts its threads).
        unsafe { std::env::set_var("ZCCL_SHM_DISABLE", "1") };
    }
    let c = match Communicator::from_env() {
        Ok(c) => c,
        Err(e) => {
            println!("ERR {e}");
            std::process::exit(3);
        }
    };
    let transports: Vec<String> = (0..c.size())
        .filter(|&p| p != c.rank())
        .map(|p| format!("{p}:{}", if c.uses_shm(p) { "shm" } else { "tcp" }))
        .collect();
    println!("TRANSPORTS {}", transports.join(" "));
    match role.as_str() {
        "acceptance" => {
            ring(&c, &[1, c.size() - 1], &sizes(), 1);
            shuffled_batches(&c, env_u64("ZCCL_TEST_BATCHES", 100));
        }
        "ring" => ring(&c, &[1, c.size() - 1], &sizes(), 2),
        "big" => ring(&c, &[1], &[64 << 20], 3),
        "loop" => {
            let t0 = Instant::now();
            let (r, n) = (c.rank(), c.size());
            for i in 0u64.. {
                let res = c
                    .batch(vec![
                        Op::send((r + 1) % n, pattern(r, 0, 256 << 10, i)),
                        Op::recv::<u8>((r + n - 1) % n, 256 << 10),
                    ])
                    .and_then(|h| h.wait());
                match res {
                    Ok(_) => println!("PROGRESS {i}"),
                    Err(e) => {
                        println!("ERR {e}");
                        std::process::exit(3);
                    }
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    std::process::exit(4);
                }
            }
        }
        "stray" => {
            for ep in c.endpoints() {
                println!("ENDPOINT {}", ep.addr);
            }
            let go = std::env::var("ZCCL_TEST_GO").unwrap();
            let t0 = Instant::now();
            while !std::path::Path::new(&go).exists() {
                assert!(t0.elapsed() < Duration::from_secs(30), "no go signal");
                std::thread::sleep(Duration::from_millis(20));
            }
            ring(&c, &[1, c.size() - 1], &sizes(), 4);
        }
        other => panic!("unknown role {other}"),
    }
    println!("OK rank {}", c.rank());
    drop(c);
}

// ---------------------------------------------------------------------------
// Parent side.

struct Job {
    children: Vec<Option<Child>>,
    lines: mpsc::Receiver<(u32, String)>,
    out: Vec<String>,
    secret: Option<JobSecret>,
    _root: Option<BootstrapRoot>,
}

fn spawn(role: &str, n: u32, env: &[(&str, String)], root: Option<BootstrapRoot>) -> Job {
    let exe = std::env::current_exe().unwrap();
    let (tx, lines) = mpsc::channel();
    let mut children = Vec::new();
    for r in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"])
            .env("ZCCL_TEST_ROLE", role)
            .env("ZCCL_RANK", r.to_string())
            .env("ZCCL_WORLD_SIZE", n.to_string())
            .env("ZCCL_SOCKET_IFNAME", "lo")
            .env("ZCCL_NTHREADS", "1")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in [
            "RANK",
            "WORLD_SIZE",
            "SLURM_PROCID",
            "OMPI_COMM_WORLD_RANK",
            "ZCCL_UNIQUE_ID",
            "ZCCL_ROOT_ADDR",
            "ZCCL_TIMEOUT",
        ] {
            cmd.env_remove(k);
        }
        if let Some(root) = &root {
            cmd.env("ZCCL_UNIQUE_ID", root.unique_id().to_string());
        }
        for (k, v) in env {
            cmd.env(k, v.replace("{rank}", &r.to_string()));
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx2.send((r, line));
            }
        });
        let tx3 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx3.send((r, format!("stderr: {line}")));
            }
        });
        children.push(Some(child));
    }
    Job {
        children,
        lines,
        out: vec![String::new(); n as usize],
        secret: root.as_ref().map(|r| r.unique_id().secret()),
        _root: root,
    }
}

fn root() -> BootstrapRoot {
    BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        Duration::from_secs(30),
    )
    .unwrap()
}

impl Job {
    fn pump(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left.min(Duration::from_millis(20))) {
            Ok((r, line)) => {
                self.out[r as usize].push_str(&line);
                self.out[r as usize].push('\n');
                true
            }
            Err(_) => false,
        }
    }

    fn dump(&self) -> String {
        self.out
            .iter()
            .enumerate()
            .map(|(r, o)| format!("--- rank {r} ---\n{o}"))
            .collect()
    }

    /// Waits until `pred(rank, output)` holds for every listed rank.
    fn wait_for(&mut self, ranks: &[u32], timeout: Duration, pred: impl Fn(&str) -> bool) {
        let until = Instant::now() + timeout;
        while !ranks.iter().all(|&r| pred(&self.out[r as usize])) {
            assert!(
                Instant::now() < until,
                "condition not reached within {timeout:?}\n{}",
                self.dump()
            );
            self.pump(until);
        }
    }

    /// Waits for the listed ranks to exit; kills everything on timeout.
    fn wait_exit(&mut self, ranks: &[u32], timeout: Duration) -> Vec<ExitStatus> {
        let until = Instant::now() + timeout;
        let mut status: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
        loop {
            for (i, &r) in ranks.iter().enumerate() {
                if status[i].is_none()
                    && let Some(s) = self.children[r as usize]
                        .as_mut()
                        .unwrap()
                        .try_wait()
                        .unwrap()
                {
                    status[i] = Some(s);
                }
            }
            if status.iter().all(Option::is_some) {
                // Collect what is left of the output.
                let drain_until = Instant::now() + Duration::from_millis(300);
                while self.pump(drain_until) {}
                return status.into_iter().map(Option::unwrap).collect();
            }
            if Instant::now() >= until {
                self.kill_all();
                while self.pump(Instant::now() + Duration::from_millis(100)) {}
                panic!(
                    "ranks {ranks:?} did not exit within {timeout:?}\n{}",
                    self.dump()
                );
            }
            self.pump(until);
        }
    }

    /// The job's shared-memory segments still present in `/dev/shm`.
    fn segments(&self) -> Vec<String> {
        let prefix = format!("zccl-{:016x}-", job_tag(&self.secret.expect("job secret")));
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// Checks the transport each rank reported for each peer: shared memory
    /// unless either side is in `tcp_ranks` (or `all_tcp`).
    fn expect_transports(&self, all_tcp: bool, tcp_ranks: &[u32]) {
        for (r, out) in self.out.iter().enumerate() {
            let line = out
                .lines()
                .find_map(|l| l.split_once("TRANSPORTS ").map(|(_, t)| t))
                .unwrap_or_else(|| panic!("rank {r} did not report\n{}", self.dump()));
            for item in line.split_whitespace() {
                let (p, kind) = item.split_once(':').unwrap();
                let p: u32 = p.parse().unwrap();
                let tcp = all_tcp || tcp_ranks.contains(&p) || tcp_ranks.contains(&(r as u32));
                assert_eq!(kind, if tcp { "tcp" } else { "shm" }, "rank {r}: {line}");
            }
        }
    }

    fn pid(&self, r: u32) -> i32 {
        self.children[r as usize].as_ref().unwrap().id() as i32
    }

    fn kill_all(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn expect_success(&mut self, timeout: Duration) {
        let all: Vec<u32> = (0..self.children.len() as u32).collect();
        let st = self.wait_exit(&all, timeout);
        for (r, s) in st.iter().enumerate() {
            assert!(
                s.success() && self.out[r].contains("OK rank"),
                "rank {r} failed ({s})\n{}",
                self.dump()
            );
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn acceptance_with(n: u32, env: &[(&str, String)], all_tcp: bool, tcp_ranks: &[u32]) {
    let mut env = env.to_vec();
    env.push(("ZCCL_TIMEOUT", "30".into()));
    let mut job = spawn("acceptance", n, &env, Some(root()));
    job.expect_success(Duration::from_secs(50));
    job.expect_transports(all_tcp, tcp_ranks);
    assert_eq!(job.segments(), Vec::<String>::new(), "segments left behind");
}

fn acceptance(n: u32) {
    acceptance_with(n, &[], false, &[]);
}

#[test]
fn ring_sizes_and_shuffled_batches_n4_tcp_only() {
    acceptance_with(4, &[("ZCCL_SHM_DISABLE", "1".into())], true, &[]);
}

#[test]
fn mixed_shm_and_tcp_when_one_rank_disables_shm_n3() {
    acceptance_with(3, &[("ZCCL_TEST_TCP_RANK", "1".into())], false, &[1]);
}

#[test]
fn small_shm_ring_streams_every_size_n3() {
    acceptance_with(3, &[("ZCCL_SHM_RING_BYTES", "4096".into())], false, &[]);
}

#[test]
fn ring_sizes_and_shuffled_batches_n2() {
    acceptance(2);
}

#[test]
fn ring_sizes_and_shuffled_batches_n3() {
    acceptance(3);
}

#[test]
fn ring_sizes_and_shuffled_batches_n4() {
    acceptance(4);
}

#[test]
fn ring_sizes_and_shuffled_batches_n8() {
    acceptance(8);
}

#[test]
fn ring_64_mib_every_byte_verified() {
    for (n, ring) in [(2, "4194304"), (4, "65536")] {
        let env = [
            ("ZCCL_TIMEOUT", "30".into()),
            ("ZCCL_SHM_RING_BYTES", ring.into()),
        ];
        let mut job = spawn("big", n, &env, Some(root()));
        job.expect_success(Duration::from_secs(50));
        job.expect_transports(false, &[]);
    }
}

#[test]
fn ring_64_mib_every_byte_verified_tcp_only() {
    let env = [
        ("ZCCL_TIMEOUT", "30".into()),
        ("ZCCL_SHM_DISABLE", "1".into()),
    ];
    let mut job = spawn("big", 2, &env, Some(root()));
    job.expect_success(Duration::from_secs(50));
    job.expect_transports(true, &[]);
}

#[test]
fn torchrun_variables_rank0_hosts_root() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = [
        ("RANK".to_string(), "{rank}".to_string()),
        ("WORLD_SIZE".into(), "3".into()),
        ("LOCAL_RANK".into(), "{rank}".into()),
        ("MASTER_ADDR".into(), "127.0.0.1".into()),
        ("MASTER_PORT".into(), (port - 1).to_string()),
        ("ZCCL_TEST_SIZES".into(), "0,1,1000".into()),
        ("ZCCL_TIMEOUT".into(), "20".into()),
    ];
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut job = spawn("ring", 3, &env, None);
    job.expect_success(Duration::from_secs(40));
}

fn assert_all_name(job: &Job, ranks: &[u32], dead: u32, statuses: &[ExitStatus], shm: bool) {
    for (i, &r) in ranks.iter().enumerate() {
        let out = &job.out[r as usize];
        let err = out
            .lines()
            .find(|l| l.starts_with("ERR "))
            .unwrap_or_else(|| panic!("rank {r} printed no error\n{}", job.dump()));
        eprintln!("rank {r}: {err}");
        assert_eq!(statuses[i].code(), Some(3), "rank {r}\n{}", job.dump());
        assert!(
            err.contains(&format!("rank {dead} ")),
            "rank {r} does not name rank {dead}: {err}"
        );
        assert!(
            err.contains("seq ") && err.contains("NIC "),
            "rank {r}: error lacks op/seq/NIC: {err}"
        );
        // The ring neighbours hear it from the dead rank's own path: over
        // shared memory that path names the segment.
        if shm && err.contains(&format!("rank {dead} was")) {
            assert!(
                err.contains("shm /dev/shm/zccl-"),
                "rank {r}: error lacks the shm path: {err}"
            );
        }
    }
}

fn kill_9(shm: bool) {
    let mut env = vec![("ZCCL_TIMEOUT", "5".to_string())];
    if !shm {
        env.push(("ZCCL_SHM_DISABLE", "1".into()));
    }
    let mut job = spawn("loop", 4, &env, Some(root()));
    job.wait_for(&[0, 1, 2, 3], Duration::from_secs(30), |o| {
        o.contains("PROGRESS 3\n")
    });
    job.expect_transports(!shm, &[]);
    let t0 = Instant::now();
    job.children[2].as_mut().unwrap().kill().unwrap(); // SIGKILL
    let others = [0, 1, 3];
    let st = job.wait_exit(&others, Duration::from_secs(10));
    let took = t0.elapsed();
    assert_all_name(&job, &others, 2, &st, shm);
    eprintln!("all ranks failed {took:?} after kill -9");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let _ = job.children[2].as_mut().unwrap().wait();
    assert_eq!(job.segments(), Vec::<String>::new(), "segments left behind");
}

#[test]
fn kill_9_of_one_rank_fails_every_other_rank_naming_it() {
    kill_9(true);
}

#[test]
fn kill_9_of_one_rank_fails_every_other_rank_naming_it_tcp_only() {
    kill_9(false);
}

#[test]
fn sigstop_of_one_rank_fails_every_other_rank_naming_it() {
    let mut job = spawn("loop", 4, &[("ZCCL_TIMEOUT", "4".into())], Some(root()));
    job.wait_for(&[0, 1, 2, 3], Duration::from_secs(30), |o| {
        o.contains("PROGRESS 3\n")
    });
    let t0 = Instant::now();
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(job.pid(1), libc::SIGSTOP) }, 0);
    let others = [0, 2, 3];
    let st = job.wait_exit(&others, Duration::from_secs(12));
    let took = t0.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(job.pid(1), libc::SIGKILL) };
    assert_all_name(&job, &others, 1, &st, true);
    eprintln!("all ranks failed {took:?} after SIGSTOP");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

fn hello(secret: JobSecret, purpose: Purpose, src: u32, dst: u32, world: u32) -> [u8; HELLO_LEN] {
    Hello {
        version: PROTOCOL_VERSION,
        purpose,
        secret,
        src_rank: src,
        dst_rank: dst,
        world_size: world,
        socket_index: 0,
        num_sockets: 2,
    }
    .encode()
}

/// Opens the stray connections against `addr`; returns those held open.
fn strays(addr: SocketAddr, secret: JobSecret, purpose: Purpose, dst: u32) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let mut seed = 12345u64;
    let mut random = vec![0u8; 4096];
    for b in random.iter_mut() {
        *b = splitmix(&mut seed) as u8;
    }
    let other_job = JobSecret::from_bytes([0x5a; 16]);
    let mut wrong_version = hello(secret, purpose, 2, dst, 3);
    wrong_version[8] = 99;
    let mut huge_frame = hello(secret, purpose, 2, dst, 3).to_vec();
    huge_frame.extend_from_slice(&[b'Z', 5, 0, 0]);
    huge_frame.extend_from_slice(&[0xff; 36]);
    let payloads: Vec<Vec<u8>> = vec![
        random,
        hello(other_job, purpose, 1, dst, 3).to_vec(), // another job's rank
        wrong_version.to_vec(),                        // another protocol version
        // Wrong world size (at the root, which learns the world size from the
        // first valid registration, only a foreign secret is a stray).
        hello(
            if purpose == Purpose::Bootstrap {
                other_job
            } else {
                secret
            },
            purpose,
            1,
            dst,
            4,
        )
        .to_vec(),
        hello(secret, purpose, 7, dst, 3).to_vec(), // rank outside the world
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // port scanner
        huge_frame,                                 // oversized frame
    ];
    for p in payloads {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = s.write_all(&p);
            held.push(s);
        }
    }
    // Half-open: connect and say nothing.
    for _ in 0..3 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            held.push(s);
        }
    }
    held
}

#[test]
fn stray_connections_are_dropped_and_the_job_completes() {
    let root = root();
    let id = root.unique_id();
    // Strays at the root before any rank registers.
    let mut held = strays(id.root(), id.secret(), Purpose::Bootstrap, ROOT_RANK);
    let go = std::env::temp_dir().join(format!(
        "zccl-go-{}-{}",
        std::process::id(),
        id.root().port()
    ));
    let _ = std::fs::remove_file(&go);
    let env = [
        ("ZCCL_TEST_GO", go.display().to_string()),
        ("ZCCL_TIMEOUT", "20".into()),
        ("ZCCL_HANDSHAKE_TIMEOUT", "2".into()),
    ];
    let mut job = spawn("stray", 3, &env, Some(root));
    job.wait_for(&[0, 1, 2], Duration::from_secs(30), |o| {
        o.contains("ENDPOINT")
    });
    for r in 0..3u32 {
        let eps: Vec<SocketAddr> = job.out[r as usize]
            .lines()
            .filter_map(|l| l.strip_prefix("ENDPOINT "))
            .map(|a| a.parse().unwrap())
            .collect();
        for ep in eps {
            held.extend(strays(ep, id.secret(), Purpose::Data, r));
            // A valid hello for a socket that already exists: a duplicate, rejected.
            if r == 0 {
                let mut s = TcpStream::connect(ep).unwrap();
                s.write_all(&hello(id.secret(), Purpose::Data, 1, 0, 3))
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 1];
                assert!(
                    matches!(s.read(&mut buf), Ok(0) | Err(_)),
                    "duplicate connection was answered"
                );
            }
        }
    }
    std::fs::write(&go, b"go").unwrap();
    job.expect_success(Duration::from_secs(40));
    drop(held);
    let _ = std::fs::remove_file(&go);
}
