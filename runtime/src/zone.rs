//! Landing zones the runtime posts ([`zccl_transports::landing`]): a
//! receive into the user's memory ([`crate::land`]) posts one over that
//! memory ([`Landed`]); a large plain receive from a same-host peer posts a
//! buffer of its own ([`Scratch`]) or a mark ([`Mark`]): which is
//! [`Plain`].

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
        Self::post_as(transport, key, len, |landing| match landing {
            // SAFETY: forwarded from our caller.
            Some(l) => unsafe { l.post(key, ptr, len) },
            // SAFETY: forwarded from our caller.
            None => unsafe { Zone::new(ptr, len) },
        })
    }

    /// Posts a combining zone ([`Zone::combining`]) for message `key` with
    /// `transport`'s landing zones, if it has any and lands messages of
    /// `len` bytes.
    pub(crate) fn post_combining(
        transport: &Arc<dyn Transport>,
        key: LandKey,
        len: usize,
        combine: zccl_transports::landing::Combine,
    ) -> Self {
        Self::post_as(transport, key, len, |landing| match landing {
            Some(l) => l.post_combining(key, len, combine),
            None => Zone::combining(len, combine),
        })
    }

    /// The zone `make` makes: posted with `transport`'s landing zones (it
    /// gets them) if it has any and lands messages of `len` bytes, else
    /// not posted anywhere (it gets `None`; the engine or the handle fills
    /// it).
    fn post_as(
        transport: &Arc<dyn Transport>,
        key: LandKey,
        len: usize,
        make: impl FnOnce(Option<&Landing>) -> Arc<Zone>,
    ) -> Self {
        match transport.landing() {
            Some(l) if l.lands(len) => Landed {
                zone: make(Some(&l)),
                posted: Some((l, key)),
            },
            _ => Landed {
                zone: make(None),
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
/// receive) of a same-host peer's message (`plain_post` in
/// `communicator/channel.rs` says at which sizes; [`Mark`] at the others): the CMA
/// copy lands in it straight from the sender's memory, and the receive
/// hands it over as its data. Without it (or a mark) such a message
/// waited for a zone a plain receive never posts before it took a buffer
/// of its own: a blocking 64 MiB `recv` from a same-host rank took 44 ms
/// instead of about 14.
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

/// A plain receive's [mark](zccl_transports::landing::Landing::mark): its
/// message's key posted without a buffer, so that the transport does not
/// wait for a zone that will not come, and takes a buffer of its own for
/// the message at once. Forgotten when the receive ends (dropped with it).
pub(crate) struct Mark {
    landing: Arc<Landing>,
    key: LandKey,
}

impl Mark {
    /// Marks message `key`'s receive as posted, if `transport` lands
    /// messages of `len` bytes (`None` otherwise).
    pub(crate) fn post(transport: &Arc<dyn Transport>, key: LandKey, len: usize) -> Option<Self> {
        let landing = transport.landing().filter(|l| l.lands(len))?;
        landing.mark(key);
        Some(Mark { landing, key })
    }

    /// Forgets the mark (the receive ended; again on drop, a no-op then).
    fn remove(&self) {
        self.landing.remove(self.key);
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What a plain receive from a same-host peer posts with its transport's
/// landing zones (`plain_post` in `communicator/channel.rs`).
pub(crate) enum Plain {
    /// A buffer of the runtime's own, as the message's landing zone.
    Scratch(Scratch),
    /// A mark (held until the receive ends): the message takes a buffer
    /// of the transport's.
    Mark(Mark),
}

impl Plain {
    /// Whether the transport landed the message in the receive's own buffer.
    pub(crate) fn landed(&self) -> bool {
        match self {
            Plain::Scratch(s) => s.landed(),
            Plain::Mark(_) => false,
        }
    }

    /// The receive's outcome (see [`Scratch::outcome`]).
    pub(crate) fn outcome(&self, o: Outcome) -> Outcome {
        match self {
            Plain::Scratch(s) => s.outcome(o),
            Plain::Mark(m) => {
                m.remove();
                o
            }
        }
    }
}
