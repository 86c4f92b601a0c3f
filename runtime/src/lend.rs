//! Lent sends: a send whose payload is the caller's own memory, not a copy.
//!
//! [`Channel::isend_lent`](crate::Channel::isend_lent) hands the transport a
//! `Bytes` that borrows the caller's slice. Between ranks of one host that
//! read each other by CMA the peer copies it straight from there (one copy
//! in all, as Open MPI's `vader` does for large messages); everywhere else
//! (TCP, the router, a send to itself, shared memory without CMA) the
//! transport copies it when the send is issued, exactly as an ordinary send
//! of a slice would.
//!
//! The borrow ends when every holder of the `Bytes` has dropped it (the
//! shared-memory transport drops it once the peer has copied it). The
//! [`LentSendHandle`] waits for that as well as for the receiver's match; if
//! the send fails or times out before it, the handle **withdraws** the lent
//! memory ([`Transport::withdraw`]): the peer will reject any copy it
//! finishes afterwards, so the caller may reuse its buffer at once and the
//! peer can never deliver bytes the caller changed. A withdrawal closes the
//! shared-memory link to that peer (its later ops fail), which is what a
//! send that timed out means anyway.
//!
//! ```
//! use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
//! let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
//!                                 std::time::Duration::from_secs(20)).unwrap();
//! let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
//! let data = vec![7i32; 1000];
//! let ch = comm.channel(0);
//! let recv = ch.irecv::<i32>(0, 1000).unwrap();
//! // SAFETY: `data` is neither written nor freed until the handle was waited.
//! let send = unsafe { ch.isend_lent(0, &data) }.unwrap();
//! assert_eq!(&recv.wait().unwrap()[..], &data[..]);
//! send.wait().unwrap();
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use zccl_transports::Transport;

use crate::error::{Error, OpDesc, Result};
use crate::handle::Pending;

/// How long a failed lent send waits for the transport to give its payload
/// back (a peer that failed mid-copy, an abort dropping it) before it
/// withdraws the payload.
const FAILED_RELEASE_WAIT: Duration = Duration::from_millis(200);

/// Set when the last holder of a lent payload dropped it.
#[derive(Default)]
pub(crate) struct Release {
    /// Whether set, and how many threads wait for it (a notification is a
    /// system call even with nobody waiting: made only for waiters).
    done: Mutex<(bool, usize)>,
    cv: Condvar,
}

impl Release {
    fn set(&self) {
        let mut d = self.done.lock().expect("release");
        d.0 = true;
        if d.1 != 0 {
            self.cv.notify_all();
        }
    }

    fn is_set(&self) -> bool {
        self.done.lock().expect("release").0
    }

    /// Waits until set or until `deadline`; whether it was set.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut d = self.done.lock().expect("release");
        while !d.0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            d.1 += 1;
            d = self.cv.wait_timeout(d, deadline - now).expect("release").0;
            d.1 -= 1;
        }
        true
    }
}

/// The owner behind a lent `Bytes`: the borrowed address, and the release
/// flag it sets when dropped.
struct Lent {
    ptr: *const u8,
    len: usize,
    release: Arc<Release>,
}

// SAFETY: `Lent` only reads the borrowed bytes (through `as_ref`), which the
// lender keeps valid and unchanged until `release` is set or the payload was
// withdrawn (see `Channel::isend_lent`); the pointer is never written through.
unsafe impl Send for Lent {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for Lent {}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the lender keeps `len` bytes at `ptr` valid while a holder
        // may read them (the contract of `Channel::isend_lent`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.release.set();
    }
}

/// Wraps `data` as a lent payload (no copy) and the flag its drop sets.
///
/// # Safety
/// `data` must stay valid and unchanged until the flag is set or the
/// payload was withdrawn from the transport it is sent on.
pub(crate) unsafe fn lend(data: &[u8]) -> (Bytes, Arc<Release>) {
    let release = Arc::new(Release::default());
    let owner = Lent {
        ptr: data.as_ptr(),
        len: data.len(),
        release: release.clone(),
    };
    (Bytes::from_owner(owner), release)
}

/// Handle of a lent send ([`Channel::isend_lent`](crate::Channel::isend_lent)).
///
/// Completes when the send did ([`crate::SendHandle`]: eager up to
/// [`flow::EAGER_MAX`](crate::flow::EAGER_MAX) bytes, else matched) **and**
/// the transport has given the lent memory back. Dropping it without waiting waits for the
/// memory only ([`LentSendHandle::wait_released`]), so an error path that
/// drops its handles is not held up by the sends' outcomes; it must not be
/// leaked (`std::mem::forget`) while the memory is in use.
///
/// ```
/// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
/// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
///                                 std::time::Duration::from_secs(20)).unwrap();
/// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
/// let data = [1.5f32; 64];
/// let r = comm.irecv::<f32>(0, 64).unwrap();
/// // SAFETY: `data` outlives the handle, which is waited below.
/// let s = unsafe { comm.channel(0).isend_lent(0, &data) }.unwrap();
/// r.wait().unwrap();
/// s.wait().unwrap();
/// ```
#[must_use = "a lent send must be waited on before its buffer is reused"]
pub struct LentSendHandle {
    pub(crate) p: Option<Pending>,
    /// `None`: nothing was lent (a small payload, copied at issue:
    /// [`LEND_MIN_BYTES`]).
    pub(crate) release: Option<Arc<Release>>,
    pub(crate) transport: Arc<dyn Transport>,
}

/// Payloads smaller than this are copied when a lent send is issued, not
/// lent: copying a few hundred bytes costs less than the lending's own
/// bookkeeping (an owner and a release flag allocated, set and waited for;
/// a tenth of an 8 B send's time here), and no transport reads small
/// payloads in place anyway (shared memory copies them into its ring at
/// the send, TCP writes them at once).
pub(crate) const LEND_MIN_BYTES: usize = 1024;

impl LentSendHandle {
    /// Whether the transport gave the lent memory back (always, when
    /// nothing was lent).
    fn released(&self) -> bool {
        self.release.as_ref().is_none_or(|r| r.is_set())
    }

    /// [`Release::wait_until`]; at once when nothing was lent.
    fn wait_release_until(&self, deadline: Instant) -> bool {
        self.release.as_ref().is_none_or(|r| r.wait_until(deadline))
    }

    /// Whether the send completed (successfully or not) and the lent memory
    /// is free again.
    pub fn test(&self) -> bool {
        self.p.as_ref().is_none_or(|p| p.slot.is_done()) && self.released()
    }

    /// Blocks until the send completed and the lent memory is free again,
    /// or until the send failed or its deadline passed (the memory is then
    /// withdrawn: free as well).
    pub fn wait(mut self) -> Result<()> {
        self.finish()
    }

    /// Blocks until the lent memory is free again: the transport dropped
    /// it (it copied it, or the peer did), without waiting for the receiver
    /// to match the send or for the ops posted before it on the channel.
    /// Past the op's deadline the memory is withdrawn (free as well) and the
    /// op's timeout is returned. The handle still has to be waited for the
    /// send's outcome.
    pub fn wait_released(&self) -> Result<()> {
        let Some(p) = &self.p else {
            return Ok(());
        };
        if self.release.is_none() {
            return Ok(());
        }
        let asleep = p.spin_until(|| self.released());
        let released = self.wait_release_until(p.slot.deadline);
        drop(asleep);
        if released {
            return Ok(());
        }
        self.transport.withdraw(p.slot.desc.peer);
        Err(Error::Timeout {
            op: p.slot.desc.clone(),
            after: p.slot.timeout,
            nic: "the lent buffer was not released by the transport".into(),
            culprit: None,
            other_op: None,
            mine: crate::label::OpLabel::NONE,
            crossed: false,
        })
    }

    /// The op.
    pub fn op(&self) -> Option<&OpDesc> {
        self.p.as_ref().map(|p| p.desc())
    }

    fn finish(&mut self) -> Result<()> {
        let Some(p) = self.p.take() else {
            return Ok(());
        };
        let r = p.wait().map(|_| ());
        if self.release.is_none() {
            return r;
        }
        // After a match (or an eager send's completion: it was written into
        // the ring, or the peer copies it when it reads the record) the
        // transport gives the memory back once the peer has it; after a
        // failure it may never (a peer that stopped reading).
        let (wait, asleep) = if r.is_ok() {
            (p.slot.timeout, p.spin_until(|| self.released()))
        } else {
            (FAILED_RELEASE_WAIT, p.sleeping())
        };
        let released = self.wait_release_until(Instant::now() + wait);
        drop(asleep);
        if released {
            return r;
        }
        self.transport.withdraw(p.slot.desc.peer);
        r.and(Err(Error::Timeout {
            op: p.slot.desc.clone(),
            after: p.slot.timeout,
            nic: "the lent buffer was not released by the transport".into(),
            culprit: None,
            other_op: None,
            mine: crate::label::OpLabel::NONE,
            crossed: false,
        }))
    }
}

impl Drop for LentSendHandle {
    /// Waits for the memory only (not for the send's outcome, which an
    /// error path dropping its handles does not want): until the transport
    /// released it, else until the op's deadline, then withdraws it.
    fn drop(&mut self) {
        if self.p.is_some() {
            let _ = self.wait_released();
        }
    }
}

impl std::fmt::Debug for LentSendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LentSendHandle")
            .field("op", &self.op())
            .field("released", &self.released())
            .finish()
    }
}
