//! Acceptance test of the metrics: a real Prometheus scrapes a running
//! `zccl-bench`, and `sum(zccl_nic_transmit_bytes_total)` agrees with the
//! bytes the bench itself counted (`# Bytes sent by all ranks`) within 1 %.
//!
//! Needs the `prometheus` binary (Debian's `prometheus` package; `.ci/run`
//! installs it). Without it the test prints `SKIPPED
//! prometheus_scrapes_the_bytes_the_bench_sent: prometheus not installed`
//! (shown without `--nocapture`, see `zccl_testbed::skip`) and passes, so
//! developer machines need nothing.
//!
//! Every wait is bounded and every child is killed on every path (the
//! [`Proc`] guard), so a hang fails the test instead of blocking CI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zccl_bench::report::parse_bytes_sent;

const BIN: &str = env!("CARGO_BIN_EXE_zccl-bench");

/// A child process that is stopped (SIGTERM, then SIGKILL after 3 s) and
/// reaped when the guard is dropped, on success and on panic alike.
struct Proc {
    name: &'static str,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &'static str, child: Child) -> Proc {
        Proc {
            name,
            child: Some(child),
        }
    }

    /// Sends SIGTERM and waits up to `within`; returns the exit status, or
    /// `None` if it had to be killed.
    fn stop(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{}: still running {within:?} after SIGTERM, killing",
            self.name
        );
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The `prometheus` binary on `PATH`, if any.
fn find_prometheus() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A base port `p` such that `p .. p + n` are all free right now.
fn free_ports(n: u16) -> u16 {
    for _ in 0..50 {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1");
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /api/v1/query?query=Q` over plain HTTP/1.0; the `data.result` array.
fn query(port: u16, q: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /api/v1/query?query={} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        encode(q)
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {resp:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or("")));
    }
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("bad JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("query failed: {body}"));
    }
    v["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("no data.result: {body}"))
}

/// The value of a one-sample instant vector, if it has one sample.
fn scalar(result: &[serde_json::Value]) -> Option<f64> {
    match result {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn prometheus_scrapes_the_bytes_the_bench_sent() {
    let Some(prometheus) = find_prometheus() else {
        zccl_testbed::skip("prometheus not installed");
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let bench_err = dir.path().join("bench.stderr");
    let prom_log = dir.path().join("prometheus.log");

    // 1. The bench: 2 ranks, metrics on base, base + 1; held after the sweep.
    let base = free_ports(2);
    let mut cmd = Command::new(BIN);
    cmd.args([
        "sendrecv",
        "-N",
        "2",
        "-b",
        "4M",
        "-e",
        "4M",
        "-n",
        "10",
        "--no-progress",
        "--hold",
        "60",
    ])
    .env("ZCCL_METRICS_ADDR", format!("127.0.0.1:{base}"))
    .env("ZCCL_TIMEOUT", "30")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&bench_err).unwrap());
    for k in [
        "ZCCL_RANK",
        "RANK",
        "SLURM_PROCID",
        "OMPI_COMM_WORLD_RANK",
        "ZCCL_BENCH_CORRUPT",
    ] {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().expect("start zccl-bench");
    let stdout = child.stdout.take().unwrap();
    let mut bench = Proc::new("zccl-bench", child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Wait (bounded) for the footer's byte count, then the hold banner:
    // from then on every counter is final.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut out, mut sent) = (String::new(), None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(b) = parse_bytes_sent(&line) {
                    sent = Some(b);
                }
                let holding = line.starts_with("# Holding for");
                out += &line;
                out.push('\n');
                if holding {
                    break;
                }
            }
            Err(e) => panic!(
                "no hold banner from zccl-bench ({e:?}):\n{out}\n--- stderr:\n{}",
                tail(&bench_err)
            ),
        }
    }
    let sent = sent.unwrap_or_else(|| panic!("no '# Bytes sent by all ranks' line:\n{out}"));
    assert!(out.contains("# Out of bounds values : 0 OK"), "{out}");
    // Two ranks, each sends 4 MiB x (1 warm-up + 10 timed + 1 check) per half.
    let payload = 2 * 2 * 12 * (4u64 << 20);
    assert!(
        sent >= payload,
        "the bench reports {sent} B, below {payload}"
    );

    // 2. Prometheus, scraping both ranks every second.
    let web = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: zccl\n    scrape_interval: 1s\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{base}\", \"127.0.0.1:{}\"]\n",
            base + 1
        ),
    )
    .unwrap();
    let log = std::fs::File::create(&prom_log).unwrap();
    let child = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let mut prom = Proc::new("prometheus", child);

    // 3. Poll until both ranks have been scraped, then read the sum.
    let deadline = Instant::now() + Duration::from_secs(30);
    let per_instance = "count(count by (instance) (zccl_nic_transmit_bytes_total))";
    let mut last = String::new();
    let scraped = loop {
        match query(web, per_instance) {
            Ok(r) if scalar(&r) == Some(2.0) => break true,
            Ok(r) => last = format!("{per_instance} = {r:?}"),
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        scraped,
        "prometheus did not scrape both ranks within 30 s; last answer: {last}\n--- prometheus log:\n{}",
        tail(&prom_log)
    );
    let result = query(web, "sum(zccl_nic_transmit_bytes_total)").unwrap();
    let total = scalar(&result).unwrap_or_else(|| panic!("no single sample: {result:?}"));
    println!(
        "prometheus: sum(zccl_nic_transmit_bytes_total) = {total}; zccl-bench: {sent} B sent ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(total > 0.0);
    let rel = (total - sent as f64).abs() / sent as f64;
    assert!(
        rel <= 0.01,
        "prometheus says {total} B, the bench {sent} B: {:.3} % apart",
        rel * 100.0
    );

    // 4. Stop both; the bench ends its hold on SIGTERM and exits 0.
    let _ = prom.stop(Duration::from_secs(5));
    let st = bench.stop(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "zccl-bench did not end its hold cleanly on SIGTERM: {st:?}\n--- stderr:\n{}",
        tail(&bench_err)
    );
}
