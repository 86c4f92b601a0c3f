//! No `ZCCL_*` value makes zccl panic: every variable a rank reads is walked
//! with hostile values (empty, blanks, signs, overflowing and non-finite
//! numbers, hex, full-width digits, 100 KB strings, NUL, non-UTF-8 bytes,
//! words on numeric variables, bad addresses and paths) and with the edges
//! of its accepted range.
//!
//! * In process, without a job: [`Config::from_lookup`],
//!   [`logging::parse`], [`launcher_env::detect`] and the NIC selection
//!   ([`zccl_transports::ifname::select`]) must return `Ok` or an error that
//!   names the variable, never panic.
//! * Every distinct configuration that is accepted (with a timeout of at
//!   least 1 s: a shorter one fails init as a timeout, as it should) then
//!   starts a 1-rank communicator in process: it must come up, or fail with
//!   an error naming the variable (e.g. `ZCCL_SOCKET_IFNAME` that selects no
//!   NIC), and nothing may panic on any thread (a panic hook counts them).
//! * Variables only read from the process environment deep inside
//!   (`ZCCL_HOST_ID`, `ZCCL_TOPO_*`, `ZCCL_SYSFS_ROOT`, the `ZCCL_DEBUG_FILE`
//!   log file), non-UTF-8 bytes in every variable, and the values of the
//!   original report (`ZCCL_TIMEOUT=1e19`, ...) are tried in a fresh copy of
//!   this test binary that joins a 1-rank job with
//!   [`Communicator::from_env`] (the `child` test does that when
//!   `ZCCL_HOSTILE_CHILD` is set, and nothing otherwise), in a scratch
//!   directory (log and dump files with hostile names land there).
//!
//! `every_variable_in_the_sources_is_walked` keeps the list complete: a
//! `ZCCL_*` name in the sources of the runtime, the transports or the
//! topology probe that this file does not walk fails it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, mpsc};
use std::time::{Duration, Instant};

use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId, launcher_env, logging};

/// Who reads a variable, which decides how it is walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// [`Config::from_lookup`]; the result configures an in-process init.
    Config,
    /// [`logging::parse`]; the log file is opened in a child.
    Logging,
    /// [`launcher_env::detect`].
    Launcher,
    /// Read from the process environment during init: children only.
    Deep,
}

/// Every `ZCCL_*` variable a rank reads, with values at and just past the
/// edges of what it accepts (walked on top of [`hostile`]).
#[rustfmt::skip]
const VARS: &[(&str, Reader, &[&str])] = &[
    ("ZCCL_TIMEOUT", Reader::Config, &["1e9", "1000000000.0000001", "0.001", "1e-300"]),
    ("ZCCL_PEER_TIMEOUT", Reader::Config, &["1e9", "1e9.5", "0.001", "5e-324"]),
    ("ZCCL_HEARTBEAT_MS", Reader::Config, &["1000000000000", "1000000000001"]),
    ("ZCCL_HANDSHAKE_TIMEOUT", Reader::Config, &["1e9", "1.0000001e9"]),
    ("ZCCL_SOCKET_IFNAME", Reader::Config, &["^", "=", "^=", ",,,", "=lo", "^lo,docker"]),
    ("ZCCL_NSOCKS_PERPEER", Reader::Config, &["64", "65", "65536"]),
    ("ZCCL_CHUNK_BYTES", Reader::Config, &["16777216", "16777217", "1"]),
    ("ZCCL_MAX_FRAME_BYTES", Reader::Config, &["4294967295", "4294967296", "524288", "524287"]),
    ("ZCCL_MAX_MESSAGE_BYTES", Reader::Config, &["1099511627776", "1099511627777", "1"]),
    ("ZCCL_SOCKET_BUFFER_BYTES", Reader::Config, &["2147483647", "2147483648", "4294967296"]),
    ("ZCCL_METRICS_ADDR", Reader::Config, &["127.0.0.1:65536", "[::1]:", "localhost:9400", "127.0.0.1:0"]),
    ("ZCCL_NTHREADS", Reader::Config, &["18446744073709551615", "65"]),
    ("ZCCL_SHM_DISABLE", Reader::Config, &["2", "1"]),
    ("ZCCL_SHM_RING_BYTES", Reader::Config, &["4096", "4095", "1073741824", "1073741825"]),
    ("ZCCL_SHM_SPIN", Reader::Config, &["4294967295", "4294967296"]),
    ("ZCCL_SHM_CMA_MIN_BYTES", Reader::Config, &["18446744073709551615"]),
    ("ZCCL_SHM_CMA_DISABLE", Reader::Config, &["1", "2"]),
    ("ZCCL_SHM_POLL_LEASE_US", Reader::Config, &["0", "1000000", "1000001", "-1", "1ms"]),
    ("ZCCL_MAX_UNEXPECTED_BYTES", Reader::Config, &["1", "0", "9223372036854775808", "9223372036854775809"]),
    ("ZCCL_MALLOC_TUNE", Reader::Config, &["2", "0", "1"]),
    ("ZCCL_SPIN_US", Reader::Config, &["18446744073709551615", "1000001"]),
    ("ZCCL_SPIN_US_PER_MIB", Reader::Config, &["0", "1000000", "1000001", "-1", "250us"]),
    ("ZCCL_ROUTER", Reader::Config, &["affinity", "OFF", "sideways"]),
    ("ZCCL_CROSS_NIC", Reader::Config, &["3", "00"]),
    ("ZCCL_PXN_DISABLE", Reader::Config, &["1", "2"]),
    ("ZCCL_ROUTE_CHUNK_BYTES", Reader::Config, &["4095", "4096", "18446744073709551615"]),
    ("ZCCL_DEBUG", Reader::Logging, &["TRACE", "none", "verbose"]),
    ("ZCCL_DEBUG_SUBSYS", Reader::Logging, &["^", "ALL", "^ALL", "NET,,DISK"]),
    ("ZCCL_DEBUG_FILE", Reader::Logging, &["%", "%h%p%%%x", "zccl.%h.%p.log"]),
    ("ZCCL_RANK", Reader::Launcher, &["4294967295", "4294967296", "1"]),
    ("ZCCL_WORLD_SIZE", Reader::Launcher, &["4294967295", "4294967296"]),
    ("ZCCL_LOCAL_RANK", Reader::Launcher, &["4294967295", "1"]),
    ("ZCCL_LOCAL_WORLD_SIZE", Reader::Launcher, &["4294967295", "2"]),
    ("ZCCL_ROOT_ADDR", Reader::Launcher, &["127.0.0.1:65535", "127.0.0.1:0", "[::1]", "[]:1", "h:"]),
    ("ZCCL_ROOT_PORT", Reader::Launcher, &["65535", "65536", "1"]),
    ("ZCCL_JOB_SECRET", Reader::Launcher, &["+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a", "é"]),
    ("ZCCL_UNIQUE_ID", Reader::Launcher, &["zccl1-", "zccl1-@", "zccl1-é@1.2.3.4:5"]),
    ("ZCCL_HOST_ID", Reader::Deep, &["../../../../etc/passwd", "a/b"]),
    ("ZCCL_TOPO_FILE", Reader::Deep, &["/", "/dev/null", "/proc/self/status"]),
    ("ZCCL_SYSFS_ROOT", Reader::Deep, &["/proc", "/dev/null"]),
    ("ZCCL_TOPO_DUMP_FILE", Reader::Deep, &["/", "/dev/full", "."]),
    ("ZCCL_TOPO_MAX_BYTES", Reader::Deep, &["1", "16777216", "18446744073709551615"]),
];

/// Launcher variables of torchrun, Slurm and Open MPI, walked through
/// [`launcher_env::detect`] on top of a base that selects that launcher.
const LAUNCHER_BASES: &[&[(&str, &str)]] = &[
    &[
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("LOCAL_WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_RUN_ID", "r"),
    ],
    &[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "1"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_JOB_NODELIST", "n[1-2]"),
        ("SLURM_STEP_NODELIST", "n[1-2]"),
        ("SLURM_NODELIST", "n1"),
        ("SLURM_JOB_ID", "5"),
        ("SLURM_STEP_ID", "0"),
    ],
    &[
        ("OMPI_COMM_WORLD_RANK", "0"),
        ("OMPI_COMM_WORLD_SIZE", "1"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
        ("ZCCL_ROOT_ADDR", "127.0.0.1:29500"),
        ("OMPI_MCA_ess_base_jobid", "j"),
    ],
];

/// The hostile values every variable gets.
fn hostile() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "\t\n",
        "-1",
        "0",
        "-0",
        "+1",
        "1e19",
        "1e20",
        "1e300",
        "inf",
        "-inf",
        "infinity",
        "nan",
        "NaN",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "0x10",
        "1.5.2",
        "1_000",
        "１",
        "٣",
        "\u{0}",
        "1\u{0}",
        "true",
        "yes",
        "99999999999999999999K",
        "1K",
        "4GiB",
        "::::",
        "256.1.1.1:99999",
        "/nonexistent/dir/file",
        "%n%s%x",
        "é",
        "\u{202e}",
    ]
    .map(String::from)
    .to_vec();
    v.push("9".repeat(100_000));
    v.push("x".repeat(100_000));
    v.push("é".repeat(50_000));
    v
}

/// Non-UTF-8 values: only a real environment can hold them.
fn not_utf8() -> Vec<OsString> {
    [&b"\xff"[..], b"1\xfe", b"\xc3\x28", b"\x80zccl"]
        .iter()
        .map(|b| OsStr::from_bytes(b).to_os_string())
        .collect()
}

/// The tests of this file (libtest names their threads after them).
const TESTS: &[&str] = &[
    "config_values_never_panic_and_accepted_ones_start_a_rank",
    "logging_values_never_panic",
    "launcher_values_never_panic",
    "child",
    "deep_variables_in_the_process_environment",
    "non_utf8_values_are_errors_naming_the_variable",
    "every_variable_in_the_sources_is_walked",
];

/// Panics on threads other than the tests' own since the hook was installed.
static PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_TEXT: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The test threads' own assertions are libtest's to report;
            // counted are panics on threads zccl (or a test's helper) runs.
            let name = std::thread::current().name().map(String::from);
            let test_thread = name
                .as_deref()
                .is_some_and(|n| n == "main" || TESTS.contains(&n));
            if !test_thread {
                PANICS.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut t) = PANIC_TEXT.lock() {
                    t.push(format!("thread {name:?}: {info}"));
                }
            }
            prev(info);
        }));
    });
}

fn assert_no_panics() {
    let n = PANICS.load(Ordering::SeqCst);
    let text = PANIC_TEXT.lock().map(|t| t.join("\n")).unwrap_or_default();
    assert_eq!(n, 0, "panics:\n{text}");
}

/// `v` for a failure message: long values cut.
fn short(v: &str) -> String {
    let s: String = v.chars().take(40).collect();
    if s.len() < v.len() {
        format!("{s:?}... ({} bytes)", v.len())
    } else {
        format!("{s:?}")
    }
}

/// Runs `f`, failing the test with `what` if it panics.
fn no_panic<R>(what: &str, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => panic!("{what} panicked"),
    }
}

/// An error message must name the variable it is about.
fn assert_names(var: &str, value: &str, msg: &str) {
    assert!(
        msg.contains(var),
        "{var}={}: the error does not name the variable: {msg}",
        short(value)
    );
    assert!(
        msg.len() < 10_000,
        "{var}={}: error of {} bytes",
        short(value),
        msg.len()
    );
}

fn values_of(edges: &[&str]) -> Vec<String> {
    let mut v = hostile();
    v.extend(edges.iter().map(|s| s.to_string()));
    v
}

/// Starts a 1-rank communicator with `cfg` in a thread; `Ok` when it came
/// up (and closed), else the error. Fails the test past a deadline.
fn init_one_rank(cfg: Config) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let root = BootstrapRoot::start(
                "127.0.0.1:0".parse().unwrap(),
                UniqueId::random_secret().unwrap(),
                Duration::from_secs(20),
            )
            .map_err(|e| format!("test root: {e}"))?;
            let c = Communicator::init(&root.unique_id(), 0, 1, cfg).map_err(|e| e.to_string())?;
            drop(c);
            Ok(())
        }));
        let _ = tx.send(r.unwrap_or_else(|_| Err("PANIC".to_string())));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a 1-rank init did not finish within 30 s");
    assert_ne!(
        r.as_ref().err().map(String::as_str),
        Some("PANIC"),
        "init panicked"
    );
    r
}

#[test]
fn config_values_never_panic_and_accepted_ones_start_a_rank() {
    count_panics();
    let t0 = Instant::now();
    let mut accepted: Vec<(String, String, Config)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for &(var, reader, edges) in VARS {
        if reader != Reader::Config {
            continue;
        }
        for v in values_of(edges) {
            let r = no_panic(&format!("Config::from_lookup {var}={}", short(&v)), || {
                Config::from_lookup(|k| (k == var).then(|| v.clone()))
            });
            match r {
                Ok(cfg) => {
                    // Also the NIC selection, pure, against a fixed list.
                    let nics = [
                        zccl_transports::ifname::Interface {
                            name: "lo".into(),
                            addr: "127.0.0.1".parse().unwrap(),
                        },
                        zccl_transports::ifname::Interface {
                            name: "eth0".into(),
                            addr: "10.0.0.1".parse().unwrap(),
                        },
                    ];
                    let sel = no_panic(&format!("ifname::select {var}={}", short(&v)), || {
                        zccl_transports::ifname::select(cfg.socket_ifname.as_deref(), &nics)
                    });
                    if let Err(e) = sel {
                        assert_names(var, &v, &e.to_string());
                    }
                    // A rank cannot come up in 1 ms: a deadline that
                    // short fails init as it should (as a timeout).
                    let startable = cfg.timeout >= Duration::from_secs(1);
                    if startable && seen.insert(format!("{cfg:?}")) {
                        accepted.push((var.to_string(), v, cfg));
                    }
                }
                Err(e) => assert_names(var, &v, &e.to_string()),
            }
        }
    }
    // The accepted configurations, each in a 1-rank job (the one from the
    // defaults included): up, or an error naming the variable.
    let mut up = 0;
    for (var, v, cfg) in accepted {
        match init_one_rank(cfg) {
            Ok(()) => up += 1,
            Err(e) => assert_names(&var, &v, &e),
        }
    }
    assert!(up > 0, "no configuration came up at all");
    assert_no_panics();
    eprintln!(
        "hostile_env: config walk, {up} 1-rank jobs up, {:?}",
        t0.elapsed()
    );
}

#[test]
fn logging_values_never_panic() {
    count_panics();
    for &(var, reader, edges) in VARS {
        if reader != Reader::Logging {
            continue;
        }
        for v in values_of(edges) {
            let r = no_panic(&format!("logging::parse {var}={}", short(&v)), || {
                logging::parse(|k| (k == var).then(|| v.clone()))
            });
            match r {
                Ok(s) => {
                    let path = no_panic("file_path", || s.file_path("host", 7));
                    assert_eq!(
                        path.is_some(),
                        var == "ZCCL_DEBUG_FILE" && !v.trim().is_empty()
                    );
                }
                Err(e) => assert_names(var, &v, &e.to_string()),
            }
        }
    }
    assert_no_panics();
}

#[test]
fn launcher_values_never_panic() {
    count_panics();
    let zccl_base: &[(&str, &str)] = &[
        ("ZCCL_RANK", "0"),
        ("ZCCL_WORLD_SIZE", "1"),
        ("ZCCL_ROOT_ADDR", "127.0.0.1:29500"),
    ];
    let walk = |base: &[(&str, &str)], var: &str, v: &str, must_name: bool| {
        let mut m: HashMap<&str, String> = base.iter().map(|(k, v)| (*k, v.to_string())).collect();
        m.insert(var, v.to_string());
        let r = no_panic(&format!("launcher_env::detect {var}={}", short(v)), || {
            launcher_env::detect(&|k| m.get(k).cloned())
        });
        if let Err(e) = r
            && must_name
        {
            assert_names(var, v, &e.to_string());
        }
    };
    for &(var, reader, edges) in VARS {
        if reader != Reader::Launcher {
            continue;
        }
        for v in values_of(edges) {
            walk(zccl_base, var, &v, true);
            // And alone (no rank, no root): errors, never panics.
            walk(&[], var, &v, false);
        }
    }
    for base in LAUNCHER_BASES {
        for &(var, _) in base.iter() {
            for v in hostile() {
                walk(base, var, &v, var.starts_with("ZCCL_"));
            }
        }
    }
    assert_no_panics();
}

// ---------------------------------------------------------------------------
// Children: the process environment itself.

/// One rank of a 1-rank job through `Communicator::from_env`, when this
/// binary was started by [`run_child`]; nothing otherwise.
#[test]
fn child() {
    if std::env::var_os("ZCCL_HOSTILE_CHILD").is_none() {
        return;
    }
    match Communicator::from_env() {
        Ok(c) => {
            drop(c);
            println!("RESULT OK");
        }
        Err(e) => println!("RESULT ERR {e}"),
    }
}

/// What a child reported.
struct ChildOut {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the `child` test with the `ZCCL_*` variables of this process
/// removed, `env` set, in `dir`, for at most 30 s.
fn run_child(env: &[(&str, OsString)], dir: &Path) -> ChildOut {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.as_bytes().starts_with(b"ZCCL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ZCCL_HOSTILE_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the child");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child with {env:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    ChildOut {
        status,
        stdout: String::from_utf8_lossy(&o.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&e.join().unwrap()).into_owned(),
    }
}

/// A scratch directory (children create log and dump files with hostile
/// names relative to it); removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "zccl-hostile-{tag}-{}-{}",
            std::process::id(),
            UniqueId::random_secret().unwrap().to_hex()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One child per case, a few at a time: `(var, value, starts a job)`.
fn run_cases(cases: Vec<(&'static str, OsString)>, tag: &str) -> usize {
    let scratch = Scratch::new(tag);
    // `ZCCL_TOPO_MAX_BYTES` is read only when a topology file is loaded.
    let topo = scratch.0.join("topo.xml");
    std::fs::write(&topo, "<system version=\"1\">\n</system>\n").unwrap();
    let cases = Mutex::new(cases.into_iter());
    let failures = Mutex::new(Vec::<String>::new());
    let ok = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                loop {
                    let Some((var, value)) = cases.lock().unwrap().next() else {
                        return;
                    };
                    // Each child joins its own root: a 1-rank job.
                    let root = BootstrapRoot::start(
                        "127.0.0.1:0".parse().unwrap(),
                        UniqueId::random_secret().unwrap(),
                        Duration::from_secs(30),
                    )
                    .unwrap();
                    let mut env: Vec<(&str, OsString)> = vec![
                        ("ZCCL_RANK", "0".into()),
                        ("ZCCL_WORLD_SIZE", "1".into()),
                        ("ZCCL_UNIQUE_ID", root.unique_id().to_string().into()),
                        ("ZCCL_TIMEOUT", "20".into()),
                    ];
                    if var == "ZCCL_TOPO_MAX_BYTES" {
                        env.push(("ZCCL_TOPO_FILE", topo.clone().into()));
                    }
                    env.retain(|(k, _)| *k != var);
                    env.push((var, value.clone()));
                    let out = run_child(&env, &scratch.0);
                    drop(root);
                    let shown = short(&value.to_string_lossy());
                    let fail = if out.stderr.contains("panicked") {
                        Some(format!("{var}={shown}: panicked:\n{}", out.stderr))
                    } else if !out.status.success() {
                        Some(format!(
                            "{var}={shown}: child failed ({}):\n{}",
                            out.status, out.stderr
                        ))
                    } else if out.stdout.contains("RESULT OK") {
                        ok.fetch_add(1, Ordering::Relaxed);
                        None
                    } else if let Some(line) = out
                        .stdout
                        .lines()
                        .find_map(|l| l.find("RESULT ERR ").map(|i| &l[i..]))
                    {
                        (!line.contains(var)).then(|| {
                            format!("{var}={shown}: the error does not name the variable: {line}")
                        })
                    } else {
                        Some(format!("{var}={shown}: no result:\n{}", out.stdout))
                    };
                    if let Some(f) = fail {
                        failures.lock().unwrap().push(f);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    ok.into_inner()
}

#[test]
fn deep_variables_in_the_process_environment() {
    let t0 = Instant::now();
    let mut cases = Vec::new();
    for &(var, reader, edges) in VARS {
        if !matches!(reader, Reader::Deep) && var != "ZCCL_DEBUG_FILE" {
            continue;
        }
        for v in values_of(edges) {
            // An environment cannot hold NUL.
            if !v.contains('\0') {
                cases.push((var, OsString::from(v)));
            }
        }
    }
    // The reports that started this file, through the real environment.
    for (var, v) in [
        ("ZCCL_TIMEOUT", "1e19"),
        ("ZCCL_TIMEOUT", "1e20"),
        ("ZCCL_TIMEOUT", "1e300"),
        ("ZCCL_PEER_TIMEOUT", "1e300"),
    ] {
        cases.push((var, OsString::from(v)));
    }
    let n = cases.len();
    let up = run_cases(cases, "deep");
    assert!(up > 0, "no child came up at all");
    eprintln!("hostile_env: {n} children, {up} up, {:?}", t0.elapsed());
}

#[test]
fn non_utf8_values_are_errors_naming_the_variable() {
    let mut cases = Vec::new();
    for &(var, _, _) in VARS {
        for v in not_utf8() {
            cases.push((var, v));
        }
    }
    run_cases(cases, "utf8");
}

/// Every `ZCCL_*` name in the sources a rank runs is in [`VARS`].
#[test]
fn every_variable_in_the_sources_is_walked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = BTreeSet::new();
    let mut stack: Vec<PathBuf> = ["runtime/src", "transports/src", "topology/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension() == Some(OsStr::new("rs")) {
                let text = std::fs::read_to_string(&path).unwrap();
                let b = text.as_bytes();
                let mut i = 0;
                while let Some(off) = text[i..].find("ZCCL_") {
                    let start = i + off;
                    let mut end = start + 5;
                    while end < b.len()
                        && (b[end].is_ascii_uppercase()
                            || b[end].is_ascii_digit()
                            || b[end] == b'_')
                    {
                        end += 1;
                    }
                    let name = text[start..end].trim_end_matches('_');
                    if name.len() > 5 {
                        found.insert(name.to_string());
                    }
                    i = end;
                }
            }
        }
    }
    assert!(
        found.contains("ZCCL_TIMEOUT"),
        "sources not found under {}",
        root.display()
    );
    // Documented in the runtime's table, read elsewhere: `ZCCL_ALGO` by
    // `zccl_primitives::schedule::algo` at the first collective (its unit
    // tests walk the values; a bad one is an error naming the variable).
    // `ZCCL_BIND_TO` by the launchers' command lines (clap: a bad value is
    // a usage error naming the allowed ones; tests/run_cli.rs).
    const READ_ELSEWHERE: &[&str] = &["ZCCL_ALGO", "ZCCL_BIND_TO"];
    let walked: BTreeSet<String> = VARS
        .iter()
        .map(|v| v.0)
        .chain(READ_ELSEWHERE.iter().copied())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = found.difference(&walked).collect();
    assert!(
        missing.is_empty(),
        "ZCCL_* variables not walked by this test: {missing:?}"
    );
}
