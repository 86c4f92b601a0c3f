//! Which rank ended first, and how: the processes of a job as the kernel
//! reports their ends ([`Reaper`]), how one ended ([`RankExit`]), and a
//! child that dies with its launcher ([`die_with_parent`]). Shared by
//! `zccl run` ([`crate::launcher`]) and the `zccl bench -N` launcher.

use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    /// use zccl_runtime::reaper::RankExit;
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
/// ([`crate::launcher::run`]) and the `zccl bench -N` launcher.
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
/// use zccl_runtime::reaper::{RankExit, Reaper};
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
/// zccl_runtime::reaper::die_with_parent(&mut cmd);
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
}
