//! The bench's own count of the bytes it sends: a [`Fabric`] adapter.
//!
//! [`Counting`] wraps any fabric and adds up the payload bytes handed to
//! `isend` for *other* ranks (a send to oneself never reaches a transport).
//! Every message of the bench goes through it: the measured ops, barriers,
//! the rank table and the per-row aggregation. The figure is independent of
//! the transports' own accounting (`zccl_nic_transmit_bytes_total`, which
//! counts DATA payload bytes as the transports write them), so the two can
//! be compared: the Prometheus acceptance test (`bench/tests/prometheus.rs`)
//! does exactly that.
//!
//! ```
//! use zccl_bench::count::Counting;
//! use zccl_primitives::{Fabric, sim::run_ranks};
//! let sent = run_ranks(2, |f| {
//!     let c = Counting::new(f);
//!     let peer = 1 - c.rank();
//!     c.isend(peer, 0, 0, vec![0; 100]).unwrap().wait().unwrap();
//!     c.isend(c.rank(), 0, 0, vec![0; 7]).unwrap().wait().unwrap(); // to itself: not counted
//!     c.irecv(peer, 0, 0, 100).unwrap().wait().unwrap();
//!     c.irecv(c.rank(), 0, 0, 7).unwrap().wait().unwrap();
//!     c.sent()
//! });
//! assert_eq!(sent, vec![100, 100]);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use zccl_primitives::Fabric;
use zccl_primitives::Result;
use zccl_primitives::fabric::{RecvBytes, RecvHandle, RecvIntoHandle, SendHandle};

/// A fabric that counts the payload bytes this rank sends to other ranks.
pub struct Counting<'a, F: Fabric + ?Sized> {
    inner: &'a F,
    sent: AtomicU64,
}

impl<'a, F: Fabric + ?Sized> Counting<'a, F> {
    /// Wraps `inner`; the count starts at 0.
    pub fn new(inner: &'a F) -> Self {
        Counting {
            inner,
            sent: AtomicU64::new(0),
        }
    }

    /// Payload bytes handed to `isend` for other ranks so far (sends that
    /// were posted successfully).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Adds `bytes` to the count (for a send the caller is about to post
    /// and wants included in a figure it sends).
    fn add(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl<F: Fabric + ?Sized> Fabric for Counting<'_, F> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn abandon(&self, channel: u32) {
        self.inner.abandon(channel)
    }

    fn ensure_live(&self) -> Result<()> {
        self.inner.ensure_live()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn isend(&self, to: usize, channel: u32, tag: u64, data: Vec<u8>) -> Result<SendHandle> {
        let len = data.len() as u64;
        let h = self.inner.isend(to, channel, tag, data)?;
        if to != self.inner.rank() {
            self.add(len);
        }
        Ok(h)
    }

    fn irecv(&self, from: usize, channel: u32, tag: u64, len: usize) -> Result<RecvHandle> {
        self.inner.irecv(from, channel, tag, len)
    }

    // Forwarded, not left to the default: the communicator issues both in
    // one go, which the bench must measure.
    fn isend_irecv(
        &self,
        to: usize,
        from: usize,
        channel: u32,
        tag: u64,
        data: Vec<u8>,
        len: usize,
    ) -> Result<(SendHandle, RecvHandle)> {
        let n = data.len() as u64;
        let h = self.inner.isend_irecv(to, from, channel, tag, data, len)?;
        if to != self.inner.rank() {
            self.add(n);
        }
        Ok(h)
    }

    // Forwarded, not left to the defaults: they copy the lent slice or the
    // received buffer, which would make the bench measure copies the
    // communicator does not make.
    unsafe fn isend_lent(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: &[u8],
    ) -> Result<SendHandle> {
        // SAFETY: forwarded from our caller's contract.
        let h = unsafe { self.inner.isend_lent(to, channel, tag, data) }?;
        if to != self.inner.rank() {
            self.add(data.len() as u64);
        }
        Ok(h)
    }

    unsafe fn irecv_into(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        dst: &mut [u8],
    ) -> Result<RecvIntoHandle> {
        // SAFETY: forwarded from our caller's contract.
        unsafe { self.inner.irecv_into(from, channel, tag, dst) }
    }

    fn irecv_combine(
        &self,
        from: usize,
        channel: u32,
        tag: u64,
        len: usize,
        combine: zccl_primitives::fabric::Combine,
    ) -> Result<RecvIntoHandle> {
        self.inner.irecv_combine(from, channel, tag, len, combine)
    }

    // Forwarded, not left to the default: the default copies the received
    // buffer into a vector, which would make the bench measure a copy the
    // communicator does not make.
    fn isend_bytes(
        &self,
        to: usize,
        channel: u32,
        tag: u64,
        data: RecvBytes,
    ) -> Result<SendHandle> {
        let len = data.len() as u64;
        let h = self.inner.isend_bytes(to, channel, tag, data)?;
        if to != self.inner.rank() {
            self.add(len);
        }
        Ok(h)
    }
}

/// Tag of the total's messages (checked by the simulated fabric only).
const TOTAL_TAG: u64 = 0x7a63_636c_6279_7465;

/// The bytes every rank sent through `c`, summed, **including the messages
/// of this summation**: each rank other than 0 sends its count (8 bytes,
/// already added to it) to rank 0 on `channel`, which adds them up. Rank 0
/// gets `Some(total)`, the others `None`. Collective: every rank calls it.
///
/// ```
/// use zccl_bench::count::{Counting, total_sent};
/// use zccl_primitives::{Fabric, sim::run_ranks};
/// let totals = run_ranks(3, |f| {
///     let c = Counting::new(f);
///     let to = (c.rank() + 1) % c.size();
///     let from = (c.rank() + c.size() - 1) % c.size();
///     c.isend(to, 0, 0, vec![1; 10]).unwrap().wait().unwrap();
///     c.irecv(from, 0, 0, 10).unwrap().wait().unwrap();
///     total_sent(&c, 1).unwrap()
/// });
/// // 3 x 10 bytes, plus 2 ranks x 8 bytes for the summation itself.
/// assert_eq!(totals, vec![Some(46), None, None]);
/// ```
pub fn total_sent<F: Fabric + ?Sized>(c: &Counting<'_, F>, channel: u32) -> Result<Option<u64>> {
    let (r, n) = (c.rank(), c.size());
    if r != 0 {
        c.add(8);
        let mine = c.sent();
        // Not through `c.isend`: the 8 bytes are already counted.
        c.inner
            .isend(0, channel, TOTAL_TAG, mine.to_le_bytes().to_vec())?
            .wait()?;
        return Ok(None);
    }
    let handles = (1..n)
        .map(|p| c.irecv(p, channel, TOTAL_TAG, 8))
        .collect::<Result<Vec<_>>>()?;
    let mut total = c.sent();
    for h in handles {
        let b = h.wait()?;
        let v: [u8; 8] = b.as_slice().try_into().map_err(|_| {
            zccl_primitives::Error::InvalidArgument(format!(
                "total_sent: got {} bytes, not 8",
                b.len()
            ))
        })?;
        total += u64::from_le_bytes(v);
    }
    Ok(Some(total))
}
