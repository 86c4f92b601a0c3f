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
    /// The first rank seen to fail, and how.
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

struct Rank {
    child: Option<Child>,
    pid: u32,
    exit: Option<RankExit>,
    streams_open: u8,
}

fn spawn_rank(
    opts: &LaunchOptions,
    rank: u32,
    ports: Ports,
    secret: &str,
) -> Result<Child, LaunchError> {
    let mut cmd = Command::new(&opts.program);
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
    cmd.spawn().map_err(|source| match source.kind() {
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
    let mut ranks: Vec<Rank> = Vec::with_capacity(opts.nprocs as usize);
    for r in 0..opts.nprocs {
        match spawn_rank(opts, r, ports, &secret) {
            Ok(mut child) => {
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
                let pid = child.id();
                ranks.push(Rank {
                    pid,
                    child: Some(child),
                    exit: None,
                    streams_open: 2,
                });
                if let Err(e) = started {
                    kill_all(&mut ranks);
                    return Err(LaunchError::Setup(format!("cannot start a thread: {e}")));
                }
            }
            Err(e) => {
                kill_all(&mut ranks);
                return Err(e);
            }
        }
    }
    drop(done_tx);

    let n = opts.nprocs;
    let mut first_failure: Option<(u32, RankExit)> = None;
    let mut interrupted_by: Option<i32> = None;
    // Phases of stopping the job: when to send the next signal.
    let mut term_at: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        // Reap ranks that ended.
        for r in 0..n {
            let rank = &mut ranks[r as usize];
            let Some(child) = rank.child.as_mut() else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(s)) => Some(s),
                Ok(None) => continue,
                Err(e) => {
                    // Cannot happen for a child not yet reaped; if it does,
                    // count the rank as failed rather than wait forever.
                    note(format_args!("cannot wait for rank {r}: {e}"));
                    None
                }
            };
            rank.child = None;
            let exit = status.map_or(RankExit::Code(1), RankExit::from_status);
            rank.exit = Some(exit);
            if !exit.success() && first_failure.is_none() && interrupted_by.is_none() {
                // Let its last lines come out before saying it failed.
                drain_streams(&mut ranks, r, &done_rx, Duration::from_millis(200));
                let running = ranks.iter().filter(|x| x.child.is_some()).count();
                let pid = ranks[r as usize].pid;
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
        let running: Vec<u32> = ranks
            .iter()
            .filter(|x| x.child.is_some())
            .map(|x| x.pid)
            .collect();
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
                for &pid in &running {
                    signal_rank(pid, sig);
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
            for &pid in &running {
                signal_rank(pid, libc::SIGTERM);
            }
            kill_at = Some(now + opts.grace);
        }
        if !killed && kill_at.is_some_and(|t| now >= t) {
            killed = true;
            let left: Vec<String> = ranks
                .iter()
                .enumerate()
                .filter(|(_, x)| x.child.is_some())
                .map(|(r, _)| r.to_string())
                .collect();
            note(format_args!(
                "killing rank(s) {} (still running after the grace period)",
                left.join(", ")
            ));
            for &pid in &running {
                signal_rank(pid, libc::SIGKILL);
            }
        }
        // Count streams that closed, then sleep a little.
        while let Ok(r) = done_rx.try_recv() {
            ranks[r as usize].streams_open = ranks[r as usize].streams_open.saturating_sub(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // All ranks ended; their output may still be in flight. Something a rank
    // left running may hold its pipes open: do not wait for it for long.
    let deadline = Instant::now() + Duration::from_secs(1);
    while ranks.iter().any(|x| x.streams_open > 0) {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(r) => {
                ranks[r as usize].streams_open = ranks[r as usize].streams_open.saturating_sub(1)
            }
            Err(_) => break,
        }
    }
    drop(signals);
    Ok(JobReport {
        exits: ranks
            .iter()
            .map(|x| x.exit.unwrap_or(RankExit::Code(1)))
            .collect(),
        first_failure,
        interrupted_by,
    })
}

/// Waits up to `limit` for rank `r`'s output streams to close.
fn drain_streams(ranks: &mut [Rank], r: u32, done: &mpsc::Receiver<u32>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while ranks[r as usize].streams_open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(left) {
            Ok(x) => {
                ranks[x as usize].streams_open = ranks[x as usize].streams_open.saturating_sub(1)
            }
            Err(_) => break,
        }
    }
}

/// Kills and reaps the ranks started so far (a launch that failed midway).
fn kill_all(ranks: &mut [Rank]) {
    for rank in ranks.iter_mut() {
        if let Some(mut child) = rank.child.take() {
            signal_rank(rank.pid, libc::SIGKILL);
            let _ = child.wait();
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

    #[test]
    fn invalid_options() {
        let mut o = LaunchOptions::new(0, "true", Vec::<String>::new());
        assert!(matches!(run(&o), Err(LaunchError::Invalid(_))));
        o.nprocs = 1;
        o.program = OsString::new();
        assert!(matches!(run(&o), Err(LaunchError::Invalid(_))));
    }
}
