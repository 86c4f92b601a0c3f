//! Keeping glibc's allocator from handing memory back to the kernel between
//! operations (`ZCCL_MALLOC_TUNE`, on by default).
//!
//! A collective of 16 KiB–32 MiB allocates and frees a few buffers of its
//! size per call (the copy it sends, the one it receives into, the reduced
//! result). With glibc's defaults the freed memory at the top of the heap is
//! returned to the kernel as soon as more than 128 KiB are free there, and
//! buffers of 128 KiB and more are mapped and unmapped on each call, so the
//! next call page-faults every page again: measured here, a 64 KiB
//! all-reduce of 2 ranks took 68 µs, of which most was page faults, zeroing
//! and TLB shootdowns; with the settings below, 14.5 µs.
//!
//! At the first communicator of the process this sets, once,
//! `mallopt(M_MMAP_THRESHOLD, 32 MiB)` (glibc's largest) and
//! `mallopt(M_TRIM_THRESHOLD, 128 MiB)`: blocks up to 32 MiB come from the
//! heap and stay there for reuse, and the heap is trimmed only once 128 MiB
//! are free at its top. This is process-wide (it also applies to the rest of
//! a Python trainer), as MVAPICH's and Open MPI's memory hooks are; the cost
//! is up to 128 MiB of freed memory the process keeps per heap. Set
//! `ZCCL_MALLOC_TUNE=0` to leave the allocator as it is. Elsewhere than on
//! glibc it does nothing.
//!
//! **Huge pages for the heap.** Memory kept on the heap is reused as it is:
//! where the kernel backs only advised memory with transparent huge pages
//! (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, a common
//! default), heap pages first touched as 4 KiB pages stay so, even under a
//! buffer its owner advises later (numpy does from 4 MiB; the bench too).
//! A same-host copy out of another rank's memory (`process_vm_readv`) pins
//! and walks every page of it, and on 4 KiB pages the copy itself ran at
//! half speed: 8 MiB each way between 2 processes, 1.20 against 0.53 ms on
//! huge pages (`cma_floor`). glibc's tunable `glibc.malloc.hugetlb=1`
//! (glibc 2.35 and later) advises the heap as it grows, so reused buffers
//! have huge pages too. A tunable is read when a process starts: the
//! launchers of zccl (`zccl run`, `zccl bench -N`) give it to the ranks
//! they start ([`rank_tunables`]) unless `ZCCL_MALLOC_TUNE=0` or the
//! launcher's own `GLIBC_TUNABLES` names `glibc.malloc.hugetlb`; under
//! another launcher (torchrun, srun, mpirun), set
//! `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` for the job (on glibc 2.35 or
//! later with THP mode `madvise`, a process's first communicator on a heap
//! left unadvised says so at `ZCCL_DEBUG=INFO`: [`heap_unadvised`]). glibc
//! then advises its main heap as it grows, the first heap of each thread
//! arena, and the blocks it maps apart; not the later growth of a thread
//! arena. Debian 12's glibc 2.36 on an Intel Xeon VM acted on the tunable
//! in only about 1 process launch in 3 (it read the THP mode, then left
//! its heap unadvised; always acted with address randomisation off), so
//! there the gain below is a matter of chance. Measured with it, 2 vCPUs, medians of 5 interleaved rounds
//! against the same build without: sendrecv 2 ranks 2 / 4 / 8 / 16 MiB
//! 0.59 / 0.48 / 0.47 / 0.91x the time, 4 ranks 2 / 4 / 8 MiB
//! 0.69 / 0.59 / 0.75x; all-reduce 4 ranks 2 MiB 0.59x, 2 ranks 8-16 MiB
//! 0.76-0.80x; all-to-all 4 ranks 2-4 MiB 0.56-0.67x; no steady change
//! measured at 8 B-512 KiB (docs/performance.md). Its costs: the heap's
//! resident memory grows in 2 MiB steps; every process a rank starts
//! inherits the variable; and a program that allocates otherwise may lose
//! by it (Open MPI's 1 MiB sendrecv, numpy buffers, ran 2.6x slower with
//! it).

/// `mallopt(M_MMAP_THRESHOLD, ..)`: glibc's upper bound for it on 64-bit
/// targets (`HEAP_MAX_SIZE / 2`).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// `mallopt(M_TRIM_THRESHOLD, ..)`.
pub const TRIM_THRESHOLD: usize = 128 << 20;

/// Applies the settings once per process (later calls do nothing); returns
/// whether this call applied them (`false`: done before, or not glibc).
///
/// ```
/// // The first call in a process applies them, any later one does nothing.
/// let first = zccl_runtime::malloc::tune_once();
/// assert!(!zccl_runtime::malloc::tune_once());
/// # let _ = first;
/// ```
pub fn tune_once() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut applied = false;
    ONCE.call_once(|| applied = apply());
    applied
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes the allocator's parameters; both values
    // are within glibc's accepted ranges.
    unsafe {
        let a = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        let b = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        a == 1 && b == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

/// The glibc tunable that advises the heap for transparent huge pages as
/// it grows (see the module's notes).
pub const HUGETLB_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// The `GLIBC_TUNABLES` value for a rank that a zccl launcher starts, from
/// the launcher's own `GLIBC_TUNABLES` (`inherited`) and `ZCCL_MALLOC_TUNE`
/// (`malloc_tune`): [`HUGETLB_TUNABLE`] added to what is inherited, or
/// `None` (leave the variable as it is) when `ZCCL_MALLOC_TUNE` turns the
/// tuning off (`0`, `false`, `no`) or `inherited` sets
/// `glibc.malloc.hugetlb` already (any value: the user's choice stands).
/// A value of `ZCCL_MALLOC_TUNE` that is none of those leaves the tuning on
/// here; the rank refuses it when it reads its configuration. Pure.
///
/// ```
/// use zccl_runtime::malloc::rank_tunables;
/// assert_eq!(rank_tunables(None, None).as_deref(), Some("glibc.malloc.hugetlb=1"));
/// assert_eq!(
///     rank_tunables(Some("glibc.malloc.arena_max=2"), Some("1")).as_deref(),
///     Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
/// );
/// // Off, or set by the user already: left alone.
/// assert_eq!(rank_tunables(None, Some(" 0 ")), None);
/// assert_eq!(rank_tunables(Some("glibc.malloc.hugetlb=0"), None), None);
/// ```
pub fn rank_tunables(inherited: Option<&str>, malloc_tune: Option<&str>) -> Option<String> {
    let tune = crate::config::flag("ZCCL_MALLOC_TUNE", malloc_tune.map(str::to_owned), true);
    if tune == Ok(false) {
        return None;
    }
    let inherited = inherited.unwrap_or("");
    if names_hugetlb(inherited) {
        return None;
    }
    let rest = inherited.trim_end_matches(':');
    Some(if rest.is_empty() {
        HUGETLB_TUNABLE.to_string()
    } else {
        format!("{rest}:{HUGETLB_TUNABLE}")
    })
}

/// [`rank_tunables`] from this process's environment, for the launchers
/// (`None` too where `GLIBC_TUNABLES` is not valid UTF-8: left as it is).
pub fn rank_tunables_from_env() -> Option<String> {
    let inherited = match std::env::var_os("GLIBC_TUNABLES") {
        None => None,
        Some(v) => Some(v.into_string().ok()?),
    };
    rank_tunables(
        inherited.as_deref(),
        std::env::var("ZCCL_MALLOC_TUNE").ok().as_deref(),
    )
}

/// Whether a `GLIBC_TUNABLES` value (`name=value` entries separated by
/// `:`) sets `glibc.malloc.hugetlb`, as glibc reads it: the exact name,
/// then `=` (an entry with blanks around the name is one glibc ignores).
fn names_hugetlb(tunables: &str) -> bool {
    tunables
        .split(':')
        .any(|e| e.starts_with("glibc.malloc.hugetlb="))
}

/// Whether a process's heap is left on 4 KiB pages where huge pages would
/// help: the kernel's THP mode (the contents of
/// `/sys/kernel/mm/transparent_hugepage/enabled`, `thp_enabled`) backs
/// advised memory only (`[madvise]`), and the process's `GLIBC_TUNABLES`
/// (`tunables`) does not set `glibc.malloc.hugetlb`. Pure.
///
/// ```
/// use zccl_runtime::malloc::heap_unadvised;
/// assert!(heap_unadvised("always [madvise] never", None));
/// assert!(!heap_unadvised("always [madvise] never", Some("glibc.malloc.hugetlb=1")));
/// assert!(!heap_unadvised("[always] madvise never", None));
/// assert!(!heap_unadvised("always madvise [never]", None));
/// ```
pub fn heap_unadvised(thp_enabled: &str, tunables: Option<&str>) -> bool {
    thp_enabled.contains("[madvise]") && !tunables.is_some_and(names_hugetlb)
}

/// [`heap_unadvised`] for this process, on a glibc that knows the tunable
/// (2.35 and later); false where the kernel's setting cannot be read, or
/// not on glibc. It reads `GLIBC_TUNABLES` as the process has it now; glibc
/// read it when the process started (a value set since has no effect).
pub(crate) fn heap_unadvised_here() -> bool {
    glibc_reads_hugetlb()
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|m| heap_unadvised(&m, std::env::var("GLIBC_TUNABLES").ok().as_deref()))
}

/// Whether this process runs on a glibc of 2.35 or later, which reads
/// `glibc.malloc.hugetlb` (false on older glibc and off glibc).
///
/// ```
/// let reads = zccl_runtime::malloc::glibc_reads_hugetlb();
/// assert!(!reads || cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn glibc_reads_hugetlb() -> bool {
    // SAFETY: returns a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let mut parts = v.to_str().unwrap_or("0.0").split('.');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    (next(), next()) >= (2, 35)
}

/// Whether this process runs on a glibc that reads `glibc.malloc.hugetlb`:
/// never off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn glibc_reads_hugetlb() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hugetlb_entry_is_added_once_and_never_over_the_users() {
        // Appended after what is inherited, a trailing separator not doubled.
        assert_eq!(
            rank_tunables(Some("glibc.malloc.arena_max=2:"), Some("")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            rank_tunables(Some(""), Some("yes")).as_deref(),
            Some(HUGETLB_TUNABLE)
        );
        // Any value of the user's, in any position.
        for t in ["glibc.malloc.hugetlb=2", "a.b=1:glibc.malloc.hugetlb=0"] {
            assert_eq!(rank_tunables(Some(t), None), None, "{t}");
        }
        // What glibc would not read as that tunable is not the user's
        // setting of it: another name, or blanks around the name.
        for t in [
            "glibc.malloc.hugetlb_x=1",
            " glibc.malloc.hugetlb=1",
            "glibc.malloc.hugetlb =1",
            "glibc.malloc.hugetlb",
        ] {
            assert!(rank_tunables(Some(t), None).is_some(), "{t}");
        }
        for off in ["0", "false", "no", " no "] {
            assert_eq!(rank_tunables(None, Some(off)), None, "{off}");
        }
        // Anything else keeps it on (the rank refuses a bad value itself).
        assert!(rank_tunables(None, Some("2")).is_some());
    }
}
