//! The Rust examples (`examples/*.rs`) end to end: built once with cargo,
//! then each run under `zccl run` with 2 and 4 ranks. Every example checks
//! its result against a single-process reference and prints
//! `<name>: OK max_err=...` on rank 0, or exits non-zero.
//!
//! Cargo sets no `CARGO_BIN_EXE_*` for examples, so this test builds them
//! itself (`cargo build -p zccl --examples`, the profile of the `zccl` binary
//! under test) and finds them in `<profile dir>/examples/`.
#![cfg(feature = "cli")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Deadline of building the examples (a cold build on a small machine,
/// possibly waiting for another cargo's lock).
const BUILD_LIMIT: Duration = Duration::from_secs(900);
/// Deadline of one example run: a bound on a hang, not a benchmark.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Runs `cmd` to completion within `limit` (killed and panicking past it);
/// returns (status, stdout, stderr).
fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Builds the examples once (for all tests of this file); returns the
/// folder they are in.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/zccl -> target/<profile>
        let profile_dir = Path::new(env!("CARGO_BIN_EXE_zccl"))
            .parent()
            .expect("the zccl binary is in a folder")
            .to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "zccl", "--examples"]);
        match profile_dir.file_name().and_then(|s| s.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
            None => panic!("unexpected binary folder {}", profile_dir.display()),
        }
        let (status, _out, err) = run_bounded(cmd, BUILD_LIMIT, "cargo build --examples");
        assert!(status.success(), "cargo build --examples: {status}\n{err}");
        profile_dir.join("examples")
    })
}

/// Runs example `name` with `n` ranks and checks its `OK` line.
fn run_example(name: &str, n: usize) {
    let exe = examples_dir().join(name);
    assert!(exe.is_file(), "{} was not built", exe.display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zccl"));
    cmd.args(["run", "-n", &n.to_string(), "--"])
        .arg(&exe)
        .env_remove("ZCCL_DEBUG");
    let what = format!("zccl run -n {n} {name}");
    let (status, out, err) = run_bounded(cmd, RUN_LIMIT, &what);
    assert!(status.success(), "{what}: {status}\n{out}\n{err}");
    let ok = format!("[0] {name}: OK max_err=");
    assert!(
        out.lines().any(|l| l.starts_with(&ok)),
        "{what}: no line starting with {ok:?} in\n{out}\n{err}"
    );
    eprintln!("{}", out.trim_end());
}

#[test]
fn ring_attention() {
    for n in [2, 4] {
        run_example("ring_attention", n);
    }
}

#[test]
fn ulysses_attention() {
    for n in [2, 4] {
        run_example("ulysses_attention", n);
    }
}

#[test]
fn token_ring_attention() {
    for n in [2, 4] {
        run_example("token_ring_attention", n);
    }
}

#[test]
fn zeco_linear_attention() {
    for n in [2, 4] {
        run_example("zeco_linear_attention", n);
    }
}
