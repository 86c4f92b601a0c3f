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
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error as ThisError;

use crate::binding::{BindTo, bind_command, host_plan};
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

/// Picks the job's ports: `master` and `master + 1` when `master` is given,
/// else a free port `P` whose successor is free too.
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
    if let Some(p) = master {
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

/// How a rank ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl RankExit {
    /// From a process status.
    pub fn from_status(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(c), _) => Self::Code(c),
            (None, Some(sig)) => Self::Signal(sig),
            (None, None) => Self::Code(1),
        }
    }

    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// The code a shell reports: the exit code, or 128 + signal.
    ///
    /// ```
    /// use zccl_runtime::launcher::RankExit;
    /// assert_eq!(RankExit::Code(3).exit_code(), 3);
    /// assert_eq!(RankExit::Signal(9).exit_code(), 137);
    /// ```
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }
}

impl fmt::Display for RankExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Code(c) => write!(f, "exited with code {c}"),
            Self::Signal(s) => match signal_name(s) {
                Some(name) => write!(f, "was killed by signal {s} ({name})"),
                None => write!(f, "was killed by signal {s}"),
            },
        }
    }
}

/// The name of a common signal (`SIGKILL`).
pub fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
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
            Self::PermissionDenied { .. } => 126,
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

/// Sends `sig` to the process group of rank process `pid` (falls back to the
/// process alone if the group does not exist yet).
fn signal_rank(pid: u32, sig: libc::c_int) {
    let pid = pid as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions. `pid` is a child not
    // yet reaped, so neither it nor its group id can have been reused.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
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
    die_with_parent(&mut cmd);
    let program = opts.program.to_string_lossy().into_owned();
    reaper.spawn(cmd).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LaunchError::NotFound { program },
        io::ErrorKind::PermissionDenied => LaunchError::PermissionDenied { program },
        _ => LaunchError::Spawn {
            rank,
            program,
            source,
        },
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

// ---------------------------------------------------------------------------
// Reaping: which rank ended first.

/// One child's end, as a [`Reaper`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The child's rank (the order it was added in).
    pub rank: u32,
    /// How it ended.
    pub exit: RankExit,
    /// About when it ended (when the reaper heard of it).
    pub at: Instant,
}

/// The processes of a job, and the order they end in; shared by `zccl run`
/// ([`run`]) and the `zccl bench -N` launcher.
///
/// The order is the kernel's, neither a poll's nor a thread scheduler's.
/// On Linux one thread waits in `epoll` on two things per child, and
/// `epoll` lists them in the order they became ready, however late the
/// thread runs:
///
/// * a pidfd, ready when the child has ended;
/// * for children started with [`Reaper::spawn`], a "death pipe" whose
///   write end only the child holds (it is the one file descriptor a rank
///   gets from the launcher besides stdin, stdout and stderr, numbered
///   high: 4095, or one below `RLIMIT_NOFILE` when that is lower). When the
///   child ends, the kernel releases that descriptor before the child's
///   sockets, so before any peer can see them close and fail in turn, and
///   before it has finished tearing the child down: on a busy host a
///   `kill -9`ed rank's pidfd can be ready after those of the peers that
///   noticed its death. A child counts as ended when its pipe closed, if
///   its pidfd follows within [`Reaper::HANG_UP_WINDOW`] (a child that
///   closes every descriptor early, or whose own children keep the pipe
///   open, is timed by its pidfd).
///
/// Elsewhere, or without pidfds (Linux before 5.3), each child has a thread
/// blocked in `waitid(WNOWAIT)` that notes when it woke up. Either way a
/// child is not reaped until [`Reaper::wait`] or [`Reaper::kill_all`] reaps
/// it: until then its pid (and its process group) cannot be reused, so
/// [`Reaper::signal`] never hits a stranger. [`Reaper::wait`] returns the
/// children that ended in the order they ended, even when several ended
/// since the last call. Dropping a `Reaper` kills and reaps the children
/// still running.
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use zccl_runtime::launcher::{RankExit, Reaper};
/// let mut reaper = Reaper::new();
/// // Rank 1 ends first although it is not the lowest rank.
/// for script in ["sleep 0.3; exit 1", "exit 3"] {
///     let mut cmd = Command::new("sh");
///     cmd.args(["-c", script]);
///     reaper.spawn(cmd)?;
/// }
/// let mut ended = Vec::new();
/// while reaper.running().next().is_some() {
///     ended.extend(reaper.wait(Duration::from_secs(5)));
/// }
/// assert_eq!((ended[0].rank, ended[0].exit), (1, RankExit::Code(3)));
/// assert_eq!((ended[1].rank, ended[1].exit), (0, RankExit::Code(1)));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Reaper {
    /// By rank; `None` once reaped.
    children: Vec<Option<Child>>,
    pids: Vec<u32>,
    /// When each rank's death pipe closed, if before it was reaped.
    hung_up: Vec<Option<Instant>>,
    /// Reaped, not returned yet: held back behind a rank whose death pipe
    /// closed earlier but that is not reaped yet.
    done: Vec<Ended>,
    /// Ranks whose watcher gave up or could not start: polled instead.
    polled: Vec<u32>,
    tx: mpsc::Sender<Heard>,
    rx: mpsc::Receiver<Heard>,
    /// The epoll thread; `None` where it is not available.
    #[cfg(target_os = "linux")]
    poller: Option<pidfd::Poller>,
}

/// What a watcher heard about a rank, and when.
#[derive(Debug, Clone, Copy)]
struct Heard {
    rank: u32,
    /// `true`: the rank ended (it can be reaped); `false`: its death pipe closed.
    ended: bool,
    at: Instant,
}

/// After the first report, how long [`Reaper::wait`] keeps listening: with
/// a thread per child, one preempted between reading the clock and
/// reporting must not lose its place to one that ended after it.
const SETTLE: Duration = Duration::from_millis(10);

impl Default for Reaper {
    fn default() -> Self {
        Self::new()
    }
}

impl Reaper {
    /// How soon after its death pipe closed a child must end for the pipe's
    /// time to count as its end (see the type's docs).
    pub const HANG_UP_WINDOW: Duration = Duration::from_millis(200);

    /// No children yet.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            children: Vec::new(),
            pids: Vec::new(),
            hung_up: Vec::new(),
            done: Vec::new(),
            polled: Vec::new(),
            #[cfg(target_os = "linux")]
            poller: pidfd::Poller::new(tx.clone()).ok(),
            tx,
            rx,
        }
    }

    /// Starts `cmd` as the next rank (0, 1, ...) with a death pipe (see
    /// the type's docs) and watches it. Errors are those of
    /// [`Command::spawn`]. Take its piped streams with [`Reaper::child_mut`].
    pub fn spawn(&mut self, mut cmd: Command) -> io::Result<u32> {
        #[cfg(target_os = "linux")]
        let pipe = match self.poller {
            Some(_) => pidfd::death_pipe(&mut cmd).ok(),
            None => None,
        };
        let child = cmd.spawn();
        #[cfg(target_os = "linux")]
        // The parent's write end closes here: only the child holds it now.
        let read_end = pipe.map(|(read, _write)| read);
        let rank = self.add(child?);
        #[cfg(target_os = "linux")]
        if let (Some(p), Some(fd)) = (self.poller.as_mut(), read_end) {
            // Without it the rank is timed by its pidfd.
            let _ = p.watch_hang_up(rank, fd);
        }
        Ok(rank)
    }

    /// Adds `child`, started elsewhere (without a death pipe), as the next
    /// rank and watches it.
    pub fn add(&mut self, child: Child) -> u32 {
        let rank = self.children.len() as u32;
        let pid = child.id();
        self.children.push(Some(child));
        self.pids.push(pid);
        self.hung_up.push(None);
        #[cfg(target_os = "linux")]
        if let Some(p) = self.poller.as_mut()
            && p.watch_pid(rank, pid).is_ok()
        {
            return rank;
        }
        let tx = self.tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("zccl-reap{rank}"))
            .stack_size(64 << 10)
            .spawn(move || {
                watch_exit(pid);
                let at = Instant::now();
                let _ = tx.send(Heard {
                    rank,
                    ended: true,
                    at,
                });
            });
        if thread.is_err() {
            self.polled.push(rank);
        }
        rank
    }

    /// The child of `rank`, until it is reaped (to take its piped streams).
    pub fn child_mut(&mut self, rank: u32) -> Option<&mut Child> {
        self.children.get_mut(rank as usize)?.as_mut()
    }

    /// The pid of `rank`.
    pub fn pid(&self, rank: u32) -> u32 {
        self.pids[rank as usize]
    }

    /// The ranks not reaped yet, in rank order.
    pub fn running(&self) -> impl Iterator<Item = u32> + '_ {
        self.children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(r, _)| r as u32)
    }

    /// Sends `sig` to the process group of `rank` (to the process alone
    /// when it leads no group); nothing once the rank was reaped.
    pub fn signal(&self, rank: u32, sig: i32) {
        if self.children[rank as usize].is_some() {
            signal_rank(self.pids[rank as usize], sig);
        }
    }

    /// Waits up to `timeout` for children to end; reaps those that did and
    /// returns them in the order they ended (empty after a timeout).
    pub fn wait(&mut self, timeout: Duration) -> Vec<Ended> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let ready = self.take_ready(now);
            if !ready.is_empty() || now >= deadline {
                return ready;
            }
            let mut limit = deadline - now;
            if !self.polled.is_empty() {
                limit = limit.min(Duration::from_millis(20));
            }
            if let Some(until) = self.held_until(now) {
                limit = limit.min(until.saturating_duration_since(now));
            }
            if let Ok(first) = self.rx.recv_timeout(limit) {
                self.heard(first);
                let settle = Instant::now() + SETTLE;
                while let Ok(h) = self
                    .rx
                    .recv_timeout(settle.saturating_duration_since(Instant::now()))
                {
                    self.heard(h);
                }
            }
            let now = Instant::now();
            for rank in self.polled.clone() {
                self.heard(Heard {
                    rank,
                    ended: true,
                    at: now,
                });
            }
        }
    }

    /// Until when reaped ranks that ended after a death pipe closed are
    /// held back (that rank has not been reaped yet).
    fn held_until(&self, now: Instant) -> Option<Instant> {
        self.running()
            .filter_map(|r| self.hung_up[r as usize])
            .map(|t| t + Self::HANG_UP_WINDOW)
            .filter(|&until| until > now)
            .min()
    }

    /// The reaped ranks that can be returned now, in the order they ended.
    fn take_ready(&mut self, now: Instant) -> Vec<Ended> {
        let barrier = self
            .running()
            .filter_map(|r| self.hung_up[r as usize])
            .filter(|&t| now.saturating_duration_since(t) < Self::HANG_UP_WINDOW)
            .min();
        let (mut ready, held): (Vec<Ended>, Vec<Ended>) = self
            .done
            .drain(..)
            .partition(|e| barrier.is_none_or(|b| e.at < b));
        self.done = held;
        // Stable: equal times keep the order they were heard in.
        ready.sort_by_key(|e| e.at);
        ready
    }

    fn heard(&mut self, h: Heard) {
        let r = h.rank as usize;
        let Some(child) = self.children[r].as_mut() else {
            return;
        };
        if !h.ended {
            self.hung_up[r].get_or_insert(h.at);
            return;
        }
        let exit = match child.try_wait() {
            Ok(Some(status)) => RankExit::from_status(status),
            Ok(None) => {
                // Its watcher gave up while it runs: poll it from now on.
                if !self.polled.contains(&h.rank) {
                    self.polled.push(h.rank);
                }
                return;
            }
            // Cannot happen for a child not yet reaped; if it does, count
            // the rank as failed rather than wait forever.
            Err(_) => RankExit::Code(1),
        };
        self.children[r] = None;
        self.polled.retain(|&x| x != h.rank);
        #[cfg(target_os = "linux")]
        if let Some(p) = self.poller.as_mut() {
            p.forget(h.rank);
        }
        let at = match self.hung_up[r] {
            Some(t) if h.at.saturating_duration_since(t) <= Self::HANG_UP_WINDOW => t,
            _ => h.at,
        };
        self.done.push(Ended {
            rank: h.rank,
            exit,
            at,
        });
    }

    /// Kills (`SIGKILL`, to the process group) and reaps every child still
    /// running.
    pub fn kill_all(&mut self) {
        for (r, slot) in self.children.iter_mut().enumerate() {
            if let Some(mut child) = slot.take() {
                signal_rank(self.pids[r], libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Blocks until process `pid` (a child) has ended, without reaping it.
fn watch_exit(pid: u32) {
    loop {
        // SAFETY: a zeroed siginfo_t is valid; waitid writes at most one.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Children's ends in the kernel's order: pidfds and death pipes in one
/// `epoll` set.
#[cfg(target_os = "linux")]
mod pidfd {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::mpsc::Sender;
    use std::thread::JoinHandle;
    use std::time::Instant;

    use super::Heard;

    /// The `epoll` data of the wake-up eventfd; a rank's are `2 rank`
    /// (pidfd) and `2 rank + 1` (death pipe).
    const STOP: u64 = u64::MAX;

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// A pipe whose write end `cmd`'s child keeps across `exec` (and the
    /// parent closes when it drops it): `(read, write)`, both close-on-exec
    /// in this process.
    ///
    /// In the child the write end is moved to a high descriptor (the
    /// highest below `min(RLIMIT_NOFILE, 4096)`): an exiting process
    /// closes its descriptors in ascending order and the kernel (since
    /// 5.13) releases them last closed first, so the pipe is released
    /// before the child's sockets, which its peers watch.
    pub(super) fn death_pipe(cmd: &mut Command) -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds, owned here from then on.
        let (read, write) = unsafe {
            check(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        let keep = write.as_raw_fd();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit.
        let high = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.min(4096) as libc::c_int - 1
        } else {
            -1
        };
        // SAFETY: dup2 and fcntl are async-signal-safe; `keep` is open in
        // the child (a copy of this process's fd table) until exec. The
        // copy dup2 makes is not close-on-exec; `keep` itself is.
        unsafe {
            cmd.pre_exec(move || {
                let rc = if high > keep {
                    libc::dup2(keep, high)
                } else {
                    libc::fcntl(keep, libc::F_SETFD, 0)
                };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok((read, write))
    }

    /// A thread in `epoll_wait` that reports each child's pidfd and death
    /// pipe as they become ready, in the order they do.
    #[derive(Debug)]
    pub(super) struct Poller {
        epoll: Arc<OwnedFd>,
        stop: OwnedFd,
        /// By rank: its pidfd and death pipe, until it is reaped.
        fds: Vec<[Option<OwnedFd>; 2]>,
        thread: Option<JoinHandle<()>>,
    }

    impl Poller {
        pub(super) fn new(tx: Sender<Heard>) -> io::Result<Self> {
            // SAFETY: plain system calls; each fd returned is owned here.
            let (epoll, stop) = unsafe {
                let e = OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
                let s = OwnedFd::from_raw_fd(check(libc::eventfd(
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ))?);
                (e, s)
            };
            let epoll = Arc::new(epoll);
            add(&epoll, &stop, STOP)?;
            let ep = epoll.clone();
            let thread = std::thread::Builder::new()
                .name("zccl-reaper".into())
                .stack_size(64 << 10)
                .spawn(move || run(&ep, &tx))?;
            Ok(Self {
                epoll,
                stop,
                fds: Vec::new(),
                thread: Some(thread),
            })
        }

        fn keep(&mut self, rank: u32, which: usize, fd: OwnedFd) -> io::Result<()> {
            add(&self.epoll, &fd, 2 * u64::from(rank) + which as u64)?;
            let r = rank as usize;
            if self.fds.len() <= r {
                self.fds.resize_with(r + 1, || [None, None]);
            }
            self.fds[r][which] = Some(fd);
            Ok(())
        }

        /// Watches process `pid` (a child not yet reaped) as `rank`.
        pub(super) fn watch_pid(&mut self, rank: u32, pid: u32) -> io::Result<()> {
            // SAFETY: pidfd_open takes a pid and flags; the fd it returns
            // (close-on-exec) is owned here.
            let fd = unsafe {
                let rc = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
                OwnedFd::from_raw_fd(check(rc as libc::c_int)?)
            };
            self.keep(rank, 0, fd)
        }

        /// Watches the read end of `rank`'s death pipe.
        pub(super) fn watch_hang_up(&mut self, rank: u32, fd: OwnedFd) -> io::Result<()> {
            self.keep(rank, 1, fd)
        }

        /// Stops watching `rank` (it was reaped).
        pub(super) fn forget(&mut self, rank: u32) {
            if let Some(fds) = self.fds.get_mut(rank as usize) {
                // Closing an fd's only copy also takes it out of the set.
                *fds = [None, None];
            }
        }
    }

    impl Drop for Poller {
        fn drop(&mut self) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe {
                libc::write(self.stop.as_raw_fd(), (&raw const one).cast(), 8);
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Adds `fd` to the set, reported once (`EPOLLONESHOT`) with `data`.
    fn add(epoll: &OwnedFd, fd: &OwnedFd, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
            u64: data,
        };
        // SAFETY: both fds are open; `ev` is a valid epoll_event.
        check(unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(())
    }

    /// The thread: `epoll`'s ready list is first in, first out, so fds come
    /// out in the order they became ready; each is reported once.
    fn run(epoll: &OwnedFd, tx: &Sender<Heard>) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: `events` is valid for 64 entries.
            let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            for ev in &events[..n as usize] {
                let data = ev.u64;
                if data == STOP {
                    return;
                }
                let heard = Heard {
                    rank: (data / 2) as u32,
                    ended: data % 2 == 0,
                    at: Instant::now(),
                };
                if tx.send(heard).is_err() {
                    return;
                }
            }
        }
    }
}

/// Make a child die with this process (Linux `PR_SET_PDEATHSIG`), even when
/// this process is killed with SIGKILL, so that no rank outlives its
/// launcher. A no-op elsewhere.
///
/// ```
/// let mut cmd = std::process::Command::new("true");
/// zccl_runtime::launcher::die_with_parent(&mut cmd);
/// assert!(cmd.status().unwrap().success());
/// ```
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("the launcher exited"));
            }
            Ok(())
        });
    }
}

/// See the Linux version: a no-op on other systems.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_: &mut Command) {}

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

    /// Every rank's end, in the order the reaper reports them (10 s at most).
    fn drain(reaper: &mut Reaper) -> Vec<Ended> {
        let t = Instant::now();
        let mut ended = Vec::new();
        while reaper.running().next().is_some() {
            assert!(t.elapsed() < Duration::from_secs(10));
            ended.extend(reaper.wait(Duration::from_secs(1)));
        }
        ended
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    /// Three children end 50 ms apart, the highest rank first, and nobody
    /// looks until all have ended (as if one poll missed them all): they
    /// come out in the order they ended, not in rank order.
    #[test]
    fn the_reaper_orders_by_end_time_not_by_rank() {
        let mut reaper = Reaper::new();
        for script in [
            "sleep 0.3; exit 1",
            "sleep 0.25; kill -9 $$",
            "sleep 0.2; exit 3",
        ] {
            reaper.spawn(sh(script)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(700));
        let ended = drain(&mut reaper);
        let got: Vec<(u32, RankExit)> = ended.iter().map(|e| (e.rank, e.exit)).collect();
        assert_eq!(
            got,
            [
                (2, RankExit::Code(3)),
                (1, RankExit::Signal(libc::SIGKILL)),
                (0, RankExit::Code(1))
            ]
        );
        let gap = ended[2].at - ended[0].at;
        assert!(gap >= Duration::from_millis(60), "{gap:?}");
    }

    /// A death pipe that closes long before its rank ends (here closed by
    /// the rank) or after it (held by the rank's own child) does not
    /// change the order, nor holds the others back for long.
    #[cfg(target_os = "linux")]
    #[test]
    fn death_pipes_closed_early_or_late_do_not_mislead() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let high = lim.rlim_cur.min(4096) - 1;
        let mut reaper = Reaper::new();
        let mut bash = Command::new("bash");
        bash.args(["-c", &format!("exec {high}>&-; sleep 0.5; exit 1")]);
        reaper.spawn(bash).unwrap();
        reaper.spawn(sh("sleep 0.3; exit 3")).unwrap();
        reaper.spawn(sh("sleep 1 & exit 2")).unwrap();
        let t = Instant::now();
        let ended = drain(&mut reaper);
        let got: Vec<(u32, RankExit)> = ended.iter().map(|e| (e.rank, e.exit)).collect();
        assert_eq!(
            got,
            [
                (2, RankExit::Code(2)),
                (1, RankExit::Code(3)),
                (0, RankExit::Code(1))
            ]
        );
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn the_reaper_signals_and_kills_what_runs() {
        let mut reaper = Reaper::new();
        reaper.spawn(sh("exec sleep 30")).unwrap();
        reaper.add(sh("exec sleep 30").spawn().unwrap());
        let pid = reaper.pid(1);
        reaper.signal(0, libc::SIGTERM);
        let ended = reaper.wait(Duration::from_secs(10));
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].rank, ended[0].exit),
            (0, RankExit::Signal(libc::SIGTERM))
        );
        assert_eq!(reaper.running().collect::<Vec<_>>(), [1]);
        // Nothing is sent to a reaped rank; dropping kills and reaps the rest.
        reaper.signal(0, libc::SIGKILL);
        drop(reaper);
        // It was reaped: it is no child of ours any more.
        // SAFETY: waitpid with WNOHANG and a null status has no preconditions.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(rc, -1);
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
