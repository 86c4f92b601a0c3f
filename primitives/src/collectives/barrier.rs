//! Barrier: dissemination, `⌈log₂ n⌉` rounds of empty messages.

use crate::fabric::Signed;
use std::sync::Arc;
use zccl_runtime::DType;
use zccl_runtime::label::OpLabel;

use super::{OP_BARRIER, wait_all};
use crate::error::Result;
use crate::fabric::{Fabric, tag};
use crate::nonblocking::{OpHandle, start};

/// Returns once every rank has entered the barrier (dissemination barrier,
/// `⌈log₂ n⌉` rounds of empty messages).
///
/// ```
/// use zccl_primitives::{collectives::barrier, sim::run_ranks};
/// run_ranks(5, |f| barrier(f, 0).unwrap());
/// ```
pub fn barrier<F: Fabric + ?Sized>(f: &F, ch: u32) -> Result<()> {
    let f = &Signed::bytes(f, OpLabel::BARRIER, DType::U8);
    let (r, n) = (f.rank(), f.size());
    if n == 1 {
        return f.ensure_live();
    }
    let mut d = 1;
    let mut k = 0u16;
    // Each round waits for its receive only (what the barrier needs); the
    // sends are waited at the end.
    let mut sends = Vec::new();
    while d < n {
        let t = tag(OP_BARRIER, k, 0);
        let (s, rv) = f.isend_irecv((r + d) % n, (r + n - d) % n, ch, t, Vec::new(), 0)?;
        sends.push(s);
        rv.wait()?;
        d *= 2;
        k += 1;
    }
    wait_all(sends)
}

/// Non-blocking [`barrier`]: the handle completes once every rank entered.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::ibarrier, sim::run_ranks};
/// run_ranks(4, |f| ibarrier(Arc::new(f.clone()), 0).wait().unwrap());
/// ```
pub fn ibarrier<F: Fabric + ?Sized + 'static>(f: Arc<F>, ch: u32) -> OpHandle<()> {
    start(f, "barrier", move |f| barrier(f, ch))
}
