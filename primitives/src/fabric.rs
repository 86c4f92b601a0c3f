//! The point-to-point interface every algorithm in this crate is written against.
//!
//! # Contract
//!
//! * Ranks are `0..size()`. A rank may send to itself.
//! * **Matching is FIFO per (peer, channel)**: the n-th send from `a` to `b` on
//!   channel `c` matches the n-th receive that `b` posts from `a` on `c`,
//!   whatever the tags and whatever order the handles are waited in. Sequence
//!   numbers are taken when an operation is *posted*.
//! * The `tag` is an assertion, not a selector: a fabric may check that both
//!   sides agree (the [simulated fabric](crate::sim) does, and reports a
//!   [`Error::Mismatch`](crate::Error::Mismatch)) or ignore it. The receiver
//!   also states the length it expects; a fabric reports a mismatch.
//! * **Sends never block on the receiver posting**: `isend` returns at once and
//!   the data is buffered or streamed; a schedule may post all its sends before
//!   any receive without deadlock.
//! * Channels are independent ordered queues over the same ranks: a stalled
//!   receive on one channel never delays another channel.
//! * Every operation has a deadline fixed when it is posted; `wait()` past it
//!   returns [`Error::Timeout`](crate::Error::Timeout) naming the peer.
//! * Dropping a handle does not cancel its operation (the message is still
//!   sent or consumed); its error, if any, is lost. The algorithms here wait
//!   every handle they create.
//!
//! The runtime's communicator (non-blocking `isend`/`irecv` on channels,
//! handles with `wait()`/`test()`, per-op deadlines, sends that never wait for
//! the receiver) maps onto this trait with a thin adapter: ignore or check the
//! tag, post a receive buffer of `len` bytes, and map its errors to
//! [`Error::Transport`](crate::Error::Transport) / [`Error::Timeout`](crate::Error::Timeout).
//!
//! ```
//! use zccl_primitives::{Fabric, sim::run_ranks};
//! let got = run_ranks(2, |f| {
//!     let peer = 1 - f.rank();
//!     let s = f.isend(peer, 0, 1, vec![f.rank() as u8; 3]).unwrap();
//!     let r = f.irecv(peer, 0, 1, 3).unwrap();
//!     s.wait().unwrap();
//!     r.wait().unwrap()
//! });
//! assert_eq!(got, vec![vec![1, 1, 1], vec![0, 0, 0]]);
//! ```

use crate::dtype::{Elem, to_bytes};
use crate::error::Result;
use zccl_runtime::DType;
use zccl_runtime::label::OpLabel;
pub use zccl_transports::landing::Combine;

/// A pending send, as implemented by a fabric.
///
/// ```
/// use zccl_primitives::{Result, fabric::{PendingSend, SendHandle}};
/// // A fabric wraps its own pending operation.
/// struct Instant;
/// impl PendingSend for Instant {
///     fn wait(self: Box<Self>) -> Result<()> { Ok(()) }
///     fn test(&mut self) -> Result<bool> { Ok(true) }
/// }
/// SendHandle::new(Instant).wait().unwrap();
/// ```
pub trait PendingSend: Send {
    /// Blocks until the send completed (the buffer is no longer needed) or failed.
    fn wait(self: Box<Self>) -> Result<()>;
    /// Returns `Ok(true)` once the send completed, without blocking.
    fn test(&mut self) -> Result<bool>;
    /// Blocks until the send's buffer is free again, which may be before
    /// the send completes (a lent buffer the peer has copied, see
    /// [`Fabric::isend_lent`]). Default: at once (a send that copied its
    /// buffer).
    fn wait_free(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A pending receive, as implemented by a fabric.
///
/// ```
/// use zccl_primitives::{Result, fabric::{PendingRecv, RecvHandle}};
/// struct Ready(Vec<u8>);
/// impl PendingRecv for Ready {
///     fn wait(self: Box<Self>) -> Result<Vec<u8>> { Ok(self.0) }
///     fn test(&mut self) -> Result<bool> { Ok(true) }
/// }
/// assert_eq!(RecvHandle::new(Ready(vec![1, 0, 0, 0])).wait_elems::<i32>().unwrap(), vec![1]);
/// ```
pub trait PendingRecv: Send {
    /// Blocks until the message arrived (returns its bytes) or failed.
    fn wait(self: Box<Self>) -> Result<Vec<u8>>;
    /// Returns `Ok(true)` once the message arrived, without blocking.
    fn test(&mut self) -> Result<bool>;
    /// Like [`wait`](PendingRecv::wait), but may hand over the fabric's own
    /// buffer instead of copying it into a `Vec` (the runtime's received
    /// buffers). The default wraps [`wait`](PendingRecv::wait).
    fn wait_bytes(self: Box<Self>) -> Result<RecvBytes> {
        self.wait().map(RecvBytes::from)
    }
}

/// The bytes of a received message, owned: a `Vec<u8>` or a fabric's own
/// buffer (read without copying). Dereferences to `[u8]`.
///
/// ```
/// use zccl_primitives::fabric::RecvBytes;
/// let b = RecvBytes::from(zccl_primitives::dtype::to_bytes(&[1i32, -2]));
/// assert_eq!(b.len(), 8);
/// assert_eq!(&*b.elems::<i32>(), &[1, -2]);
/// let o = RecvBytes::from_owner(vec![7u8]);
/// assert_eq!(o.into_vec(), vec![7]);
/// ```
pub struct RecvBytes(BytesRepr);

enum BytesRepr {
    Vec(Vec<u8>),
    Owner(Box<dyn AsRef<[u8]> + Send + Sync>),
    /// The runtime's received buffer: can be sent on without a copy.
    Host(zccl_runtime::HostBuffer<u8>),
}

impl RecvBytes {
    /// Wraps any owner of bytes (no copy).
    ///
    /// ```
    /// use zccl_primitives::fabric::RecvBytes;
    /// // Any owner works, e.g. a `String`: the bytes are read in place.
    /// let b = RecvBytes::from_owner(String::from("hi"));
    /// assert_eq!(&*b, b"hi");
    /// ```
    pub fn from_owner(o: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        Self(BytesRepr::Owner(Box::new(o)))
    }

    /// The bytes as a vector (copies unless they already are one).
    ///
    /// ```
    /// use zccl_primitives::fabric::RecvBytes;
    /// assert_eq!(RecvBytes::from(vec![1, 2]).into_vec(), vec![1, 2]);
    /// assert_eq!(RecvBytes::from_owner([3u8; 2]).into_vec(), vec![3, 3]);
    /// ```
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            BytesRepr::Vec(v) => v,
            BytesRepr::Owner(o) => zccl_transports::copy::to_vec(o.as_ref().as_ref()),
            BytesRepr::Host(h) => h.into_vec(),
        }
    }

    /// Wraps a buffer the runtime received (no copy; sending it on with
    /// [`Fabric::isend_bytes`] copies nothing either).
    ///
    /// ```
    /// use zccl_primitives::fabric::RecvBytes;
    /// let b = RecvBytes::from_host(zccl_runtime::HostBuffer::from(vec![1u8, 2]));
    /// assert_eq!(&*b, &[1, 2]);
    /// assert_eq!(b.into_host().as_bytes(), &[1, 2]);
    /// ```
    pub fn from_host(h: zccl_runtime::HostBuffer<u8>) -> Self {
        Self(BytesRepr::Host(h))
    }

    /// The bytes as the runtime's buffer type: without a copy for a vector
    /// or a buffer the runtime received, copied from any other owner.
    pub fn into_host(self) -> zccl_runtime::HostBuffer<u8> {
        match self.0 {
            BytesRepr::Vec(v) => v.into(),
            BytesRepr::Host(h) => h,
            BytesRepr::Owner(o) => zccl_transports::copy::to_vec(o.as_ref().as_ref()).into(),
        }
    }

    /// The bytes as elements of `T`: borrowed when suitably aligned (always
    /// for the runtime's buffers), copied otherwise.
    ///
    /// # Panics
    /// If the length is not a whole number of elements.
    ///
    /// ```
    /// use zccl_primitives::{dtype::to_bytes, fabric::RecvBytes};
    /// let b = RecvBytes::from(to_bytes(&[0.5f64, -2.0]));
    /// assert_eq!(&*b.elems::<f64>(), &[0.5, -2.0]);
    /// assert_eq!(b.elems::<u8>().len(), 16);
    /// ```
    pub fn elems<T: Elem>(&self) -> std::borrow::Cow<'_, [T]> {
        crate::dtype::as_elems(self)
    }
}

impl From<Vec<u8>> for RecvBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(BytesRepr::Vec(v))
    }
}

impl std::ops::Deref for RecvBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            BytesRepr::Vec(v) => v,
            BytesRepr::Owner(o) => o.as_ref().as_ref(),
            BytesRepr::Host(h) => h.as_bytes(),
        }
    }
}

impl std::fmt::Debug for RecvBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBytes(len {})", self.len())
    }
}

/// Handle of a posted send.
///
/// ```
/// use zccl_primitives::fabric::SendHandle;
/// let mut h = SendHandle::completed();
/// assert!(h.test().unwrap());
/// h.wait().unwrap();
/// ```
pub struct SendHandle(Box<dyn PendingSend>);

impl SendHandle {
    /// Wraps a fabric's pending send.
    ///
    /// ```
    /// use zccl_primitives::{Result, fabric::{PendingSend, SendHandle}};
    /// // A pending send that completes on the second poll.
    /// struct AfterPolls(u32);
    /// impl PendingSend for AfterPolls {
    ///     fn wait(self: Box<Self>) -> Result<()> { Ok(()) }
    ///     fn test(&mut self) -> Result<bool> {
    ///         self.0 -= 1;
    ///         Ok(self.0 == 0)
    ///     }
    /// }
    /// let mut h = SendHandle::new(AfterPolls(2));
    /// assert!(!h.test().unwrap());
    /// assert!(h.test().unwrap());
    /// h.wait().unwrap();
    /// ```
    pub fn new(p: impl PendingSend + 'static) -> Self {
        Self(Box::new(p))
    }

    /// A send that has already completed.
    ///
    /// ```
    /// use zccl_primitives::fabric::SendHandle;
    /// // For a send with nothing to move (e.g. a fabric that copied it at once).
    /// let mut h = SendHandle::completed();
    /// assert!(h.test().unwrap());
    /// assert!(h.wait().is_ok());
    /// ```
    pub fn completed() -> Self {
        struct Done;
        impl PendingSend for Done {
            fn wait(self: Box<Self>) -> Result<()> {
                Ok(())
            }
            fn test(&mut self) -> Result<bool> {
                Ok(true)
            }
        }
        Self::new(Done)
    }

    /// Blocks until the send completed or its deadline passed.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(2, |f| {
    ///     if f.rank() == 0 {
    ///         f.isend(1, 0, 9, vec![1, 2, 3]).unwrap().wait().unwrap();
    ///         vec![]
    ///     } else {
    ///         f.irecv(0, 0, 9, 3).unwrap().wait().unwrap()
    ///     }
    /// });
    /// assert_eq!(out[1], vec![1, 2, 3]);
    /// ```
    pub fn wait(self) -> Result<()> {
        self.0.wait()
    }

    /// Blocks until the memory of a lent send ([`Fabric::isend_lent`]) is
    /// free again, which does not wait for the receiver to match the send
    /// (nor for the ops posted before it on the channel), only for the
    /// transport to be done with the memory. Immediate for a copied send.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(1, |f| {
    ///     let mut buf = vec![1u8, 2];
    ///     // SAFETY: `buf` is not written until `wait_free` returned.
    ///     let mut s = unsafe { f.isend_lent(0, 0, 0, &buf) }.unwrap();
    ///     s.wait_free().unwrap();
    ///     buf[0] = 9; // free again: the message keeps what was sent
    ///     let got = f.irecv(0, 0, 0, 2).unwrap().wait().unwrap();
    ///     s.wait().unwrap();
    ///     got
    /// });
    /// assert_eq!(out[0], vec![1, 2]);
    /// ```
    pub fn wait_free(&mut self) -> Result<()> {
        self.0.wait_free()
    }

    /// Non-blocking completion check.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// // The simulated fabric buffers a send at once: it tests complete even
    /// // before the receive is posted.
    /// let out = run_ranks(1, |f| {
    ///     let mut s = f.isend(0, 0, 0, vec![5]).unwrap();
    ///     let done = s.test().unwrap();
    ///     s.wait().unwrap();
    ///     (done, f.irecv(0, 0, 0, 1).unwrap().wait().unwrap())
    /// });
    /// assert_eq!(out, vec![(true, vec![5])]);
    /// ```
    pub fn test(&mut self) -> Result<bool> {
        self.0.test()
    }
}

impl std::fmt::Debug for SendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendHandle")
    }
}

/// A pending receive into the caller's memory, as implemented by a fabric
/// ([`Fabric::irecv_into`]).
///
/// ```
/// use zccl_primitives::{Result, fabric::{PendingRecvInto, RecvIntoHandle}};
/// struct Ready;
/// impl PendingRecvInto for Ready {
///     fn wait(self: Box<Self>) -> Result<()> { Ok(()) }
///     fn test(&mut self) -> Result<bool> { Ok(true) }
/// }
/// RecvIntoHandle::new(Ready).wait().unwrap();
/// ```
pub trait PendingRecvInto: Send {
    /// Blocks until the message is in the caller's buffer, or failed.
    fn wait(self: Box<Self>) -> Result<()>;
    /// Returns `Ok(true)` once the receive completed, without blocking.
    fn test(&mut self) -> Result<bool>;
}

/// Handle of a receive into the caller's memory ([`Fabric::irecv_into`]).
/// Waiting it, or dropping it, gives the buffer back.
///
/// ```
/// use zccl_primitives::{Fabric, sim::run_ranks};
/// let out = run_ranks(2, |f| {
///     let mut buf = [0u8; 3];
///     // SAFETY: `buf` is untouched until the handle is waited.
///     let r = unsafe { f.irecv_into(1 - f.rank(), 0, 0, &mut buf) }.unwrap();
///     f.isend(1 - f.rank(), 0, 0, vec![f.rank() as u8; 3]).unwrap().wait().unwrap();
///     r.wait().unwrap();
///     buf
/// });
/// assert_eq!(out, vec![[1; 3], [0; 3]]);
/// ```
pub struct RecvIntoHandle(Box<dyn PendingRecvInto>);

impl RecvIntoHandle {
    /// Wraps a fabric's pending receive into memory.
    ///
    /// ```
    /// use zccl_primitives::{Result, fabric::{PendingRecvInto, RecvIntoHandle}};
    /// struct Never;
    /// impl PendingRecvInto for Never {
    ///     fn wait(self: Box<Self>) -> Result<()> { Ok(()) }
    ///     fn test(&mut self) -> Result<bool> { Ok(false) }
    /// }
    /// let mut h = RecvIntoHandle::new(Never);
    /// assert!(!h.test().unwrap());
    /// ```
    pub fn new(p: impl PendingRecvInto + 'static) -> Self {
        Self(Box::new(p))
    }

    /// Blocks until the message is in the buffer, or failed.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(1, |f| {
    ///     let mut b = [0u8];
    ///     f.isend(0, 0, 0, vec![9]).unwrap().wait().unwrap();
    ///     unsafe { f.irecv_into(0, 0, 0, &mut b) }.unwrap().wait().unwrap();
    ///     b[0]
    /// });
    /// assert_eq!(out, vec![9]);
    /// ```
    pub fn wait(self) -> Result<()> {
        self.0.wait()
    }

    /// Non-blocking completion check.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(1, |f| {
    ///     let mut b = [0u8];
    ///     f.isend(0, 0, 0, vec![9]).unwrap().wait().unwrap();
    ///     let mut h = unsafe { f.irecv_into(0, 0, 0, &mut b) }.unwrap();
    ///     let done = h.test().unwrap();
    ///     h.wait().unwrap();
    ///     done
    /// });
    /// assert_eq!(out, vec![true]);
    /// ```
    pub fn test(&mut self) -> Result<bool> {
        self.0.test()
    }
}

impl std::fmt::Debug for RecvIntoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecvIntoHandle")
    }
}

/// [`Fabric::irecv_combine`]'s default (and so [`Fabric::irecv_into`]'s):
/// an ordinary receive, handed to the sink whole when it is waited
/// (nothing is handed over before).
struct CombineAtWait {
    h: Option<RecvHandle>,
    len: usize,
    combine: Combine,
}

impl PendingRecvInto for CombineAtWait {
    fn wait(mut self: Box<Self>) -> Result<()> {
        let got = self.h.take().expect("waited once").wait_bytes()?;
        if got.len() != self.len {
            return Err(crate::error::invalid(format!(
                "received {} B where a receive of {} B was posted",
                got.len(),
                self.len
            )));
        }
        (self.combine)(0, &got);
        Ok(())
    }

    fn test(&mut self) -> Result<bool> {
        match &mut self.h {
            Some(h) => h.test(),
            None => Ok(true),
        }
    }
}

/// Handle of a posted receive.
///
/// ```
/// use zccl_primitives::{Fabric, sim::run_ranks};
/// let v = run_ranks(1, |f| {
///     let mut r = f.irecv(0, 0, 0, 2).unwrap(); // posted before the send
///     f.isend(0, 0, 0, vec![4, 2]).unwrap().wait().unwrap();
///     while !r.test().unwrap() {}
///     r.wait().unwrap()
/// });
/// assert_eq!(v[0], vec![4, 2]);
/// ```
pub struct RecvHandle(Box<dyn PendingRecv>);

impl RecvHandle {
    /// Wraps a fabric's pending receive.
    ///
    /// ```
    /// use zccl_primitives::{Result, fabric::{PendingRecv, RecvHandle}};
    /// // A receive whose message is already there.
    /// struct Ready(Vec<u8>);
    /// impl PendingRecv for Ready {
    ///     fn wait(self: Box<Self>) -> Result<Vec<u8>> { Ok(self.0) }
    ///     fn test(&mut self) -> Result<bool> { Ok(true) }
    /// }
    /// let mut h = RecvHandle::new(Ready(vec![9, 8]));
    /// assert!(h.test().unwrap());
    /// assert_eq!(h.wait().unwrap(), vec![9, 8]);
    /// ```
    pub fn new(p: impl PendingRecv + 'static) -> Self {
        Self(Box::new(p))
    }

    /// Blocks until the message arrived or the deadline passed; returns its bytes.
    ///
    /// ```
    /// use zccl_primitives::{Error, Fabric, sim::run_ranks};
    /// let out = run_ranks(1, |f| {
    ///     f.isend(0, 0, 1, vec![1, 2, 3]).unwrap().wait().unwrap();
    ///     f.isend(0, 0, 1, vec![4, 5, 6]).unwrap().wait().unwrap();
    ///     let ok = f.irecv(0, 0, 1, 3).unwrap().wait();
    ///     // The receiver states the length it expects; a mismatch is an error.
    ///     let bad = f.irecv(0, 0, 1, 2).unwrap().wait();
    ///     (ok, bad)
    /// });
    /// let (ok, bad) = &out[0];
    /// assert_eq!(ok, &Ok(vec![1, 2, 3]));
    /// assert!(matches!(bad, Err(Error::Mismatch { expected_len: 2, got_len: 3, .. })));
    /// ```
    pub fn wait(self) -> Result<Vec<u8>> {
        self.0.wait()
    }

    /// Blocks like [`wait`](RecvHandle::wait) but without copying the
    /// fabric's buffer (see [`PendingRecv::wait_bytes`]).
    ///
    /// ```
    /// use zccl_primitives::{Fabric, dtype::to_bytes, sim::run_ranks};
    /// let out = run_ranks(2, |f| {
    ///     let peer = 1 - f.rank();
    ///     let s = f.isend(peer, 0, 0, to_bytes(&[f.rank() as i32 * 100 + 1, -7])).unwrap();
    ///     let b = f.irecv(peer, 0, 0, 8).unwrap().wait_bytes().unwrap();
    ///     s.wait().unwrap();
    ///     assert_eq!(b.len(), 8);
    ///     b.elems::<i32>().into_owned()
    /// });
    /// assert_eq!(out, vec![vec![101, -7], vec![1, -7]]);
    /// ```
    pub fn wait_bytes(self) -> Result<RecvBytes> {
        self.0.wait_bytes()
    }

    /// Waits and reinterprets the bytes as elements of `T`.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, dtype::to_bytes, sim::run_ranks};
    /// let out = run_ranks(2, |f| {
    ///     let peer = 1 - f.rank();
    ///     let s = f.isend(peer, 0, 0, to_bytes(&[f.rank() as f32 + 0.5])).unwrap();
    ///     let v = f.irecv(peer, 0, 0, 4).unwrap().wait_elems::<f32>().unwrap();
    ///     s.wait().unwrap();
    ///     v
    /// });
    /// assert_eq!(out, vec![vec![1.5], vec![0.5]]);
    /// ```
    pub fn wait_elems<T: Elem>(self) -> Result<Vec<T>> {
        // Not `into_owned`: its copy of a borrowed slice is a plain
        // `memcpy`, which the short-distance trap slows 10-20x
        // (`zccl_transports::copy`).
        Ok(match self.wait_bytes()?.elems::<T>() {
            std::borrow::Cow::Borrowed(s) => zccl_transports::copy::to_vec(s),
            std::borrow::Cow::Owned(v) => v,
        })
    }

    /// Non-blocking arrival check.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(1, |f| {
    ///     let mut r = f.irecv(0, 0, 0, 1).unwrap();
    ///     let before = r.test().unwrap(); // nothing sent yet
    ///     f.isend(0, 0, 0, vec![3]).unwrap().wait().unwrap();
    ///     while !r.test().unwrap() {}
    ///     (before, r.wait().unwrap())
    /// });
    /// assert_eq!(out, vec![(false, vec![3])]);
    /// ```
    pub fn test(&mut self) -> Result<bool> {
        self.0.test()
    }
}

impl std::fmt::Debug for RecvHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecvHandle")
    }
}

/// Point-to-point messaging between the ranks of one group.
///
/// See the [module documentation](self) for the matching, ordering,
/// buffering and deadline contract.
///
/// ```
/// use zccl_primitives::{Fabric, sim::run_ranks};
/// // Any Fabric works behind `dyn Fabric`.
/// fn ping(f: &dyn Fabric) -> Vec<u8> {
///     let peer = (f.rank() + 1) % f.size();
///     let from = (f.rank() + f.size() - 1) % f.size();
///     let s = f.isend(peer, 0, 0, vec![f.rank() as u8]).unwrap();
///     let r = f.irecv(from, 0, 0, 1).unwrap().wait().unwrap();
///     s.wait().unwrap();
///     r
/// }
/// assert_eq!(run_ranks(3, |f| ping(f)), vec![vec![2], vec![0], vec![1]]);
/// ```
pub trait Fabric: Send + Sync {
    /// This rank, in `0..size()`.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// assert_eq!(run_ranks(3, |f| f.rank()), vec![0, 1, 2]);
    /// ```
    fn rank(&self) -> usize;
    /// Number of ranks.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// assert_eq!(run_ranks(3, |f| f.size()), vec![3, 3, 3]);
    /// ```
    fn size(&self) -> usize;
    /// Posts a send of `data` to rank `to` on `channel`. Never blocks on the receiver.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// // Every rank posts all its sends before any receive: no deadlock.
    /// let out = run_ranks(3, |f| {
    ///     let sends: Vec<_> = (0..f.size()).map(|to| f.isend(to, 0, 0, vec![f.rank() as u8]).unwrap()).collect();
    ///     let got: Vec<u8> = (0..f.size()).map(|from| f.irecv(from, 0, 0, 1).unwrap().wait().unwrap()[0]).collect();
    ///     sends.into_iter().for_each(|s| s.wait().unwrap());
    ///     got
    /// });
    /// assert!(out.iter().all(|g| g == &[0, 1, 2]));
    /// // A rank outside the group is an argument error.
    /// assert!(run_ranks(1, |f| f.isend(1, 0, 0, vec![]).is_err())[0]);
    /// ```
    fn isend(&self, to: usize, channel: u32, tag: u64, data: Vec<u8>) -> Result<SendHandle>;
    /// Posts a receive of exactly `len` bytes from rank `from` on `channel`.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// // Matching is FIFO per (peer, channel): channels are independent queues.
    /// let out = run_ranks(1, |f| {
    ///     f.isend(0, 0, 0, vec![1]).unwrap().wait().unwrap();
    ///     f.isend(0, 1, 0, vec![2]).unwrap().wait().unwrap();
    ///     f.isend(0, 0, 0, vec![3]).unwrap().wait().unwrap();
    ///     let on1 = f.irecv(0, 1, 0, 1).unwrap().wait().unwrap();
    ///     let first = f.irecv(0, 0, 0, 1).unwrap().wait().unwrap();
    ///     let second = f.irecv(0, 0, 0, 1).unwrap().wait().unwrap();
    ///     [on1[0], first[0], second[0]]
    /// });
    /// assert_eq!(out[0], [2, 1, 3]);
    /// ```
    fn irecv(&self, from: usize, channel: u32, tag: u64, len: usize) -> Result<RecvHandle>;

    /// One round of an exchange: posts a send of `data` to rank `to` and a
    /// receive of `len` bytes from rank `from`, both on `channel` with
    /// `tag`. The same as [`Fabric::isend`] then [`Fabric::irecv`] (the
    /// default), but a fabric that can issue both at once does so (the
    /// communicator: one issue, one lock, one clock reading), which counts
    /// for the small messages of recursive doubling.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(2, |f| {
    ///     let peer = 1 - f.rank();
    ///     let (s, r) = f.isend_irecv(peer, peer, 0, 0, vec![f.rank() as u8; 3], 3).unwrap();
    ///     s.wait().unwrap();
    ///     r.wait().unwrap()
    /// });
    /// assert_eq!(out, vec![vec![1; 3], vec![0; 3]]);
    /// ```
    fn isend_irecv(
        &self,
        to: usize,
        from: usize,
        channel: u32,
        tag: u64,
        data: Vec<u8>,
        len: usize,
    ) -> Result<(SendHandle, RecvHandle)> {
        let s = self.isend(to, channel, tag, data)?;
        let r = self.irecv(from, channel, tag, len)?;
        Ok((s, r))
    }

    /// Like [`Fabric::isend`], for bytes that were received: a fabric that
    /// can send its own received buffers on without copying them (the
    /// communicator) does so; the default copies them into a vector.
    /// Pipelines that forward what they receive (ring all-gather,
    /// broadcast) use it.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(2, |f| {
    ///     if f.rank() == 0 {
    ///         f.isend(1, 0, 0, vec![4, 2]).unwrap().wait().unwrap();
    ///         f.irecv(1, 0, 0, 2).unwrap().wait().unwrap()
    ///     } else {
    ///         let got = f.irecv(0, 0, 0, 2).unwrap().wait_bytes().unwrap();
    ///         f.isend_bytes(0, 0, 0, got).unwrap().wait().unwrap();
    ///         vec![]
    ///     }
    /// });
    /// assert_eq!(out[0], vec![4, 2]);
    /// ```
    fn isend_bytes(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: RecvBytes,
    ) -> Result<SendHandle> {
        self.isend(to, channel, tag, data.into_vec())
    }

    /// Like [`Fabric::isend`], but the message is the caller's own memory:
    /// a fabric that can let the peer copy it from there (the communicator,
    /// between ranks of one host that read each other by CMA) sends it
    /// without a copy; the default copies it into a vector. The handle's
    /// `wait` returns once the memory is no longer needed, and dropping the
    /// handle waits too.
    ///
    /// # Safety
    /// `data` must stay valid and must not be written until the returned
    /// handle has been waited on or dropped; the handle must not be leaked.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(2, |f| {
    ///     let mine = vec![f.rank() as u8 + 1; 4];
    ///     // SAFETY: `mine` is untouched until `s` is waited.
    ///     let s = unsafe { f.isend_lent(1 - f.rank(), 0, 0, &mine) }.unwrap();
    ///     let got = f.irecv(1 - f.rank(), 0, 0, 4).unwrap().wait().unwrap();
    ///     s.wait().unwrap();
    ///     got
    /// });
    /// assert_eq!(out, vec![vec![2; 4], vec![1; 4]]);
    /// ```
    unsafe fn isend_lent(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: &[u8],
    ) -> Result<SendHandle> {
        self.isend(to, channel, tag, zccl_transports::copy::to_vec(data))
    }

    /// Like [`Fabric::irecv`] of `dst.len()` bytes, but the message ends up
    /// in `dst`: a fabric that can copy it there as it arrives (the
    /// communicator, from a same-host peer by CMA) does so; the default
    /// receives as usual and copies into `dst` when the handle is waited.
    ///
    /// # Safety
    /// `dst` must stay valid and must not be read or written until the
    /// returned handle has been waited on or dropped; the handle must not be
    /// leaked.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(1, |f| {
    ///     let mut buf = [0u8; 2];
    ///     f.isend(0, 0, 0, vec![3, 4]).unwrap().wait().unwrap();
    ///     // SAFETY: `buf` is untouched until the wait.
    ///     unsafe { f.irecv_into(0, 0, 0, &mut buf) }.unwrap().wait().unwrap();
    ///     buf
    /// });
    /// assert_eq!(out[0], [3, 4]);
    /// ```
    unsafe fn irecv_into(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        dst: &mut [u8],
    ) -> Result<RecvIntoHandle> {
        /// `dst`, written by the sink on the thread that waits.
        struct Dst(*mut u8);
        // SAFETY: the caller keeps the memory valid and untouched until the
        // handle is waited or dropped, and only the sink writes it.
        unsafe impl Send for Dst {}
        let (dst, len) = (Dst(dst.as_mut_ptr()), dst.len());
        let copy = move |off: usize, b: &[u8]| {
            let dst = &dst;
            // SAFETY: see `Dst`; the pieces lie within the `len` bytes
            // (the default hands over one, of exactly `len` bytes).
            unsafe { zccl_transports::copy::copy_raw(dst.0.add(off), b.as_ptr(), b.len()) };
        };
        self.irecv_combine(from, channel, tag, len, Box::new(copy))
    }

    /// Like [`Fabric::irecv`] of `len` bytes, but the message is handed to
    /// `combine` as `(offset, bytes)` pieces, in order, each once, none
    /// splitting an element ([`Combine`]), instead of being returned: for a
    /// reduction of what arrives into memory of the caller's. A fabric
    /// that copies a message piece by piece (the communicator, from a
    /// same-host peer by CMA) hands each piece over while it is still in
    /// the cache, on the thread that copies it; the default receives as
    /// usual and hands the message over whole when the handle is waited.
    /// `combine` is not called once the handle was waited or dropped.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// let out = run_ranks(1, |f| {
    ///     let got = Arc::new(Mutex::new(Vec::new()));
    ///     let g = got.clone();
    ///     let r = f.irecv_combine(0, 0, 0, 2, Box::new(move |off: usize, b: &[u8]| {
    ///         g.lock().unwrap().push((off, b.to_vec()));
    ///     })).unwrap();
    ///     f.isend(0, 0, 0, vec![3, 4]).unwrap().wait().unwrap();
    ///     r.wait().unwrap();
    ///     let v = got.lock().unwrap().clone();
    ///     v
    /// });
    /// assert_eq!(out[0], [(0, vec![3, 4])]);
    /// ```
    fn irecv_combine(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        len: usize,
        combine: Combine,
    ) -> Result<RecvIntoHandle> {
        let h = self.irecv(from, channel, tag, len)?;
        Ok(RecvIntoHandle::new(CombineAtWait {
            h: Some(h),
            len,
            combine,
        }))
    }

    /// `Ok` while the fabric can run operations; an error once it was
    /// aborted or closed. Operations that send no message (a collective of a
    /// 1-rank group) ask it, so that they fail after an abort like the rest.
    /// Default: always `Ok` (the simulated fabric, which cannot be aborted).
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// assert!(run_ranks(1, |f| f.ensure_live().is_ok())[0]);
    /// ```
    fn ensure_live(&self) -> Result<()> {
        Ok(())
    }

    /// The label byte this fabric stamps on the tags of the messages it
    /// carries ([`with_label`]; 0: none). The wrapper every operation puts
    /// around its fabric reports its own, so that an operation run inside
    /// another (a TokenRing step's ring shifts) keeps the outer one's label;
    /// other fabrics keep the default.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// assert_eq!(run_ranks(1, |f| f.tag_label()), vec![0]);
    /// ```
    fn tag_label(&self) -> u8 {
        0
    }

    /// Gives up what is left of the operation this rank runs on `channel`:
    /// an operation that stops midway by its caller's error (a callback
    /// that failed) calls it before it returns, since the ranks have then
    /// sent each other different parts of it and what they send next would
    /// be matched as its missing messages. The communicator's fabric fails
    /// the channel on every rank
    /// ([`Channel::abandon`](zccl_runtime::Channel::abandon)); the default
    /// (the simulated fabric) does nothing.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::run_ranks};
    /// run_ranks(1, |f| f.abandon(0));
    /// ```
    fn abandon(&self, channel: u32) {
        let _ = channel;
    }
}

/// Posts a send of a slice of elements (copies it into the message).
///
/// ```
/// use zccl_primitives::{fabric::{send_elems, recv_elems}, sim::run_ranks, Fabric};
/// let v = run_ranks(2, |f| {
///     let s = send_elems(f, 1 - f.rank(), 0, 9, &[f.rank() as f32]).unwrap();
///     let r = recv_elems::<f32, _>(f, 1 - f.rank(), 0, 9, 1).unwrap();
///     s.wait().unwrap();
///     r.wait_elems::<f32>().unwrap()
/// });
/// assert_eq!(v, vec![vec![1.0], vec![0.0]]);
/// ```
pub fn send_elems<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    to: usize,
    channel: u32,
    tag: u64,
    data: &[T],
) -> Result<SendHandle> {
    f.isend(to, channel, tag, to_bytes(data))
}

/// Posts a receive of `count` elements of `T`; wait it with [`RecvHandle::wait_elems`].
///
/// ```
/// use zccl_primitives::{fabric::{recv_elems, send_elems}, sim::run_ranks};
/// let v = run_ranks(1, |f| {
///     send_elems(f, 0, 0, 0, &[1.5f64, 2.5]).unwrap().wait().unwrap();
///     recv_elems::<f64, _>(f, 0, 0, 0, 2).unwrap().wait_elems::<f64>().unwrap()
/// });
/// assert_eq!(v[0], vec![1.5, 2.5]);
/// ```
pub fn recv_elems<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    from: usize,
    channel: u32,
    tag: u64,
    count: usize,
) -> Result<RecvHandle> {
    f.irecv(from, channel, tag, count * std::mem::size_of::<T>())
}

/// Checks that `peer` is a rank of `f`.
pub(crate) fn check_rank<F: Fabric + ?Sized>(f: &F, peer: usize, what: &str) -> Result<()> {
    if peer >= f.size() {
        return Err(crate::error::invalid(format!(
            "{what}: rank {peer} out of range (group of {})",
            f.size()
        )));
    }
    Ok(())
}

/// Builds a tag from an operation code, a step and an index, so that a
/// mismatched schedule is reported with readable numbers (`0xOO_SSSS_IIII_IIII`).
///
/// ```
/// assert_eq!(zccl_primitives::fabric::tag(0x12, 3, 4), 0x12_0003_0000_0004);
/// ```
pub const fn tag(op: u8, step: u16, index: u32) -> u64 {
    ((op as u64) << 48) | ((step as u64) << 32) | index as u64
}

/// The bit of a tag's index that marks a piece of a message sent in pieces
/// (a ring collective's chunk, a chain broadcast's segments) after which
/// more pieces of it follow ([`piece_index`]). The communicator fabric
/// ([`crate::comm::Labelled`]) carries it in the message's label
/// ([`zccl_runtime::label::OpLabel::more_follow`]), which the receive's
/// match compares; the simulated fabric compares whole tags. So where two
/// ranks' chunks differ by whole pieces (the shorter side's pieces all
/// alike in size to the longer side's first ones), the shorter side's last
/// piece meets one marked as having more to follow, and both fail with a
/// mismatch, instead of the shorter side completing with the longer side's
/// first pieces (and the rest left for its next operation).
///
/// ```
/// use zccl_primitives::fabric::{piece_index, MORE_PIECES};
/// assert_eq!(piece_index(3, true), 3 | MORE_PIECES);
/// assert_eq!(piece_index(3, false), 3);
/// ```
pub const MORE_PIECES: u32 = 1 << 31;

/// The index the tag of piece `k` of a message carries: `k`, marked with
/// [`MORE_PIECES`] when more pieces of the message follow.
///
/// ```
/// use zccl_primitives::fabric::{piece_index, tag, MORE_PIECES};
/// // A chunk in three pieces: the first two say more follow.
/// let tags: Vec<u64> = (0..3).map(|k| tag(7, 1, piece_index(k, k < 2))).collect();
/// assert!(tags[..2].iter().all(|&t| t as u32 & MORE_PIECES != 0));
/// assert_eq!(tags[2], tag(7, 1, 2));
/// ```
pub const fn piece_index(k: usize, more: bool) -> u32 {
    if more {
        k as u32 | MORE_PIECES
    } else {
        k as u32
    }
}

/// Bits of a tag that carry the message's label: the header type byte
/// ([`zccl_runtime::label::OpLabel::byte`]: element type and operation) in
/// the tag's top byte, which [`tag`] leaves zero. Fabrics that carry labels
/// (the communicator, [`crate::comm::Labelled`]) put it on the wire; the
/// others ignore it or, like the simulated fabric, compare it with the rest
/// of the tag.
///
/// ```
/// use zccl_primitives::fabric::{label_of, tag, with_label};
/// use zccl_runtime::{DType, label::OpLabel};
/// let t = with_label(tag(1, 2, 3), OpLabel::ALL_GATHER, DType::F32);
/// assert_eq!(t & ((1 << 56) - 1), tag(1, 2, 3));
/// assert_eq!(label_of(t), (Some(DType::F32), OpLabel::ALL_GATHER));
/// // A tag that already carries a label keeps it.
/// assert_eq!(with_label(t, OpLabel::BARRIER, DType::U8), t);
/// ```
pub const LABEL_SHIFT: u32 = 56;

/// `t` labelled as a message of operation `op` over elements of `dtype`,
/// unless it already carries a label.
pub const fn with_label(t: u64, op: OpLabel, dtype: DType) -> u64 {
    if t >> LABEL_SHIFT != 0 {
        t
    } else {
        t | (op.byte(dtype) as u64) << LABEL_SHIFT
    }
}

/// The label a tag carries (see [`LABEL_SHIFT`]): element type (`None`
/// for an invalid code) and operation.
pub const fn label_of(t: u64) -> (Option<DType>, OpLabel) {
    OpLabel::from_byte((t >> LABEL_SHIFT) as u8)
}

/// A fabric whose messages carry the label of the operation that sends
/// them (in the tags' top byte, [`with_label`]): every collective and
/// primitive wraps the fabric it is given in one, so that ranks running
/// different operations, element types or broadcast roots fail with a
/// mismatch naming both instead of exchanging data.
pub(crate) struct Signed<'a, F: Fabric + ?Sized> {
    f: &'a F,
    /// The label byte: the enclosing operation's, or this one's.
    byte: u8,
}

impl<'a, F: Fabric + ?Sized> Signed<'a, F> {
    /// `f`, its messages labelled as operation `op` over `T`.
    pub(crate) fn new<T: Elem>(f: &'a F, op: OpLabel) -> Self {
        Self::bytes(f, op, T::DTYPE)
    }

    /// `f`, its messages labelled as operation `op` over `dtype` (unless
    /// `f` is itself an operation's fabric: the outer label stays).
    pub(crate) fn bytes(f: &'a F, op: OpLabel, dtype: DType) -> Self {
        let byte = match f.tag_label() {
            0 => op.byte(dtype),
            outer => outer,
        };
        Self { f, byte }
    }

    fn t(&self, t: u64) -> u64 {
        if t >> LABEL_SHIFT != 0 {
            t
        } else {
            t | (self.byte as u64) << LABEL_SHIFT
        }
    }
}

impl<F: Fabric + ?Sized> Fabric for Signed<'_, F> {
    fn rank(&self) -> usize {
        self.f.rank()
    }

    fn ensure_live(&self) -> Result<()> {
        self.f.ensure_live()
    }

    fn abandon(&self, channel: u32) {
        self.f.abandon(channel)
    }

    fn tag_label(&self) -> u8 {
        self.byte
    }

    fn size(&self) -> usize {
        self.f.size()
    }

    fn isend(&self, to: usize, channel: u32, tag: u64, data: Vec<u8>) -> Result<SendHandle> {
        self.f.isend(to, channel, self.t(tag), data)
    }

    fn irecv(&self, from: usize, channel: u32, tag: u64, len: usize) -> Result<RecvHandle> {
        self.f.irecv(from, channel, self.t(tag), len)
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
        self.f
            .isend_irecv(to, from, channel, self.t(tag), data, len)
    }

    fn isend_bytes(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: RecvBytes,
    ) -> Result<SendHandle> {
        self.f.isend_bytes(to, channel, self.t(tag), data)
    }

    unsafe fn isend_lent(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: &[u8],
    ) -> Result<SendHandle> {
        // SAFETY: forwarded from our caller.
        unsafe { self.f.isend_lent(to, channel, self.t(tag), data) }
    }

    unsafe fn irecv_into(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        dst: &mut [u8],
    ) -> Result<RecvIntoHandle> {
        // SAFETY: forwarded from our caller.
        unsafe { self.f.irecv_into(from, channel, self.t(tag), dst) }
    }

    fn irecv_combine(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        len: usize,
        combine: Combine,
    ) -> Result<RecvIntoHandle> {
        self.f
            .irecv_combine(from, channel, self.t(tag), len, combine)
    }
}
