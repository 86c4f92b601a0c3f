//! Receives into the user's memory
//! ([`Channel::irecv_into`](crate::Channel::irecv_into)).
//!
//! A receive of a size its transport lands posts a landing zone for its
//! message ([`zccl_transports::landing`]): a same-host peer's CMA copy goes
//! straight into the user's buffer (one copy in all, as Open MPI's `vader`
//! does), and any other message is copied there when the receive matches
//! it. The [`RecvIntoHandle`] closes the zone when it is waited or
//! dropped: after that nothing writes into the buffer. A small receive
//! (under `COPY_MAX_BYTES`, 16 KiB) of a size no transport lands posts nothing:
//! its message comes in a buffer of the transport's, and the handle's
//! `wait` copies it into the user's buffer (the same single copy, without
//! a zone's allocation and locks), or its drop if the message came before;
//! nothing else ever writes there. (Larger ones keep a zone that the
//! engine fills at the match, freeing the transport's buffer then.)
//!
//! ```
//! use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
//! let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
//!                                 std::time::Duration::from_secs(20)).unwrap();
//! let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
//! let mut out = [0i32; 3];
//! // SAFETY: `out` is not touched until the handle is waited.
//! let r = unsafe { comm.channel(0).irecv_into(0, &mut out) }.unwrap();
//! comm.isend(0, vec![4i32, 5, 6]).unwrap().wait().unwrap();
//! r.wait().unwrap();
//! assert_eq!(out, [4, 5, 6]);
//! ```

use std::sync::Arc;

use zccl_transports::Transport;
use zccl_transports::landing::{LandKey, Zone};

use crate::completion::Outcome;
use crate::error::{OpDesc, Result};
use crate::handle::Pending;
pub(crate) use crate::zone::Landed;

/// Handle of a receive into the user's memory
/// ([`Channel::irecv_into`](crate::Channel::irecv_into)).
///
/// Dropping it without waiting takes the buffer back (see the module docs);
/// it must not be leaked while the buffer is in use.
///
/// ```
/// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
/// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
///                                 std::time::Duration::from_secs(20)).unwrap();
/// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
/// let mut out = [0u8; 2];
/// // SAFETY: `out` is not touched until the handle is done.
/// let r = unsafe { comm.channel(1).irecv_into(0, &mut out) }.unwrap();
/// assert!(!r.test());
/// comm.channel(1).isend(0, vec![7u8, 8]).unwrap().wait().unwrap();
/// r.wait().unwrap();
/// assert_eq!(out, [7, 8]);
/// ```
#[must_use = "a receive into a buffer must be waited on before the buffer is used"]
pub struct RecvIntoHandle {
    pub(crate) p: Option<Pending>,
    pub(crate) into: Target,
}

/// Where a [`RecvIntoHandle`]'s message goes.
pub(crate) enum Target {
    /// A posted zone: the transport or the engine fills it.
    Zone(Landed),
    /// The user's buffer, which `wait` copies the received message into.
    Copy(Dest),
}

/// The user's buffer of a receive that posted no zone.
pub(crate) struct Dest {
    ptr: *mut u8,
    len: usize,
}

/// Receives into memory smaller than this that no transport lands post no
/// zone ([`Target::Copy`]): the handle copies their message in. A larger
/// one keeps a zone the engine fills at the match, so that the transport's
/// buffer is freed then, not held until the wait.
pub(crate) const COPY_MAX_BYTES: usize = 16 << 10;

impl Target {
    /// Where a receive of `len` bytes at `ptr` for message `key` goes: a
    /// zone posted with `transport` if it lands messages of that size, or
    /// if the receive is of [`COPY_MAX_BYTES`] or more (a zone the engine
    /// fills at the match); else the buffer itself, for the handle to copy
    /// into.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes, and not otherwise
    /// accessed, until the handle holding the target is waited or dropped.
    pub(crate) unsafe fn post(
        transport: &Arc<dyn Transport>,
        key: LandKey,
        ptr: *mut u8,
        len: usize,
    ) -> Self {
        if transport.landing().is_some_and(|l| l.lands(len)) || len >= COPY_MAX_BYTES {
            // SAFETY: forwarded from our caller.
            Target::Zone(unsafe { Landed::post(transport, key, ptr, len) })
        } else {
            Target::Copy(Dest { ptr, len })
        }
    }

    /// The zone the engine is to know of (none for [`Target::Copy`]).
    pub(crate) fn zone(&self) -> Option<Arc<Zone>> {
        match self {
            Target::Zone(landed) => Some(landed.zone.clone()),
            Target::Copy(_) => None,
        }
    }

    /// Takes the buffer back with the receive's outcome, if it has one: a
    /// zone is closed (nothing writes into it afterwards), the buffer of a
    /// [`Target::Copy`] gets the received message.
    fn settle(&self, outcome: Option<Outcome>, op: &OpDesc) -> Result<()> {
        match self {
            Target::Zone(landed) => {
                // A combining zone's message that did not land (it came
                // whole, in a buffer) is handed over here, on the thread
                // that waits, not under the engine's lock at the match (a
                // landed one left the zone filled: `fill_from` skips it).
                if landed.zone.combines()
                    && let Some(Ok(Some(got))) = &outcome
                {
                    landed.zone.fill_from(got);
                }
                landed.close();
                outcome.map_or(Ok(()), |r| r.map(|_| ()))
            }
            Target::Copy(dest) => match outcome {
                Some(r) => dest.fill(r?, op),
                None => Ok(()),
            },
        }
    }
}

impl Dest {
    /// Copies the received message in (the engine matches a message only
    /// at the receive's exact size; anything else is refused, not copied).
    fn fill(&self, got: Option<bytes::Bytes>, op: &OpDesc) -> Result<()> {
        let got = got.unwrap_or_default();
        if got.len() != self.len {
            debug_assert!(false, "a receive matched at another size");
            return Err(crate::error::Error::Aborted {
                op: Some(op.clone()),
                reason: format!(
                    "internal error: {} bytes delivered to a receive of {}",
                    got.len(),
                    self.len
                ),
            });
        }
        // SAFETY: `Channel::irecv_into`'s contract: the buffer is valid for
        // `len` bytes and untouched until the handle is waited or dropped,
        // which is when this runs.
        unsafe { zccl_transports::copy::copy_raw(self.ptr, got.as_ptr(), self.len) };
        Ok(())
    }
}

// SAFETY: the buffer is only written by the handle's `wait` or drop, on whatever
// thread holds the handle; `Channel::irecv_into`'s caller keeps it valid
// and untouched until then.
unsafe impl Send for Dest {}
// SAFETY: as above (a shared handle never writes).
unsafe impl Sync for Dest {}

impl RecvIntoHandle {
    /// Whether the receive completed (successfully or not). A small
    /// message may still be on its way into the buffer: the buffer is the
    /// caller's, filled, only once `wait` returned (as the contract of
    /// [`Channel::irecv_into`](crate::Channel::irecv_into) says).
    pub fn test(&self) -> bool {
        self.p.as_ref().is_none_or(|p| p.slot.is_done())
    }

    /// Blocks until the message is in the buffer, or the receive failed
    /// (mismatch, timeout, dead peer); either way the buffer is the
    /// caller's again when it returns.
    pub fn wait(mut self) -> Result<()> {
        let Some(p) = self.p.take() else {
            return Ok(());
        };
        self.into.settle(Some(p.wait()), p.desc())
    }

    /// Whether the transport copied the message into the buffer as it
    /// arrived (a same-host CMA copy into the posted zone), rather than the
    /// engine at the match or `wait` afterwards. Diagnostics and tests.
    pub fn landed(&self) -> bool {
        match &self.into {
            Target::Zone(landed) => landed.zone.landed(),
            Target::Copy(_) => false,
        }
    }

    /// The op.
    pub fn op(&self) -> Option<&OpDesc> {
        self.p.as_ref().map(|p| p.desc())
    }
}

impl Drop for RecvIntoHandle {
    fn drop(&mut self) {
        if let Some(p) = self.p.take() {
            // A message that came before the drop is still delivered (a
            // zone was filled at the match; a copy is made now); a later
            // one never is.
            let came = p.slot.is_done().then(|| p.wait());
            let _ = self.into.settle(came, p.desc());
        }
    }
}

impl std::fmt::Debug for RecvIntoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvIntoHandle")
            .field("op", &self.op())
            .field("landed", &self.landed())
            .finish()
    }
}
