//! `zccl run`: a single-host launcher, in the role of `torchrun --standalone`
//! or `mpirun -n`.
//!
//! [`run`] starts `nprocs` copies of a program. Each rank gets the parent's
//! environment plus the variables of [`rank_env`]:
//!
//! | variable | value |
//! |---|---|
//! | `ZCCL_RANK`, `RANK` | the rank, `0..N` |
//! | `ZCCL_WORLD_SIZE`, `WORLD_SIZE` | `N` |
//! | `ZCCL_LOCAL_RANK`, `LOCAL_RANK` | the rank (one host) |
//! | `ZCCL_LOCAL_WORLD_SIZE`, `LOCAL_WORLD_SIZE` | `N` |
//! | `ZCCL_ROOT_ADDR` | `127.0.0.1:<MASTER_PORT + 1>`, where rank 0 hosts the bootstrap root |
//! | `ZCCL_JOB_SECRET` | 32 random hex digits, fresh for each job |
//! | `MASTER_ADDR`, `MASTER_PORT` | `127.0.0.1` and a free port (for torch's own store) |
//! | `GROUP_RANK`, `GROUP_WORLD_SIZE` | `0`, `1` (torchrun's node rank and count) |
//! | `GLIBC_TUNABLES` | the launcher's, with `glibc.malloc.hugetlb=1` added ([`set_rank_tunables`]; huge pages for the heap, see [`crate::malloc`]) |
//!
//! `ZCCL_UNIQUE_ID` and `ZCCL_ROOT_PORT` are removed (they would override
//! the root). So `Communicator::from_env()` and
//! `torch.distributed.init_process_group("env://")` both work unchanged.
//!
//! Each line a rank writes to stdout or stderr is copied to the launcher's
//! stdout or stderr with a `[rank] ` prefix, whole lines only (like
//! `mpirun --tag-output`); a line longer than 64 KiB is cut into pieces.
//! Ranks read `/dev/null` as stdin. Programs that buffer a pipe (C stdio,
//! Python) print late unless told not to (`PYTHONUNBUFFERED=1`).
//!
//! Ranks are not bound to CPUs unless [`LaunchOptions::bind`] says so
//! (`--bind-to auto|core`, [`crate::binding`]): trainers' ranks run
//! threads of their own, and torchrun does not bind either.
//!
//! Every rank runs in its own process group, so signals reach whatever the
//! rank started (`sh -c` children too). `SIGINT`, `SIGTERM` and `SIGHUP` sent
//! to the launcher are forwarded to every rank; after the grace period the
//! ranks still running are killed, at once on a second signal. When a rank
//! fails (non-zero exit or killed by a signal), the others get the grace
//! period to exit on their own (a zccl rank notices the failed peer), then
//! `SIGTERM`, then after another grace period `SIGKILL`: the job never hangs
//! on a dead rank. On Linux a rank is also killed if the launcher itself dies.
//!
//! The launcher's exit code ([`JobReport::exit_code`]): 0 when every rank
//! succeeded; the first failing rank's code (128 + signal for a rank killed
//! by a signal); 128 + signal when the launcher was interrupted; 127 (126)
//! when the program does not exist (cannot be executed), like a shell.
//!
//! "First" is by the time each rank ended, not by rank number nor by when
//! the launcher happened to look: a [`Reaper`] gets the order from the
//! kernel, so ranks that end a few milliseconds apart are told apart, and
//! a `kill -9`ed rank comes before the peers that fail because of it (the
//! `zccl bench -N` launcher uses the same [`Reaper`]). For this each rank
//! holds one more file descriptor, the write end of a pipe that closes
//! when the rank ends.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error as ThisError;

use crate::binding::{BindTo, bind_command, host_plan};
pub use crate::reaper::{Ended, RankExit, Reaper, die_with_parent, signal_name};
use crate::unique_id::UniqueId;

/// What to launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchOptions {
    /// Number of ranks (at least 1).
    pub nprocs: u32,
    /// The program, looked up in `PATH` like a shell does.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// How long ranks get to exit on their own after a failure, and to exit
    /// after `SIGTERM` before `SIGKILL`.
    pub grace: Duration,
    /// `MASTER_PORT`; `None` picks a free port `P` with `P + 1` free too.
    pub master_port: Option<u16>,
    /// Where ranks are bound ([`crate::binding`]): by default nowhere (as
    /// torchrun; `mpirun`'s way is [`BindTo::Auto`]).
    pub bind: BindTo,
}

impl LaunchOptions {
    /// The default grace period.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

    /// `nprocs` ranks of `program args...`, default grace period, free ports.
    ///
    /// ```
    /// let o = zccl_runtime::launcher::LaunchOptions::new(4, "python3", ["train.py"]);
    /// assert_eq!((o.nprocs, o.args.len()), (4, 1));
    /// ```
    pub fn new(
        nprocs: u32,
        program: impl Into<OsString>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self {
            nprocs,
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            grace: Self::DEFAULT_GRACE,
            master_port: None,
            bind: BindTo::None,
        }
    }
}

/// The ports of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// `MASTER_PORT` (torch's store).
    pub master: u16,
    /// The zccl bootstrap root (`MASTER_PORT + 1`, as `launcher_env` derives it).
    pub root: u16,
}

/// Picks the job's ports: `master` and `master + 1` when `master` is given
/// (and not 0), else a free port `P` whose successor is free too.
///
/// The ports are free when picked, but bound only later, by the ranks; a
/// port from the kernel's ephemeral range (what `bind(0)` and every
/// outgoing connection get) may be handed to another socket meanwhile, and
/// was (`Address already in use` when jobs ran side by side). So the pair is
/// drawn at random below that range (`net.ipv4.ip_local_port_range`), where
/// the kernel never hands out ports by itself, and checked free; only if
/// that range is too small or busy does it fall back to a port from the
/// kernel.
pub fn pick_ports(master: Option<u16>) -> io::Result<Ports> {
    // Port 0 asks for a free one, as it does of `bind`.
    if let Some(p) = master.filter(|&p| p != 0) {
        let root = p.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "master port 65535 leaves no port for the zccl root",
            )
        })?;
        return Ok(Ports { master: p, root });
    }
    if let Some(ports) = pick_below_ephemeral() {
        return Ok(ports);
    }
    for _ in 0..64 {
        let a = TcpListener::bind(("0.0.0.0", 0))?;
        let p = a.local_addr()?.port();
        if p < u16::MAX && TcpListener::bind(("0.0.0.0", p + 1)).is_ok() {
            return Ok(Ports {
                master: p,
                root: p + 1,
            });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no two consecutive free ports found",
    ))
}

/// Lowest port [`pick_ports`] draws from.
const PICK_MIN: u16 = 10_000;

/// The first port of the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), where it can be read (Linux).
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A free pair `P`, `P + 1` drawn at random from `PICK_MIN` up to the start
/// of the kernel's ephemeral range, if that leaves room (see [`pick_ports`]).
fn pick_below_ephemeral() -> Option<Ports> {
    let low = ephemeral_low()?;
    let span = low.checked_sub(PICK_MIN + 1).filter(|&s| s >= 1000)?;
    let state = std::collections::hash_map::RandomState::new();
    for i in 0..64u64 {
        let draw = std::hash::BuildHasher::hash_one(&state, (std::process::id(), i));
        let p = PICK_MIN + (draw % u64::from(span)) as u16;
        let free = |port: u16| TcpListener::bind(("0.0.0.0", port)).is_ok();
        if free(p) && free(p + 1) {
            return Some(Ports {
                master: p,
                root: p + 1,
            });
        }
    }
    None
}

/// The variables rank `rank` of `world` gets (see the [module](self) docs).
///
/// ```
/// use zccl_runtime::launcher::{rank_env, Ports};
/// let env = rank_env(1, 4, Ports { master: 29500, root: 29501 }, &"ab".repeat(16));
/// assert!(env.contains(&("ZCCL_ROOT_ADDR", "127.0.0.1:29501".to_string())));
/// assert!(env.contains(&("RANK", "1".to_string())));
/// ```
pub fn rank_env(
    rank: u32,
    world: u32,
    ports: Ports,
    secret_hex: &str,
) -> Vec<(&'static str, String)> {
    let (r, n) = (rank.to_string(), world.to_string());
    vec![
        ("ZCCL_RANK", r.clone()),
        ("ZCCL_WORLD_SIZE", n.clone()),
        ("ZCCL_LOCAL_RANK", r.clone()),
        ("ZCCL_LOCAL_WORLD_SIZE", n.clone()),
        ("ZCCL_ROOT_ADDR", format!("127.0.0.1:{}", ports.root)),
        ("ZCCL_JOB_SECRET", secret_hex.to_string()),
        ("RANK", r.clone()),
        ("WORLD_SIZE", n.clone()),
        ("LOCAL_RANK", r),
        ("LOCAL_WORLD_SIZE", n),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", ports.master.to_string()),
        ("GROUP_RANK", "0".to_string()),
        ("GROUP_WORLD_SIZE", "1".to_string()),
    ]
}

/// Variables removed from the ranks' environment.
pub const REMOVED_VARS: [&str; 2] = ["ZCCL_UNIQUE_ID", "ZCCL_ROOT_PORT"];

/// Gives a rank's command the `GLIBC_TUNABLES` of
/// [`crate::malloc::rank_tunables_from_env`] (huge pages for its heap), or
/// leaves the variable as inherited. Both launchers (`zccl run`,
/// `zccl bench -N`) start every rank through it.
///
/// ```
/// let mut cmd = std::process::Command::new("true");
/// zccl_runtime::launcher::set_rank_tunables(&mut cmd);
/// ```
pub fn set_rank_tunables(cmd: &mut Command) {
    if let Some(t) = crate::malloc::rank_tunables_from_env() {
        cmd.env("GLIBC_TUNABLES", t);
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// How each rank ended, by rank.
    pub exits: Vec<RankExit>,
    /// The rank that failed first (by the time it ended, see [`Reaper`]),
    /// and how.
    pub first_failure: Option<(u32, RankExit)>,
    /// The signal that interrupted the launcher, if one did.
    pub interrupted_by: Option<i32>,
}

impl JobReport {
    /// The launcher's exit code: the first failure's code, else 128 + the
    /// interrupting signal, else 0.
    pub fn exit_code(&self) -> i32 {
        match (self.first_failure, self.interrupted_by) {
            (Some((_, e)), _) => e.exit_code(),
            (None, Some(sig)) => 128 + sig,
            (None, None) => 0,
        }
    }
}

/// Why a job could not be launched.
#[derive(Debug, ThisError)]
pub enum LaunchError {
    /// The program does not exist.
    #[error("{program}: command not found")]
    NotFound {
        /// The program as given.
        program: String,
    },
    /// The program exists but cannot be executed.
    #[error("{program}: permission denied")]
    PermissionDenied {
        /// The program as given.
        program: String,
    },
    /// The program is a directory.
    #[error("{program}: is a directory")]
    IsADirectory {
        /// The program as given.
        program: String,
    },
    /// The program is a script whose `#!` line names an interpreter that
    /// does not exist (the kernel reports it as a missing file).
    #[error("{program}: bad interpreter (the file exists; the program its #! line names does not)")]
    BadInterpreter {
        /// The program as given.
        program: String,
    },
    /// Starting a rank failed otherwise.
    #[error("cannot start rank {rank} ({program}): {source}")]
    Spawn {
        /// The rank.
        rank: u32,
        /// The program as given.
        program: String,
        /// The system error.
        source: io::Error,
    },
    /// The options are invalid.
    #[error("{0}")]
    Invalid(String),
    /// The launcher itself failed (ports, randomness, signals).
    #[error("{0}")]
    Setup(String),
}

impl LaunchError {
    /// The exit code a shell would give: 127 not found, 126 not executable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound { .. } => 127,
            Self::PermissionDenied { .. }
            | Self::IsADirectory { .. }
            | Self::BadInterpreter { .. } => 126,
            _ => 1,
        }
    }
}

// ---------------------------------------------------------------------------
// Signals.

/// The last signal received, and how many.
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
static SIGNAL_COUNT: AtomicUsize = AtomicUsize::new(0);
/// One launch at a time per process (the handlers are process-wide).
static LAUNCH: Mutex<()> = Mutex::new(());

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: two atomic stores.
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    SIGNAL_COUNT.fetch_add(1, Ordering::SeqCst);
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the handlers; restores the previous ones when dropped.
struct SignalGuard {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    fn install() -> io::Result<Self> {
        let mut guard = Self { old: Vec::new() };
        for sig in FORWARDED {
            // SAFETY: a zeroed sigaction is valid; the handler only touches atomics.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) != 0 {
                    return Err(io::Error::last_os_error());
                }
                guard.old.push((sig, old));
            }
        }
        Ok(guard)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.old {
            // SAFETY: restores what sigaction returned.
            unsafe {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Output.

const MAX_LINE: usize = 64 << 10;

/// Copies `src` to the launcher's stdout (or stderr), each line prefixed.
fn pump(rank: u32, src: impl Read, to_stderr: bool, done: mpsc::Sender<u32>) {
    let prefix = format!("[{rank}] ");
    let mut reader = BufReader::with_capacity(MAX_LINE, src);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        line.extend_from_slice(prefix.as_bytes());
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        // Errors (a closed pipe downstream) are ignored: the rank's output
        // is still drained so that it never blocks on a full pipe.
        let _ = if to_stderr {
            io::stderr().lock().write_all(&line)
        } else {
            io::stdout().lock().write_all(&line)
        };
    }
    let _ = done.send(rank);
}

fn note(msg: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "zccl run: {msg}");
}

// ---------------------------------------------------------------------------
// The job.

fn spawn_rank(
    reaper: &mut Reaper,
    opts: &LaunchOptions,
    rank: u32,
    ports: Ports,
    secret: &str,
    cpus: Option<&[usize]>,
) -> Result<u32, LaunchError> {
    let mut cmd = Command::new(&opts.program);
    if let Some(cpus) = cpus {
        bind_command(&mut cmd, cpus);
    }
    cmd.args(&opts.args)
        .envs(rank_env(rank, opts.nprocs, ports, secret))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for k in REMOVED_VARS {
        cmd.env_remove(k);
    }
    set_rank_tunables(&mut cmd);
    die_with_parent(&mut cmd);
    let program = opts.program.to_string_lossy().into_owned();
    // What the path is, for the errors a shell would tell apart.
    let path = std::path::Path::new(&opts.program);
    let named_path = program.contains('/');
    reaper.spawn(cmd).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound if named_path && path.is_file() => {
            LaunchError::BadInterpreter { program }
        }
        io::ErrorKind::NotFound => LaunchError::NotFound { program },
        io::ErrorKind::PermissionDenied if path.is_dir() => LaunchError::IsADirectory { program },
        io::ErrorKind::PermissionDenied => LaunchError::PermissionDenied { program },
        _ => LaunchError::Spawn {
            rank,
            program,
            source,
        },
    })
}

/// Files the launcher holds open per rank: the rank's stdout and stderr
/// pipes, its pidfd and its death pipe ([`Reaper`]).
const FILES_PER_RANK: u64 = 4;

/// This process's limit on open files (`ulimit -n`), if it has one.
fn open_files_limit() -> Option<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    (rc == 0 && l.rlim_cur != libc::RLIM_INFINITY).then_some(l.rlim_cur)
}

/// Why `nprocs` ranks cannot all be started under a limit of `limit` open
/// files, checked before any is (as `mpirun` refuses more ranks than
/// slots): otherwise thousands of ranks start before one fails. Pure.
fn too_many_ranks(nprocs: u32, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let need = u64::from(nprocs) * FILES_PER_RANK + 32;
    (need > limit).then(|| {
        format!(
            "{nprocs} ranks need about {need} open files in the launcher ({FILES_PER_RANK} a rank), \
             more than its limit of {limit} (ulimit -n); zccl run starts ranks on this host only"
        )
    })
}

/// Runs the job to its end (see the [module](self) docs) and reports how
/// each rank ended. Rank output goes to this process's stdout and stderr;
/// the launcher's own messages go to stderr, prefixed `zccl run:`.
///
/// While it runs, `SIGINT`, `SIGTERM` and `SIGHUP` are handled by the
/// launcher (the previous handlers are restored afterwards); one launch runs
/// at a time in a process.
///
/// ```no_run
/// use zccl_runtime::launcher::{run, LaunchOptions};
/// let report = run(&LaunchOptions::new(4, "python3", ["train.py"]))?;
/// std::process::exit(report.exit_code());
/// # Ok::<(), zccl_runtime::launcher::LaunchError>(())
/// ```
pub fn run(opts: &LaunchOptions) -> Result<JobReport, LaunchError> {
    if opts.nprocs == 0 {
        return Err(LaunchError::Invalid(
            "the number of ranks must be at least 1".into(),
        ));
    }
    if opts.program.is_empty() {
        return Err(LaunchError::Invalid("no program to run".into()));
    }
    if let Some(why) = too_many_ranks(opts.nprocs, open_files_limit()) {
        return Err(LaunchError::Invalid(why));
    }
    let _one_at_a_time = LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
    let ports = pick_ports(opts.master_port)
        .map_err(|e| LaunchError::Setup(format!("cannot pick ports: {e}")))?;
    let secret = UniqueId::random_secret()
        .map_err(|e| LaunchError::Setup(e.to_string()))?
        .to_hex();
    let signals = SignalGuard::install()
        .map_err(|e| LaunchError::Setup(format!("cannot install signal handlers: {e}")))?;
    let mut seen_signals = SIGNAL_COUNT.load(Ordering::SeqCst);

    let (done_tx, done_rx) = mpsc::channel::<u32>();
    let mut reaper = Reaper::new();
    // Output streams of each rank not yet closed.
    let mut streams_open: Vec<u8> = Vec::with_capacity(opts.nprocs as usize);
    let plan = host_plan(opts.nprocs, opts.bind);
    for r in 0..opts.nprocs {
        let cpus = plan.as_ref().map(|p| p[r as usize].as_slice());
        if let Err(e) = spawn_rank(&mut reaper, opts, r, ports, &secret, cpus) {
            reaper.kill_all();
            return Err(e);
        }
        let child = reaper.child_mut(r).expect("just started");
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (t1, t2) = (done_tx.clone(), done_tx.clone());
        let started = std::thread::Builder::new()
            .name(format!("zccl-run-out{r}"))
            .spawn(move || pump(r, out, false, t1))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name(format!("zccl-run-err{r}"))
                    .spawn(move || pump(r, err, true, t2))
            });
        streams_open.push(2);
        if let Err(e) = started {
            reaper.kill_all();
            return Err(LaunchError::Setup(format!("cannot start a thread: {e}")));
        }
    }
    drop(done_tx);

    let mut exits: Vec<Option<RankExit>> = vec![None; opts.nprocs as usize];
    let mut first_failure: Option<(u32, RankExit)> = None;
    let mut interrupted_by: Option<i32> = None;
    // Phases of stopping the job: when to send the next signal.
    let mut term_at: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        // Ranks that ended, in the order they ended: the first failure is
        // the earliest, whatever the rank numbers.
        for ended in reaper.wait(POLL) {
            let r = ended.rank;
            exits[r as usize] = Some(ended.exit);
            if !ended.exit.success() && first_failure.is_none() && interrupted_by.is_none() {
                let exit = ended.exit;
                // Let its last lines come out before saying it failed.
                drain_streams(&mut streams_open, r, &done_rx, Duration::from_millis(200));
                let running = reaper.running().count();
                let pid = reaper.pid(r);
                if running > 0 {
                    note(format_args!(
                        "rank {r} (pid {pid}) {exit}: the first rank to fail; stopping the other {running} rank(s) (SIGTERM in {:?} unless they exit)",
                        opts.grace
                    ));
                    term_at = Some(Instant::now() + opts.grace);
                } else {
                    note(format_args!(
                        "rank {r} (pid {pid}) {exit}: the first rank to fail"
                    ));
                }
                first_failure = Some((r, exit));
            }
        }
        let running: Vec<u32> = reaper.running().collect();
        if running.is_empty() {
            break;
        }

        // Signals to the launcher.
        let count = SIGNAL_COUNT.load(Ordering::SeqCst);
        if count != seen_signals {
            seen_signals = count;
            let sig = LAST_SIGNAL.load(Ordering::SeqCst);
            if interrupted_by.is_none() {
                interrupted_by = Some(sig);
                note(format_args!(
                    "received {}; forwarding it to {} rank(s)",
                    signal_name(sig).unwrap_or("a signal"),
                    running.len()
                ));
                for &r in &running {
                    reaper.signal(r, sig);
                }
                term_at = None;
                kill_at = Some(Instant::now() + opts.grace);
            } else if !killed {
                note(format_args!("second signal: killing the ranks"));
                kill_at = Some(Instant::now());
            }
        }

        let now = Instant::now();
        if term_at.is_some_and(|t| now >= t) {
            term_at = None;
            for &r in &running {
                reaper.signal(r, libc::SIGTERM);
            }
            kill_at = Some(now + opts.grace);
        }
        if !killed && kill_at.is_some_and(|t| now >= t) {
            killed = true;
            let left: Vec<String> = running.iter().map(u32::to_string).collect();
            note(format_args!(
                "killing rank(s) {} (still running after the grace period)",
                left.join(", ")
            ));
            for &r in &running {
                reaper.signal(r, libc::SIGKILL);
            }
        }
        // Count streams that closed.
        while let Ok(r) = done_rx.try_recv() {
            streams_open[r as usize] = streams_open[r as usize].saturating_sub(1);
        }
    }
    // All ranks ended; their output may still be in flight. Something a rank
    // left running may hold its pipes open: do not wait for it for long.
    let deadline = Instant::now() + Duration::from_secs(1);
    while streams_open.iter().any(|&x| x > 0) {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(r) => streams_open[r as usize] = streams_open[r as usize].saturating_sub(1),
            Err(_) => break,
        }
    }
    drop(signals);
    Ok(JobReport {
        exits: exits
            .into_iter()
            .map(|x| x.unwrap_or(RankExit::Code(1)))
            .collect(),
        first_failure,
        interrupted_by,
    })
}

/// How long the launcher waits for a rank to end before it looks at
/// signals and deadlines again.
const POLL: Duration = Duration::from_millis(20);

/// Waits up to `limit` for rank `r`'s output streams to close.
fn drain_streams(open: &mut [u8], r: u32, done: &mpsc::Receiver<u32>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while open[r as usize] > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(left) {
            Ok(x) => open[x as usize] = open[x as usize].saturating_sub(1),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher_env::{self, Launcher, RootSpec};
    use std::collections::HashMap;

    #[test]
    fn rank_env_is_what_launcher_env_reads() {
        let ports = Ports {
            master: 40000,
            root: 40001,
        };
        let secret = UniqueId::random_secret().unwrap();
        for r in 0..3 {
            let m: HashMap<String, String> = rank_env(r, 3, ports, &secret.to_hex())
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let e = launcher_env::detect(&|k| m.get(k).cloned()).unwrap();
            assert_eq!(e.launcher, Launcher::Torchrun);
            assert_eq!((e.rank, e.world_size), (r, 3));
            assert_eq!((e.local_rank, e.local_world_size), (Some(r), Some(3)));
            assert_eq!(e.root, RootSpec::HostPort("127.0.0.1".into(), 40001));
            assert_eq!(e.secret, secret);
            assert!(!e.secret_is_derived);
            assert_eq!(e.hosts_root(), r == 0);
            // Without the ZCCL_* variables, torchrun's own rule gives the same root.
            let torch_only: HashMap<String, String> = m
                .iter()
                .filter(|(k, _)| !k.starts_with("ZCCL_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let t = launcher_env::detect(&|k| torch_only.get(k).cloned()).unwrap();
            assert_eq!(t.root, e.root);
        }
    }

    #[test]
    fn ports() {
        let p = pick_ports(None).unwrap();
        assert_eq!(p.root, p.master + 1);
        // Below the ephemeral range where there is one (Linux).
        if let Some(low) = ephemeral_low().filter(|&low| low > PICK_MIN + 1000) {
            assert!(
                (PICK_MIN..low).contains(&p.master) && p.root < low,
                "{p:?} (ephemeral from {low})"
            );
        }
        assert_eq!(
            pick_ports(Some(29500)).unwrap(),
            Ports {
                master: 29500,
                root: 29501
            }
        );
        assert!(pick_ports(Some(u16::MAX)).is_err());
        // 0 asks for a free pair, as no port does.
        let z = pick_ports(Some(0)).unwrap();
        assert!(z.master != 0 && z.root == z.master + 1, "{z:?}");
    }

    #[test]
    fn more_ranks_than_the_open_files_allow_are_refused_up_front() {
        assert_eq!(too_many_ranks(4, None), None);
        assert_eq!(too_many_ranks(4, Some(1024)), None);
        let e = too_many_ranks(100_000, Some(1024)).unwrap();
        assert!(e.contains("100000 ranks") && e.contains("1024"), "{e}");
        assert!(too_many_ranks(u32::MAX, Some(u64::MAX - 1)).is_none());
    }

    #[test]
    fn exits_and_codes() {
        assert_eq!(RankExit::Code(3).to_string(), "exited with code 3");
        assert_eq!(
            RankExit::Signal(libc::SIGKILL).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(RankExit::Signal(64).to_string(), "was killed by signal 64");
        let report = |first, sig| JobReport {
            exits: vec![],
            first_failure: first,
            interrupted_by: sig,
        };
        assert_eq!(report(None, None).exit_code(), 0);
        assert_eq!(
            report(Some((1, RankExit::Code(3))), Some(15)).exit_code(),
            3
        );
        assert_eq!(report(None, Some(15)).exit_code(), 143);
        assert_eq!(
            report(Some((0, RankExit::Signal(6))), None).exit_code(),
            134
        );
        assert_eq!(
            LaunchError::NotFound {
                program: "x".into()
            }
            .exit_code(),
            127
        );
    }

    #[test]
    fn invalid_options() {
        let mut o = LaunchOptions::new(0, "true", Vec::<String>::new());
        assert!(matches!(run(&o), Err(LaunchError::Invalid(_))));
        o.nprocs = 1;
        o.program = OsString::new();
        assert!(matches!(run(&o), Err(LaunchError::Invalid(_))));
    }
}
