//! Which CPUs this host's ranks share: whether they outnumber them
//! ("crowded"), which decides how large a message goes by CMA
//! ([`ShmConfig::cma_min_for`](super::ShmConfig::cma_min_for)), whether a
//! large CMA copy is split over two threads, and how a waiting thread spins
//! (the runtime's `tight_spin`).
//!
//! Each rank publishes its affinity mask in the header of every segment it
//! shares with a peer ([`CpuMask::store`], [`CpuMask::load`]); once the
//! segments are up, every rank of the host knows every local rank's mask
//! and takes the CPUs of their union ([`shared_cpus_of`]). A rank alone
//! cannot tell ranks bound one per core (`mpirun`'s default for few ranks,
//! `srun --cpu-bind=cores`: not crowded) from ranks confined together to a
//! few CPUs (`taskset`, a container's or a job's cpuset: crowded); the union
//! tells them apart.

use std::sync::atomic::Ordering;

use super::segment::Segment;

/// Words of a [`CpuMask`]: `cpu_set_t`'s 1024 CPUs.
const WORDS: usize = 16;

/// An affinity mask: bit `i` set when the process may run on CPU `i`.
///
/// ```
/// use zccl_transports::shm::CpuMask;
/// let m = CpuMask::from_cpus([0, 2, 65]);
/// assert_eq!(m.count(), 3);
/// assert_eq!(m.union(&CpuMask::from_cpus([2, 3])).count(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMask([u64; WORDS]);

impl CpuMask {
    /// The mask of these CPUs (those past 1023 are ignored).
    ///
    /// ```
    /// assert_eq!(zccl_transports::shm::CpuMask::from_cpus([1, 1, 5000]).count(), 1);
    /// ```
    pub fn from_cpus(cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut w = [0u64; WORDS];
        for c in cpus.into_iter().filter(|&c| c < WORDS * 64) {
            w[c / 64] |= 1 << (c % 64);
        }
        CpuMask(w)
    }

    /// Every CPU: what a mask that could not be read stands for.
    ///
    /// ```
    /// assert_eq!(zccl_transports::shm::CpuMask::all().count(), 1024);
    /// ```
    pub fn all() -> Self {
        CpuMask([u64::MAX; WORDS])
    }

    /// This process's affinity mask (`sched_getaffinity`); every CPU when
    /// it cannot be read.
    ///
    /// ```
    /// assert!(zccl_transports::shm::CpuMask::own().count() >= 1);
    /// ```
    pub fn own() -> Self {
        // SAFETY: a zeroed `cpu_set_t` this function owns, its size passed.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Self::all();
            }
            Self::from_cpus((0..WORDS * 64).filter(|&c| libc::CPU_ISSET(c, &set)))
        }
    }

    /// How many CPUs it holds.
    ///
    /// ```
    /// assert_eq!(zccl_transports::shm::CpuMask::from_cpus(0..8).count(), 8);
    /// ```
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The CPUs of either mask.
    ///
    /// ```
    /// use zccl_transports::shm::CpuMask;
    /// assert_eq!(CpuMask::from_cpus([0]).union(&CpuMask::from_cpus([1])), CpuMask::from_cpus([0, 1]));
    /// ```
    pub fn union(&self, other: &CpuMask) -> CpuMask {
        let mut w = self.0;
        for (a, b) in w.iter_mut().zip(other.0) {
            *a |= b;
        }
        CpuMask(w)
    }

    /// Bytes it takes in a segment header.
    pub(super) const BYTES: usize = WORDS * 8;

    /// Writes it at `off` of `seg`'s header (published by a later Release
    /// store of the writer, the segment's magic or its attach flag).
    pub(super) fn store(&self, seg: &Segment, off: usize) {
        for (i, w) in self.0.iter().enumerate() {
            seg.u64_at(off + 8 * i).store(*w, Ordering::Relaxed);
        }
    }

    /// Reads the mask the peer wrote at `off` (after an Acquire load of
    /// what published it). An empty one (never written) is every CPU.
    pub(super) fn load(seg: &Segment, off: usize) -> CpuMask {
        let mut w = [0u64; WORDS];
        for (i, x) in w.iter_mut().enumerate() {
            *x = seg.u64_at(off + 8 * i).load(Ordering::Relaxed);
        }
        let m = CpuMask(w);
        if m.count() == 0 { Self::all() } else { m }
    }
}

/// The CPUs a host's ranks share, from their affinity masks (`masks`: this
/// rank's and every local peer's), the CPUs online, and what this process
/// may use (`parallelism`: `available_parallelism`, which also counts a
/// cgroup's CPU quota) against its own mask (`own`). The union of the masks,
/// at most the CPUs online, and at most the quota where one limits this
/// process below its own mask. Pure.
///
/// ```
/// use zccl_transports::shm::{CpuMask, shared_cpus_of};
/// let all = CpuMask::from_cpus(0..16);
/// // Unbound ranks share the machine.
/// assert_eq!(shared_cpus_of(&[all, all, all, all], 16, 16, 16), 16);
/// // Bound one per core: 4 CPUs between 4 ranks (not crowded).
/// let per_core: Vec<_> = (0..4).map(|c| CpuMask::from_cpus([c])).collect();
/// assert_eq!(shared_cpus_of(&per_core, 16, 1, 1), 4);
/// // Confined together to two CPUs (taskset -c 0,1; a cpuset): 2 (crowded for 4).
/// let two = CpuMask::from_cpus([0, 1]);
/// assert_eq!(shared_cpus_of(&[two; 4], 16, 2, 2), 2);
/// // A quota of 2 CPUs over an unbound machine (docker --cpus=2).
/// assert_eq!(shared_cpus_of(&[all; 4], 16, 2, 16), 2);
/// ```
pub fn shared_cpus_of(masks: &[CpuMask], online: usize, parallelism: usize, own: usize) -> usize {
    let union = masks
        .iter()
        .fold(CpuMask::from_cpus([]), |u, m| u.union(m))
        .count()
        .min(online.max(1));
    let quota = if parallelism < own {
        parallelism
    } else {
        usize::MAX
    };
    union.min(quota).max(1)
}

/// Whether `local_ranks` ranks outnumber the `cpus` they share (see
/// [`shared_cpus_of`]): then copies and waits take CPU time from another
/// rank, and the CMA threshold, split copies and a waiter's spinning are
/// chosen for that. Pure.
///
/// ```
/// use zccl_transports::shm::crowded;
/// assert!(crowded(4, 2));
/// assert!(!crowded(2, 2));
/// ```
pub fn crowded(local_ranks: usize, cpus: usize) -> bool {
    local_ranks > cpus
}

/// Whether `local_ranks` ranks leave no spare CPU beside each rank's own
/// among the `cpus` they share (see [`shared_cpus_of`]): a rank's waiting
/// thread and one of its transport threads cannot both run without taking
/// a CPU from a rank. A crowded host is full too. Then a thread that wakes
/// preempts a rank (a waiting thread yields to copies; the poll lease is
/// longer, [`ShmConfig::poll_lease_for`](super::ShmConfig::poll_lease_for)).
/// Pure.
///
/// ```
/// use zccl_transports::shm::full;
/// assert!(full(2, 2));
/// assert!(full(5, 8));
/// assert!(!full(4, 8));
/// assert!(!full(1, 64));
/// ```
pub fn full(local_ranks: usize, cpus: usize) -> bool {
    local_ranks.saturating_mul(2) > cpus
}

/// The CPUs this host's ranks share as far as this rank alone can tell
/// (no peer's mask known: a communicator without shared memory between its
/// local ranks): what this process may use (`available_parallelism`: the
/// cgroup's quota, the online CPUs) when no affinity mask binds it;
/// `usize::MAX` (not crowded) when one does, since ranks bound one per core
/// look the same from inside as ranks confined together. With shared memory
/// up, [`ShmTransport::shared_cpus`](super::ShmTransport::shared_cpus)
/// knows better.
///
/// ```
/// assert!(zccl_transports::shm::shared_cpus() >= 1);
/// ```
pub fn shared_cpus() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a plain libc query.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online > 0 && (CpuMask::own().count() as i64) < online as i64 {
        usize::MAX
    } else {
        cpus
    }
}

/// This host's shared CPUs from the masks of its ranks ([`shared_cpus_of`]
/// with this process's own view of the machine).
pub(super) fn shared_cpus_with(masks: &[CpuMask]) -> usize {
    // SAFETY: a plain libc query.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let online = usize::try_from(online).unwrap_or(0).max(1);
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let own = CpuMask::own().count().min(online);
    shared_cpus_of(masks, online, parallelism, own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_bound_one_per_core_are_not_crowded_but_ranks_confined_together_are() {
        // 2 ranks on a 2-CPU machine, as `taskset -c 0` runs them: 1 CPU.
        let zero = CpuMask::from_cpus([0]);
        assert_eq!(shared_cpus_of(&[zero, zero], 2, 1, 1), 1);
        // Each bound to its own vCPU: 2.
        assert_eq!(shared_cpus_of(&[zero, CpuMask::from_cpus([1])], 2, 1, 1), 2);
        // Overlapping masks count their CPUs once.
        let a = CpuMask::from_cpus([0, 1, 2]);
        let b = CpuMask::from_cpus([2, 3]);
        assert_eq!(shared_cpus_of(&[a, b], 8, 3, 3), 4);
        // A mask read as every CPU counts the online ones.
        assert_eq!(shared_cpus_of(&[CpuMask::all(), zero], 8, 8, 8), 8);
        // Never zero.
        assert_eq!(shared_cpus_of(&[], 8, 8, 8), 1);
    }

    #[test]
    fn this_process_mask_is_readable() {
        let own = CpuMask::own();
        assert!(own.count() >= 1);
        assert!(shared_cpus_with(&[own]) >= 1);
    }
}
