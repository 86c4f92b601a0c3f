//! Landing zones the runtime posts ([`zccl_transports::landing`]): a
//! receive into the user's memory ([`crate::land`]) posts one over that
//! memory ([`Landed`]); a large plain receive from a same-host peer posts a
//! buffer of its own ([`Scratch`]).

use std::sync::Arc;

use zccl_transports::Transport;
use zccl_transports::landing::{LandKey, Landing, Zone};

use crate::completion::Outcome;

/// A posted zone, and where it is posted (none for a transport that does
/// not land: the engine fills it at the match).
pub(crate) struct Landed {
    pub(crate) zone: Arc<Zone>,
    posted: Option<(Arc<Landing>, LandKey)>,
}

impl Landed {
    /// Posts a zone for message `key` with `transport`'s landing zones, if
    /// it has any and lands messages of `len` bytes.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes, and not otherwise
    /// accessed, until [`Landed::close`] returned.
    pub(crate) unsafe fn post(
        transport: &Arc<dyn Transport>,
        key: LandKey,
        ptr: *mut u8,
        len: usize,
    ) -> Self {
        match transport.landing() {
            Some(l) if l.lands(len) => Landed {
                // SAFETY: forwarded from our caller.
                zone: unsafe { l.post(key, ptr, len) },
                posted: Some((l, key)),
            },
            _ => Landed {
                // SAFETY: forwarded from our caller.
                zone: unsafe { Zone::new(ptr, len) },
                posted: None,
            },
        }
    }

    /// Takes the buffer back: no transport claims the zone any more, a copy
    /// in progress is waited out, and nothing writes into it afterwards.
    pub(crate) fn close(&self) -> bool {
        if let Some((l, key)) = &self.posted {
            l.remove(*key);
        }
        self.zone.close()
    }
}

/// A receive buffer of the runtime's own, posted as the landing zone of a
/// plain receive ([`Channel::irecv`](crate::Channel::irecv), a batch's
/// receive) of a same-host peer's message of a size that waits for its
/// zone (`scratch_for` in `communicator.rs`: from
/// [`LAND_WAIT_MIN_BYTES`](zccl_transports::shm::LAND_WAIT_MIN_BYTES), and
/// the CMA sizes up to
/// [`POLL_MAX_CMA_BYTES`](zccl_transports::shm::POLL_MAX_CMA_BYTES), which
/// polls leave in the ring a little until their receive is posted): the
/// CMA copy lands in it straight from the sender's memory, and the receive
/// hands it over as its data. Without it such a message waited for a zone
/// a plain receive never posts (`land_wait`, len at 2 GB/s) before it took
/// a buffer of its own: a blocking 64 MiB `recv` from a same-host rank
/// took 44 ms instead of about 14. (Messages of other sizes take a buffer
/// of the transport's when they arrive, at the same cost: they never
/// wait.)
pub(crate) struct Scratch {
    landed: Landed,
    buf: std::sync::Mutex<Option<zccl_transports::recvbuf::RecvBuf>>,
}

impl Scratch {
    /// Posts a fresh buffer of `len` bytes for message `key`, if
    /// `transport` lands messages of that size (`None` otherwise).
    pub(crate) fn post(transport: &Arc<dyn Transport>, key: LandKey, len: usize) -> Option<Self> {
        if !transport.landing().is_some_and(|l| l.lands(len)) {
            return None;
        }
        // Not faulted in here (the receive is non-blocking; the copy
        // faults the pages in, and a recycled buffer has them already).
        let (mut buf, _fresh) = zccl_transports::recvbuf::RecvBuf::new_lazy(len);
        let ptr = buf.as_mut_slice().as_mut_ptr();
        // SAFETY: the buffer's memory does not move with the `RecvBuf` and
        // lives until it drops, which is after the zone is closed (`take`,
        // or `Drop` below); nothing else touches it meanwhile.
        let landed = unsafe { Landed::post(transport, key, ptr, len) };
        Some(Scratch {
            landed,
            buf: std::sync::Mutex::new(Some(buf)),
        })
    }

    /// The zone, for the engine (which does not copy into it at the match:
    /// a message that did not land is handed over as it came).
    pub(crate) fn zone(&self) -> Arc<Zone> {
        self.landed.zone.clone()
    }

    /// Whether the transport landed the message in the buffer.
    pub(crate) fn landed(&self) -> bool {
        self.landed.zone.landed()
    }

    /// The receive's outcome: the buffer, when the transport landed the
    /// message in it; `o` as it is otherwise. The zone is closed either way.
    pub(crate) fn outcome(&self, o: Outcome) -> Outcome {
        self.landed.close();
        match o {
            // A landed message reaches the engine empty (its bytes are here).
            Ok(Some(p)) if p.is_empty() && self.landed.zone.landed() => {
                let buf = self.buf.lock().unwrap_or_else(|p| p.into_inner()).take();
                Ok(Some(buf.map_or(p, |b| b.into_bytes())))
            }
            o => o,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // No copy runs into the buffer, nor will, before it is freed.
        self.landed.close();
    }
}
