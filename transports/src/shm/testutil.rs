//! What the transport-level unit tests of this module share: two ranks
//! as threads of this process over a real segment, and payloads whose drop
//! can be watched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::config::{ShmConfig, ShmSetup};
use super::segment::job_tag;
use super::transport::ShmTransport;
use crate::handshake::JobSecret;
use crate::{CloseReason, Message, MessageKind, TransportEvent};

pub(super) type Side = (ShmTransport, mpsc::UnboundedReceiver<TransportEvent>);

/// Ranks 0 and 1 of a fresh job, as threads of this process.
pub(super) fn pair(cfg0: ShmConfig, cfg1: ShmConfig) -> (Side, Side) {
    let mut g = group(vec![cfg0, cfg1]);
    let b = g.pop().unwrap();
    (g.pop().unwrap(), b)
}

/// Ranks `0..cfgs.len()` of a fresh job (rank `r` with `cfgs[r]`), as
/// threads of this process, each linked to every other.
pub(super) fn group(cfgs: Vec<ShmConfig>) -> Vec<Side> {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&std::process::id().to_le_bytes());
    b[4..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    b[8] = 0x5e;
    let job = job_tag(&JobSecret::from_bytes(b));
    let n = cfgs.len() as u32;
    let starts: Vec<_> = cfgs
        .into_iter()
        .enumerate()
        .map(|(rank, config)| {
            let rank = rank as u32;
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::unbounded_channel();
                let setup = ShmSetup {
                    rank,
                    world_size: n,
                    job,
                    tags: (0..n).map(|r| Some(format!("u{r}"))).collect(),
                    peers: (0..n).filter(|&p| p != rank).collect(),
                    config,
                    setup_timeout: Duration::from_secs(10),
                };
                (ShmTransport::establish(setup, tx).unwrap(), rx)
            })
        })
        .collect();
    starts.into_iter().map(|s| s.join().unwrap()).collect()
}

/// The tests' configuration: CMA from more than 256 KiB, as on a crowded
/// host ([`CROWDED_CMA_MIN_BYTES`](super::CROWDED_CMA_MIN_BYTES)), so that
/// the CMA records the tests send (256 KiB to [`POLL_MAX_CMA_BYTES`](super::POLL_MAX_CMA_BYTES)
/// and more) go by CMA whichever threshold the default has.
pub(super) fn cfg() -> ShmConfig {
    ShmConfig {
        max_message: 64 << 20,
        cma_min_bytes: super::CROWDED_CMA_MIN_BYTES,
        ..ShmConfig::default()
    }
}

pub(super) fn next(rx: &mut mpsc::UnboundedReceiver<TransportEvent>) -> TransportEvent {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.try_recv() {
            Ok(e) => return e,
            Err(mpsc::error::TryRecvError::Empty) => {
                assert!(Instant::now() < until, "no event within 10 s");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Expects the next event to report `peer` lost, for a reason
/// containing `want`.
pub(super) fn expect_lost(rx: &mut mpsc::UnboundedReceiver<TransportEvent>, peer: u32, want: &str) {
    match next(rx) {
        TransportEvent::PeerClosed {
            peer: p,
            reason: CloseReason::Lost(why),
            ..
        } if p == peer => assert!(why.contains(want), "{why:?} lacks {want:?}"),
        other => panic!("expected peer {peer} lost ({want}): {other:?}"),
    }
}

/// Rank 0 sends `m` (a large CMA message) to rank 1, whose receive is not
/// posted: 50 ms later rank 1 has not taken it (it waits for the post).
pub(super) fn sent_and_left_unposted(
    t0: &ShmTransport,
    rx1: &mut mpsc::UnboundedReceiver<TransportEvent>,
    m: Message,
) {
    use crate::Transport;
    t0.send(1, m).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        rx1.try_recv().is_err(),
        "taken before its receive was posted"
    );
}

/// The landing key of message `seq` of [`msg`] from rank 0.
pub(super) fn msg_key(seq: u64) -> crate::landing::LandKey {
    crate::landing::LandKey {
        peer: 0,
        comm: 2,
        channel: 3,
        seq,
    }
}

/// A pair of transports whose rank 1 waits `wait` for the receive of a
/// CMA record that is not posted yet ([`ShmConfig::unposted_wait`]).
pub(super) fn pair_waiting(wait: Duration) -> (Side, Side) {
    let cfg1 = ShmConfig {
        unposted_wait: Some(wait),
        ..cfg()
    };
    pair(cfg(), cfg1)
}

pub(super) fn msg(kind: MessageKind, seq: u64, len: usize) -> Message {
    Message {
        kind,
        dtype: 1,
        comm: 2,
        channel: 3,
        seq,
        payload: (0..len)
            .map(|i| (i as u64 ^ seq) as u8)
            .collect::<Vec<_>>()
            .into(),
    }
}

/// A payload whose drop is observable (what a lent payload's owner is).
struct Watched(Arc<Vec<u8>>, Arc<AtomicBool>);
impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
impl Drop for Watched {
    fn drop(&mut self) {
        self.1.store(true, Ordering::SeqCst);
    }
}

/// A message whose payload reports its drop; the memory itself stays
/// mapped while the returned `Arc<Vec<u8>>` lives (as a lender's does).
pub(super) fn watched(seq: u64, len: usize) -> (Message, Arc<AtomicBool>, Arc<Vec<u8>>) {
    let mut m = msg(MessageKind::Data, seq, len);
    let dropped = Arc::new(AtomicBool::new(false));
    let mem = Arc::new(m.payload.to_vec());
    m.payload = Bytes::from_owner(Watched(mem.clone(), dropped.clone()));
    (m, dropped, mem)
}

pub(super) fn wait_true(b: &AtomicBool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !b.load(Ordering::SeqCst) {
        assert!(Instant::now() < until, "not within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}
