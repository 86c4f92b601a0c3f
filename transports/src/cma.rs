//! Cross-memory attach (CMA): copying bytes straight out of another
//! process's memory with `process_vm_readv(2)`, as Open MPI's `vader` BTL
//! does for large messages between ranks of one host.
//!
//! The shared-memory transport ([`crate::shm`]) uses it to move a large
//! message with one copy (sender's buffer → receive buffer) instead of two
//! (sender's buffer → ring → receive buffer). Whether one process may read
//! another depends on ptrace rights (same user, Yama's `ptrace_scope`,
//! seccomp, PID namespaces), so each pair of ranks [`probe`]s once at setup,
//! by reading a known word ([`probe_word`]) of the peer, and falls back to
//! the ring when that fails.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

/// A word of this process that peers read once to learn whether CMA works
/// (its value is random and never changes after the first use).
static PROBE: AtomicU64 = AtomicU64::new(0);

/// The address and value of this process's probe word, for a peer to
/// check with [`probe`].
pub(crate) fn probe_word() -> (u64, u64) {
    let mut v = PROBE.load(Ordering::Acquire);
    if v == 0 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut h = t ^ (u64::from(std::process::id()) << 32) ^ (PROBE.as_ptr() as u64);
        // splitmix64 finaliser.
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let seed = (h ^ (h >> 31)) | 1;
        v = match PROBE.compare_exchange(0, seed, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => seed,
            Err(cur) => cur,
        };
    }
    (PROBE.as_ptr() as u64, v)
}

/// Messages at least this large are copied by two threads at once (see
/// [`read_parallel`]).
pub(crate) const SPLIT_MIN: usize = 8 << 20;

/// [`read`], by two threads when `dst` is at least [`SPLIT_MIN`] bytes,
/// the machine has two CPUs and `split` (the caller's host has a CPU per
/// rank): the halves are independent ranges, and one thread's
/// `process_vm_readv` does not reach the memory bandwidth a second one adds
/// (the sender, meanwhile, only waits). Where ranks outnumber CPUs the
/// second thread only takes a CPU from another rank's copy (4 ranks on
/// 2 vCPUs, 64 MiB, medians of 9 runs: sendrecv 17.9 → 17.4 ms, all-to-all
/// 20.0 → 18.8 ms, all-gather 20.1 → 17.8 ms with one thread). Errors of
/// either half are reported (the first one).
///
/// The second half goes to one helper thread of the process, started on
/// first use and kept (no thread is created per message); while it copies
/// for another caller, this one copies both halves itself.
pub(crate) fn read_parallel(pid: u32, addr: u64, dst: &mut [u8], split: bool) -> Result<(), Errno> {
    if !split || dst.len() < SPLIT_MIN || !two_cpus() {
        return read(pid, addr, dst);
    }
    // Split on a page boundary.
    let mid = (dst.len() / 2) & !4095;
    let (a, b) = dst.split_at_mut(mid);
    let Some(second) = Helper::start(pid, addr + mid as u64, b) else {
        return read(pid, addr, dst);
    };
    let first = read(pid, addr, a);
    first.and(second.join())
}

/// The half of a copy handed to the helper thread: where to copy from and
/// into, and where its result goes.
struct Half {
    pid: u32,
    addr: u64,
    dst: *mut u8,
    len: usize,
    done: std::sync::mpsc::SyncSender<Result<(), Errno>>,
}

// SAFETY: `dst` points into a buffer the submitting thread borrows mutably
// and does not touch until the result came back (`Copying::join`, also on
// drop), so the helper thread is its only user meanwhile.
unsafe impl Send for Half {}

/// The process's copy helper thread.
struct Helper {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Half>>,
    /// The process it was started in: a child forked since has the
    /// structure but not the thread (it copies alone).
    pid: u32,
}

/// The helper thread copies for someone right now.
static HELPER_BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Halves the helper thread copied (tests).
#[cfg(test)]
static HELPER_COPIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A half copy under way on the helper thread (`rx`: its result, until
/// taken).
struct Copying<'a> {
    rx: Option<std::sync::mpsc::Receiver<Result<(), Errno>>>,
    _dst: std::marker::PhantomData<&'a mut [u8]>,
}

impl Copying<'_> {
    fn join(mut self) -> Result<(), Errno> {
        // A helper that died (it never does) fails the copy.
        let rx = self.rx.take().expect("joined once");
        rx.recv().unwrap_or(Err(Errno::EFAULT))
    }
}

impl Drop for Copying<'_> {
    fn drop(&mut self) {
        // The buffer is borrowed until the helper is done with it.
        if let Some(rx) = self.rx.take() {
            let _ = rx.recv();
        }
    }
}

impl Helper {
    fn get() -> Option<&'static Helper> {
        static HELPER: std::sync::OnceLock<Option<Helper>> = std::sync::OnceLock::new();
        HELPER
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel::<Half>();
                std::thread::Builder::new()
                    .name("zccl-cma-copy".into())
                    .spawn(move || {
                        for h in rx {
                            // SAFETY: see `Half`: the range is ours until
                            // the result is sent.
                            let dst = unsafe { std::slice::from_raw_parts_mut(h.dst, h.len) };
                            let r = read(h.pid, h.addr, dst);
                            #[cfg(test)]
                            HELPER_COPIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            HELPER_BUSY.store(false, std::sync::atomic::Ordering::Release);
                            let _ = h.done.send(r);
                        }
                    })
                    .ok()?;
                Some(Helper {
                    jobs: std::sync::Mutex::new(tx),
                    pid: std::process::id(),
                })
            })
            .as_ref()
    }

    /// Hands the copy of `dst` from `addr` in `pid` to the helper thread,
    /// unless it is busy (or could not be started): `None`, copy it here.
    fn start(pid: u32, addr: u64, dst: &mut [u8]) -> Option<Copying<'_>> {
        use std::sync::atomic::Ordering;
        let me = Helper::get()?;
        if me.pid != std::process::id()
            || HELPER_BUSY
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        let (done, rx) = std::sync::mpsc::sync_channel(1);
        let half = Half {
            pid,
            addr,
            dst: dst.as_mut_ptr(),
            len: dst.len(),
            done,
        };
        let sent = me
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(half)
            .is_ok();
        if !sent {
            HELPER_BUSY.store(false, Ordering::Release);
            return None;
        }
        Some(Copying {
            rx: Some(rx),
            _dst: std::marker::PhantomData,
        })
    }
}

/// Whether this process may run on two CPUs or more, asked once: the
/// standard library reads the cgroup's quota files on every call (about
/// 30 µs here, more than a 256 KiB copy), so it must stay off the message
/// path.
fn two_cpus() -> bool {
    static TWO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TWO.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2)
}

/// Bytes bounced at a time by [`read`] (see there): small enough to stay
/// in L2 between the kernel's copy in and ours out.
const BOUNCE: usize = 128 << 10;

/// Copies `dst.len()` bytes found at `addr` in process `pid` into `dst`,
/// looping over partial reads (`process_vm_readv` may stop at a page it
/// cannot read, or after about 2 GiB).
///
/// On x86-64, where `dst` (4 KiB or more) lies 1 to 63 bytes ahead of
/// `addr` modulo 4 KiB, the kernel's copy runs into the short-distance
/// `rep movsb` trap ([`crate::copy`]: 2.0 against 5.7 GB/s at 16 MiB here),
/// so the bytes go through a buffer of this thread placed at `addr`'s page
/// offset, 128 KiB at a time, and [`crate::copy::copy`] moves them on
/// (16 MiB: 8.3 → 3.9 ms measured in C). Each thread that ever bounced
/// keeps its buffer (132 KiB) for its life.
///
/// Errors are the kernel's: `EFAULT` (the range is not mapped in `pid`, e.g.
/// the buffer was freed), `ESRCH` (no such process), `EPERM` (no ptrace
/// rights), `ENOSYS` (CMA not built in, or filtered by seccomp).
/// `addr + dst.len()` must not overflow (callers check it).
pub(crate) fn read(pid: u32, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
    if cfg!(target_arch = "x86_64")
        && dst.len() >= 4096
        && crate::copy::is_slow_distance(dst.as_ptr() as usize, addr as usize)
    {
        return read_bounced(pid, addr, dst);
    }
    read_direct(pid, addr, dst)
}

/// Chunks [`read_bounced`] moved (tests).
#[cfg(test)]
static BOUNCED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// [`read`] through this thread's bounce buffer (allocated on first use,
/// `BOUNCE` + 4 KiB, kept for the thread's life).
fn read_bounced(pid: u32, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            // Not re-entered in practice; never wrong either way.
            return read_direct(pid, addr, dst);
        };
        if buf.is_empty() {
            buf.resize(BOUNCE + 4096, 0);
        }
        let mut off = 0usize;
        while off < dst.len() {
            let n = (dst.len() - off).min(BOUNCE);
            let from = addr + off as u64;
            // Start the bounce at `from`'s page offset: distance 0.
            let start = ((from as usize).wrapping_sub(buf.as_ptr() as usize)) & 4095;
            let bounce = &mut buf[start..start + n];
            read_direct(pid, from, bounce)?;
            crate::copy::copy(&mut dst[off..off + n], bounce);
            #[cfg(test)]
            BOUNCED.fetch_add(1, Ordering::Relaxed);
            off += n;
        }
        Ok(())
    })
}

/// [`read`] straight into `dst`.
fn read_direct(pid: u32, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(Errno::ESRCH);
    };
    let mut off = 0usize;
    while off < dst.len() {
        let rest = dst.len() - off;
        let local = libc::iovec {
            // SAFETY: `off < dst.len()`.
            iov_base: unsafe { dst.as_mut_ptr().add(off) }.cast(),
            iov_len: rest,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize).wrapping_add(off) as *mut libc::c_void,
            iov_len: rest,
        };
        // SAFETY: `local` is `rest` bytes of the exclusively borrowed `dst`;
        // `remote` lies in the other process, whose mappings the kernel
        // checks (an unmapped range fails with EFAULT, it never faults us).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        if n == 0 {
            // No progress (should not happen for a non-empty range).
            return Err(Errno::EFAULT);
        }
        off += n as usize;
    }
    Ok(())
}

/// Where Yama limits ptrace to a process's own descendants
/// (`kernel.yama.ptrace_scope = 1`, Yama's own default, which Ubuntu
/// keeps), a rank may not read a sibling rank's memory: the
/// ranks a launcher starts (torchrun, `zccl run`, mpirun's `orted`,
/// `slurmstepd`) are each other's siblings, so every pair's CMA probe
/// fails with `EPERM` and large messages go twice through the ring. Yama's
/// own way out is for the process read to name who may: this declares the
/// rank's parent process (`prctl(PR_SET_PTRACER)`), which lets the parent
/// and its descendants (the sibling ranks) read it, and nothing else;
/// Open MPI's users get the same only by setting the scope to 0 for the
/// whole host. Called before a rank publishes its probe word, where CMA is
/// on. Returns the pid declared, `None` where there was nothing to do (no
/// Yama, another scope: 0 needs nothing, 2 and 3 cannot be helped), or
/// the error of `prctl`.
pub(crate) fn let_siblings_read() -> Result<Option<u32>, Errno> {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok();
    let Some(tracer) = ptracer_to_declare(scope.as_deref(), std::os::unix::process::parent_id())
    else {
        return Ok(None);
    };
    // SAFETY: `prctl` with integer arguments only; PR_SET_PTRACER changes
    // this process's Yama exception and nothing in its memory.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_PTRACER,
            libc::c_ulong::from(tracer),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r == 0 {
        Ok(Some(tracer))
    } else {
        Err(Errno::last())
    }
}

/// The process a rank declares its ptracer ([`let_siblings_read`]), from
/// Yama's `ptrace_scope` file's text (`None` without Yama) and the rank's
/// parent pid: the parent under scope 1, else none. Pure.
fn ptracer_to_declare(scope: Option<&str>, parent: u32) -> Option<u32> {
    (scope.map(str::trim) == Some("1") && parent != 0).then_some(parent)
}

/// A short explanation of a [`read`] error for logs and error messages.
pub(crate) fn explain(e: Errno) -> String {
    let why = match e {
        Errno::EFAULT => "the sender's buffer is not mapped (freed, or a bad address)",
        Errno::ESRCH => "the sender process is gone, or lives in another PID namespace",
        Errno::EPERM => {
            "no ptrace rights over the sender (Yama ptrace_scope, other user, container)"
        }
        Errno::ENOSYS => "process_vm_readv is not available (kernel or seccomp)",
        _ => "",
    };
    if why.is_empty() {
        format!("process_vm_readv: {}", e.desc())
    } else {
        format!("process_vm_readv: {} ({why})", e.desc())
    }
}

/// Whether this process can read process `pid` through CMA: reads the
/// peer's probe word at `addr` and checks that it holds `want`.
pub(crate) fn probe(pid: u32, addr: u64, want: u64) -> Result<(), String> {
    if pid == 0 || addr == 0 || want == 0 {
        return Err("the peer published no probe word".into());
    }
    if addr.checked_add(8).is_none() || !addr.is_multiple_of(8) {
        return Err(format!(
            "the peer's probe word address {addr:#x} is invalid"
        ));
    }
    let mut b = [0u8; 8];
    read(pid, addr, &mut b).map_err(|e| format!("pid {pid}: {}", explain(e)))?;
    if u64::from_ne_bytes(b) != want {
        return Err(format!(
            "pid {pid} is not the peer seen from here (separate PID namespaces?)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_refuses_bad_ranges() {
        let pid = std::process::id();
        let src: Vec<u8> = (0..(3 << 20) + 5)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let mut dst = vec![0u8; src.len()];
        read(pid, src.as_ptr() as u64, &mut dst).unwrap();
        assert!(dst == src);
        // Nothing is mapped at address 8; no such pid.
        assert_eq!(read(pid, 8, &mut dst[..16]), Err(Errno::EFAULT));
        assert_eq!(
            read(i32::MAX as u32, src.as_ptr() as u64, &mut dst[..16]),
            Err(Errno::ESRCH)
        );
        assert!(explain(Errno::EFAULT).contains("not mapped"));
        read(pid, 8, &mut []).unwrap();
    }

    /// Destinations 1 to 63 bytes ahead of the source (mod 4 KiB) go
    /// through the bounce buffer, in chunks, and land exactly; an unmapped
    /// source still fails with `EFAULT`.
    #[test]
    fn reads_at_the_slow_distance_bounce_and_land_exactly() {
        let pid = std::process::id();
        let len = 3 * BOUNCE + 4096 + 5;
        let src: Vec<u8> = (0..len).map(|i| (i * 11 + i / 4096) as u8).collect();
        for dist in [1usize, 16, 63, 64, 0] {
            let mut buf = vec![0u8; len + 8192];
            let want = (src.as_ptr() as usize + dist) & 4095;
            let start = (want + 4096 - (buf.as_ptr() as usize & 4095)) & 4095;
            let dst = &mut buf[start..start + len];
            let before = BOUNCED.load(Ordering::Relaxed);
            read(pid, src.as_ptr() as u64, dst).unwrap();
            assert!(dst == &src[..], "distance {dist}");
            let bounced = BOUNCED.load(Ordering::Relaxed) - before;
            if cfg!(target_arch = "x86_64") && (1..64).contains(&dist) {
                assert!(bounced >= 4, "distance {dist}: {bounced} chunks bounced");
            }
            assert!(buf[..start].iter().all(|&b| b == 0));
            assert!(buf[start + len..].iter().all(|&b| b == 0));
        }
        let mut dst = vec![0u8; 8192 + 4096];
        let start = (8 + 16 + 4096 - (dst.as_ptr() as usize & 4095)) & 4095;
        assert_eq!(
            read(pid, 8, &mut dst[start..start + 8192]),
            Err(Errno::EFAULT)
        );
    }

    #[test]
    fn large_reads_split_with_the_helper_thread_or_alone() {
        let pid = std::process::id();
        let src: Vec<u8> = (0..SPLIT_MIN + 3 * 4096 + 17)
            .map(|i| (i * 13 + i / 4096) as u8)
            .collect();
        // Several callers at once: whoever finds the helper busy copies
        // both halves itself; every copy is whole either way, and the
        // helper took some halves.
        let copied = || HELPER_COPIED.load(std::sync::atomic::Ordering::Relaxed);
        let before = copied();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..4 {
                        let mut dst = vec![0u8; src.len()];
                        read_parallel(pid, src.as_ptr() as u64, &mut dst, true).unwrap();
                        assert!(dst == src);
                    }
                });
            }
        });
        assert!(copied() > before, "the helper thread copied nothing");
        // An error in the helper's half is reported: a mapping whose upper
        // half is made unreadable (it stays mapped: nothing else can come
        // to live there meanwhile).
        let mut dst = vec![0u8; SPLIT_MIN];
        let mid = dst.len() / 2;
        // SAFETY: a fresh anonymous mapping of our own, its upper half then
        // unreadable; unmapped at the end, and only read in between.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                dst.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let upper = p.cast::<u8>().add(mid).cast();
            assert_eq!(libc::mprotect(upper, mid, libc::PROT_NONE), 0);
            assert_eq!(
                read_parallel(pid, p as u64, &mut dst, true),
                Err(Errno::EFAULT)
            );
            libc::munmap(p, dst.len());
        }
    }

    #[test]
    fn only_yamas_relational_scope_makes_a_rank_declare_its_parent() {
        assert_eq!(ptracer_to_declare(Some("1\n"), 4242), Some(4242));
        for scope in [None, Some("0\n"), Some("2\n"), Some("3\n"), Some("junk")] {
            assert_eq!(ptracer_to_declare(scope, 4242), None, "{scope:?}");
        }
        // No parent to name (a rank whose parent lives outside its PID
        // namespace sees 0).
        assert_eq!(ptracer_to_declare(Some("1"), 0), None);
    }

    /// The call itself: on a kernel with Yama at scope 1 it declares the
    /// parent; elsewhere it does nothing (visibly skipped here).
    #[test]
    fn letting_siblings_read_declares_the_parent_under_yama_scope_1() {
        let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok();
        match scope.as_deref().map(str::trim) {
            Some("1") => assert_eq!(
                let_siblings_read(),
                Ok(Some(std::os::unix::process::parent_id()))
            ),
            other => {
                eprintln!("skipped: Yama ptrace_scope is {other:?}, not 1 (nothing to declare)");
                assert_eq!(let_siblings_read(), Ok(None));
            }
        }
    }

    #[test]
    fn probe_checks_the_word() {
        let (addr, val) = probe_word();
        assert_eq!(probe_word(), (addr, val));
        assert_ne!(val, 0);
        probe(std::process::id(), addr, val).unwrap();
        let e = probe(std::process::id(), addr, val ^ 1).unwrap_err();
        assert!(e.contains("PID namespaces"), "{e}");
        assert!(probe(0, addr, val).is_err());
        assert!(
            probe(std::process::id(), 8, val)
                .unwrap_err()
                .contains("not mapped")
        );
    }
}
