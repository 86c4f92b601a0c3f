//! Multi-process jobs: the test binary re-executes itself once per rank with
//! the launcher's environment (`zccl_runtime::launcher::{pick_ports,
//! rank_env}`); each worker prints result lines that the parent checks.
//! Children are killed at a deadline, so a wedged job fails instead of hanging.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set in a worker's environment.
pub const WORKER_VAR: &str = "ZCCL_PRIMITIVES_WORKER";
/// Prefix of the result lines workers print.
pub const RESULT: &str = "ZCCL-RESULT";

/// Whether this process is a re-executed worker.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_VAR).is_some()
}

/// One job at a time per test binary: fewer processes on few cores, and no
/// two jobs racing for ports.
static JOBS: Mutex<()> = Mutex::new(());

/// What one rank of a job printed.
pub struct RankOutput {
    pub stdout: String,
    pub stderr: String,
}

impl RankOutput {
    /// The result lines `ZCCL-RESULT <fields...>`, without the prefix.
    pub fn results(&self) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            // libtest's "test name ... " may precede the first line (--nocapture).
            .filter_map(|l| l.find(RESULT).map(|i| &l[i + RESULT.len()..]))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    }
}

fn tail(s: &str) -> &str {
    let cut = s.len().saturating_sub(4000);
    let cut = (cut..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[cut..]
}

/// Runs `n` ranks of the test `test_name` (which must call its worker body
/// when [`is_worker`]) as separate processes, with `env` added to each
/// rank's environment; every rank must exit successfully within `deadline`.
/// Returns each rank's output, in rank order.
pub fn run_job(
    test_name: &str,
    n: u32,
    env: &[(&str, String)],
    deadline: Duration,
) -> Vec<RankOutput> {
    let _one_at_a_time = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let ports = zccl_runtime::launcher::pick_ports(None).unwrap();
    let secret = format!(
        "{:032x}",
        std::process::id() as u128 * 0x9E37_79B9 + n as u128
    );
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let mut children: Vec<_> = (0..n)
        .map(|r| {
            let mut cmd = Command::new(&exe);
            cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
                .env(WORKER_VAR, "1")
                .env("ZCCL_SOCKET_IFNAME", "lo")
                .env("ZCCL_TIMEOUT", "30")
                .env("ZCCL_NTHREADS", "1");
            for (k, v) in zccl_runtime::launcher::rank_env(r, n, ports, &secret) {
                cmd.env(k, v);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Drain both pipes on threads so a chatty child never blocks on a full pipe.
            let mut out = child.stdout.take().unwrap();
            let mut err = child.stderr.take().unwrap();
            let to = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            });
            let te = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            });
            (child, to, te)
        })
        .collect();
    let end = start + deadline;
    let mut status = vec![None; n as usize];
    while status.iter().any(Option::is_none) && Instant::now() < end {
        for (r, (c, _, _)) in children.iter_mut().enumerate() {
            if status[r].is_none() {
                status[r] = c.try_wait().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut outs = Vec::new();
    let mut failures = Vec::new();
    for (r, (mut c, to, te)) in children.drain(..).enumerate() {
        if status[r].is_none() {
            let _ = c.kill();
        }
        let st = c.wait().unwrap();
        let (stdout, stderr) = (to.join().unwrap(), te.join().unwrap());
        if status[r].is_none() {
            failures.push(format!(
                "rank {r} still running after {deadline:?} (killed)\n--- stdout\n{}\n--- stderr\n{}",
                tail(&stdout),
                tail(&stderr)
            ));
        } else if !st.success() {
            failures.push(format!(
                "rank {r} failed: {st}\n--- stdout\n{}\n--- stderr\n{}",
                tail(&stdout),
                tail(&stderr)
            ));
        }
        outs.push(RankOutput { stdout, stderr });
    }
    assert!(
        failures.is_empty(),
        "{test_name}: {n}-process job failed after {:.1} s:\n{}",
        start.elapsed().as_secs_f64(),
        failures.join("\n")
    );
    outs
}
