//! The runtime's [`Communicator`] as a [`Fabric`]: every algorithm of this
//! crate runs over real transports (TCP, shared memory) with it.
//!
//! The mapping is direct: `isend`/`irecv` on channel `c` are the
//! communicator's `channel(c).isend`/`irecv::<u8>`, which match in posting
//! order per (peer, channel) exactly as [`Fabric`] requires; of the tag only
//! its label byte is sent ([`crate::fabric::LABEL_SHIFT`]: the element type
//! and operation every collective stamps on its messages) and its piece
//! mark ([`crate::fabric::MORE_PIECES`]), in the header's type code, and the
//! receive's match compares them: ranks that run different
//! operations, element types or broadcast roots fail with a mismatch naming
//! both (and every rank of the channel learns it, see
//! [`zccl_runtime::Error::Disagreement`]), as do sizes that differ.
//! Deadlines are the communicator's (`ZCCL_TIMEOUT` or the channel's
//! override). Algorithms use the channels they are given: keep them apart
//! from channels the application uses itself.
//!
//! ```no_run
//! use zccl_primitives::collectives::all_reduce;
//! use zccl_primitives::reduce::ReduceOp;
//! let comm = zccl_runtime::Communicator::from_env()?;
//! let mut grads = vec![1.0f32; 1024];
//! all_reduce(&comm, 0, &mut grads, ReduceOp::Sum)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{Dir, Error, Result};
use crate::fabric::{
    Fabric, MORE_PIECES, PendingRecv, PendingRecvInto, PendingSend, RecvBytes, RecvHandle,
    RecvIntoHandle, SendHandle, label_of,
};
use zccl_runtime::label::OpLabel;
use zccl_runtime::{Communicator, DType};

/// Where an operation runs, for its errors.
#[derive(Clone, Copy)]
struct Site {
    rank: usize,
    peer: usize,
    channel: u32,
}

impl Site {
    fn fail(self, dir: Dir, e: zccl_runtime::Error) -> Error {
        Error::Transport {
            rank: self.rank,
            dir,
            peer: self.peer,
            channel: self.channel,
            reason: e.to_string(),
        }
    }
}

struct Send {
    h: Option<zccl_runtime::SendHandle>,
    at: Site,
}

impl PendingSend for Send {
    fn wait(mut self: Box<Self>) -> Result<()> {
        let h = self.h.take().expect("send handle waited once");
        h.wait().map_err(|e| self.at.fail(Dir::Send, e))
    }

    fn test(&mut self) -> Result<bool> {
        Ok(self.h.as_ref().is_none_or(|h| h.test()))
    }
}

/// A lent send: waiting (or dropping) it waits until the lent memory is
/// free again (see [`zccl_runtime::lend`]).
struct LentSend {
    h: Option<zccl_runtime::LentSendHandle>,
    at: Site,
}

impl PendingSend for LentSend {
    fn wait(mut self: Box<Self>) -> Result<()> {
        let h = self.h.take().expect("send handle waited once");
        h.wait().map_err(|e| self.at.fail(Dir::Send, e))
    }

    fn test(&mut self) -> Result<bool> {
        Ok(self.h.as_ref().is_none_or(|h| h.test()))
    }

    fn wait_free(&mut self) -> Result<()> {
        match &self.h {
            Some(h) => h.wait_released().map_err(|e| self.at.fail(Dir::Send, e)),
            None => Ok(()),
        }
    }
}

/// A receive into the caller's memory (see [`zccl_runtime::land`]).
struct RecvInto {
    h: Option<zccl_runtime::RecvIntoHandle>,
    at: Site,
}

impl PendingRecvInto for RecvInto {
    fn wait(mut self: Box<Self>) -> Result<()> {
        let h = self.h.take().expect("recv handle waited once");
        h.wait().map_err(|e| self.at.fail(Dir::Recv, e))
    }

    fn test(&mut self) -> Result<bool> {
        Ok(self.h.as_ref().is_none_or(|h| h.test()))
    }
}

struct Recv {
    h: Option<zccl_runtime::RecvHandle<u8>>,
    at: Site,
}

impl PendingRecv for Recv {
    fn wait(mut self: Box<Self>) -> Result<Vec<u8>> {
        let h = self.h.take().expect("recv handle waited once");
        h.wait()
            .map(|b| b.into_vec())
            .map_err(|e| self.at.fail(Dir::Recv, e))
    }

    fn test(&mut self) -> Result<bool> {
        Ok(self.h.as_ref().is_none_or(|h| h.test()))
    }

    /// Hands the runtime's received buffer over without copying it.
    fn wait_bytes(mut self: Box<Self>) -> Result<RecvBytes> {
        let h = self.h.take().expect("recv handle waited once");
        h.wait()
            .map(RecvBytes::from_host)
            .map_err(|e| self.at.fail(Dir::Recv, e))
    }
}

/// Both sends of the adapter: `data` goes out as it is (no copy).
fn send_host(
    c: &Communicator,
    ch: zccl_runtime::Channel,
    to: usize,
    data: zccl_runtime::HostBuffer<u8>,
) -> Result<SendHandle> {
    let at = Site {
        rank: Fabric::rank(c),
        peer: to,
        channel: ch.id(),
    };
    let h = ch
        .isend(to as u32, data)
        .map_err(|e| at.fail(Dir::Send, e))?;
    Ok(SendHandle::new(Send { h: Some(h), at }))
}

/// A communicator whose messages carry the element type of the data they
/// move (see [`zccl_runtime::Channel::with_label`]): ranks that call the same
/// collective with the same byte count but different element types (2048
/// `f32` against 1024 `f64`) fail with a mismatch naming both types on both
/// sides of the first message, instead of reducing reinterpreted bytes.
/// Costs nothing: the type byte travels in every message header anyway.
///
/// ```no_run
/// use zccl_primitives::{collectives::all_reduce, comm::Labelled, dtype::DType, reduce::ReduceOp};
/// let comm = zccl_runtime::Communicator::from_env()?;
/// let mut grads = vec![1.0f32; 1024];
/// all_reduce(&Labelled::new(&comm, DType::F32), 0, &mut grads, ReduceOp::Sum)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct Labelled<'a> {
    comm: &'a Communicator,
    label: Option<DType>,
    op: OpLabel,
    /// Whether [`Fabric::abandon`] fails the channel on every rank
    /// ([`Labelled::without_abandon`]).
    abandons: bool,
}

impl<'a> Labelled<'a> {
    /// `comm`, with every message labelled as elements of `label`.
    pub fn new(comm: &'a Communicator, label: DType) -> Self {
        Self {
            comm,
            label: Some(label),
            op: OpLabel::NONE,
            abandons: true,
        }
    }

    /// The same, with every message also labelled as part of operation
    /// `op` ([`zccl_runtime::label`]): ranks that run different collectives
    /// or reductions on the channel then fail with a mismatch naming both
    /// operations, instead of exchanging data.
    ///
    /// ```no_run
    /// use zccl_primitives::{collectives::all_reduce, comm::Labelled, dtype::DType, reduce::ReduceOp};
    /// use zccl_runtime::label::OpLabel;
    /// let comm = zccl_runtime::Communicator::from_env()?;
    /// let mut x = vec![1.0f32; 8];
    /// let f = Labelled::new(&comm, DType::F32).op(OpLabel::ALL_REDUCE_SUM);
    /// all_reduce(&f, 0, &mut x, ReduceOp::Sum)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn op(mut self, op: OpLabel) -> Self {
        self.op = op;
        self
    }

    /// The same, for a caller that aborts the communicator itself when an
    /// operation fails (the Python binding: `abort_because` with the
    /// failure's text, which the peers then report): an operation that
    /// stops midway does not fail its channel on every rank first
    /// ([`Fabric::abandon`] does nothing), so that the peers' errors name
    /// the caller's reason rather than the channel.
    ///
    /// ```no_run
    /// use zccl_primitives::{comm::Labelled, dtype::DType};
    /// let comm = zccl_runtime::Communicator::from_env()?;
    /// let f = Labelled::new(&comm, DType::U8).without_abandon();
    /// # let _ = f;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn without_abandon(mut self) -> Self {
        self.abandons = false;
        self
    }

    /// `comm` without a label.
    fn plain(comm: &'a Communicator) -> Self {
        Self {
            comm,
            label: None,
            op: OpLabel::NONE,
            abandons: true,
        }
    }

    /// Channel `id`, labelled: with this fabric's own labels where it has
    /// them, otherwise with those the operation put in `tag`
    /// ([`crate::fabric::with_label`]); a plain `broadcast` label takes the
    /// root the operation's label carries ([`OpLabel::refine`]).
    fn chan(&self, id: u32, tag: u64) -> zccl_runtime::Channel {
        let (dtype, op) = label_of(tag);
        let mut op = self.op.refine(op);
        if tag as u32 & MORE_PIECES != 0 && op != OpLabel::NONE {
            // A piece with more to follow says so on the wire.
            op = op.more_follow();
        }
        let ch = self.comm.channel(id).with_op(op);
        match self.label.or(dtype) {
            Some(l) => ch.with_label(l),
            None => ch,
        }
    }

    fn site(&self, peer: usize, channel: u32) -> Site {
        Site {
            rank: Communicator::rank(self.comm) as usize,
            peer,
            channel,
        }
    }
}

impl Fabric for Labelled<'_> {
    fn ensure_live(&self) -> Result<()> {
        Fabric::ensure_live(self.comm)
    }

    fn abandon(&self, channel: u32) {
        if self.abandons {
            self.comm.channel(channel).abandon()
        }
    }

    fn rank(&self) -> usize {
        Communicator::rank(self.comm) as usize
    }

    fn size(&self) -> usize {
        Communicator::size(self.comm) as usize
    }

    fn isend(&self, to: usize, channel: u32, tag: u64, data: Vec<u8>) -> Result<SendHandle> {
        send_host(self.comm, self.chan(channel, tag), to, data.into())
    }

    /// Both in one issue of the channel ([`zccl_runtime::Channel::isend_irecv`]).
    fn isend_irecv(
        &self,
        to: usize,
        from: usize,
        channel: u32,
        tag: u64,
        data: Vec<u8>,
        len: usize,
    ) -> Result<(SendHandle, RecvHandle)> {
        let sent = data.len();
        let (s, r) = self
            .chan(channel, tag)
            .isend_irecv::<u8>(to as u32, data, from as u32, len)
            .map_err(|e| {
                // The site of the op the runtime refused (its reason names
                // the rank): a send to an unknown peer, else a receive from
                // one, else the larger message, the one over the limit. (Of
                // two faults at once the runtime reports the send's first.)
                let n = Fabric::size(self);
                if to < n && (from >= n || len > sent) {
                    self.site(from, channel).fail(Dir::Recv, e)
                } else {
                    self.site(to, channel).fail(Dir::Send, e)
                }
            })?;
        Ok((
            SendHandle::new(Send {
                h: Some(s),
                at: self.site(to, channel),
            }),
            RecvHandle::new(Recv {
                h: Some(r),
                at: self.site(from, channel),
            }),
        ))
    }

    /// Sends a received buffer on without copying it.
    fn isend_bytes(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: RecvBytes,
    ) -> Result<SendHandle> {
        send_host(self.comm, self.chan(channel, tag), to, data.into_host())
    }

    /// Lends `data`: no copy where the peer reads it by CMA.
    unsafe fn isend_lent(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: &[u8],
    ) -> Result<SendHandle> {
        let at = self.site(to, channel);
        // SAFETY: forwarded from our caller (`data` untouched until the
        // handle is waited or dropped; the runtime handle's drop waits).
        let h = unsafe { self.chan(channel, tag).isend_lent(to as u32, data) }
            .map_err(|e| at.fail(Dir::Send, e))?;
        Ok(SendHandle::new(LentSend { h: Some(h), at }))
    }

    /// Receives into `dst`: a same-host CMA copy lands there directly.
    unsafe fn irecv_into(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        dst: &mut [u8],
    ) -> Result<RecvIntoHandle> {
        let at = self.site(from, channel);
        // SAFETY: forwarded from our caller (`dst` untouched until the
        // handle is waited or dropped; the runtime handle's drop takes the
        // buffer back).
        let h = unsafe { self.chan(channel, tag).irecv_into(from as u32, dst) }
            .map_err(|e| at.fail(Dir::Recv, e))?;
        Ok(RecvIntoHandle::new(RecvInto { h: Some(h), at }))
    }

    /// Hands the message to `combine`: a same-host CMA copy piece by piece.
    fn irecv_combine(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        len: usize,
        combine: crate::fabric::Combine,
    ) -> Result<RecvIntoHandle> {
        let at = self.site(from, channel);
        let h = self
            .chan(channel, tag)
            .irecv_combine::<u8>(from as u32, len, combine)
            .map_err(|e| at.fail(Dir::Recv, e))?;
        Ok(RecvIntoHandle::new(RecvInto { h: Some(h), at }))
    }

    fn irecv(&self, from: usize, channel: u32, tag: u64, len: usize) -> Result<RecvHandle> {
        let at = self.site(from, channel);
        let h = self
            .chan(channel, tag)
            .irecv::<u8>(from as u32, len)
            .map_err(|e| at.fail(Dir::Recv, e))?;
        Ok(RecvHandle::new(Recv { h: Some(h), at }))
    }
}

/// A communicator is a fabric whose messages carry no label (plain bytes).
impl Fabric for Communicator {
    fn abandon(&self, channel: u32) {
        self.channel(channel).abandon()
    }

    fn ensure_live(&self) -> Result<()> {
        Communicator::ensure_live(self).map_err(|e| crate::Error::Ended {
            rank: Communicator::rank(self) as usize,
            reason: e.to_string(),
        })
    }

    fn rank(&self) -> usize {
        Communicator::rank(self) as usize
    }

    fn size(&self) -> usize {
        Communicator::size(self) as usize
    }

    fn isend(&self, to: usize, channel: u32, tag: u64, data: Vec<u8>) -> Result<SendHandle> {
        Labelled::plain(self).isend(to, channel, tag, data)
    }

    fn isend_irecv(
        &self,
        to: usize,
        from: usize,
        channel: u32,
        tag: u64,
        data: Vec<u8>,
        len: usize,
    ) -> Result<(SendHandle, RecvHandle)> {
        Labelled::plain(self).isend_irecv(to, from, channel, tag, data, len)
    }

    fn isend_bytes(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: RecvBytes,
    ) -> Result<SendHandle> {
        Labelled::plain(self).isend_bytes(to, channel, tag, data)
    }

    unsafe fn isend_lent(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: &[u8],
    ) -> Result<SendHandle> {
        // SAFETY: forwarded from our caller.
        unsafe { Labelled::plain(self).isend_lent(to, channel, tag, data) }
    }

    unsafe fn irecv_into(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        dst: &mut [u8],
    ) -> Result<RecvIntoHandle> {
        // SAFETY: forwarded from our caller.
        unsafe { Labelled::plain(self).irecv_into(from, channel, tag, dst) }
    }

    fn irecv_combine(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        len: usize,
        combine: crate::fabric::Combine,
    ) -> Result<RecvIntoHandle> {
        Labelled::plain(self).irecv_combine(from, channel, tag, len, combine)
    }

    fn irecv(&self, from: usize, channel: u32, tag: u64, len: usize) -> Result<RecvHandle> {
        Labelled::plain(self).irecv(from, channel, tag, len)
    }
}
