//! [`HybridTransport`]: one [`Transport`] that routes each peer either over
//! shared memory or over TCP.
//!
//! * Every peer keeps its TCP connections: for a peer routed to shared memory
//!   they carry no messages, only heartbeats and goodbyes, and so keep serving
//!   liveness — a killed peer is seen at once (EOF), a stopped one after the
//!   peer timeout, an aborting one names its cause — exactly as for TCP peers.
//! * All messages of a shared-memory peer (data and the control messages of
//!   the layer above) go through its rings.
//! * Peer-loss events of a shared-memory peer are reported with the segment's
//!   path ([`PeerPath::Shm`], with the TCP path as its `control` part).
//! * A clean close seen on TCP is held back until the shared-memory goodbye
//!   arrived, which comes after every message the peer sent: a receive never
//!   fails with "peer closed" while its data is still in the ring. If the
//!   ring goodbye does not come within the configured grace, the clean close
//!   is reported anyway.
//! * Every peer is reported closed at most once.
//! * [`Transport::poll`] polls the shared-memory transport only: TCP
//!   messages are read by its tasks and reported as events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::frame::GoodbyeReason;
use crate::{BoxFuture, CloseReason, Message, PeerPath, Transport, TransportError, TransportEvent};

/// How long a clean close of the shared-memory part may take before the TCP
/// goodbyes go out regardless.
const SHM_CLEAN_CLOSE: Duration = Duration::from_millis(1500);

/// Routes each peer to shared memory or TCP (see the module docs).
pub struct HybridTransport {
    tcp: Arc<dyn Transport>,
    shm: Option<Arc<dyn Transport>>,
    via_shm: Arc<Vec<bool>>,
    merge: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for HybridTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridTransport")
            .field("via_shm", &self.via_shm)
            .finish()
    }
}

impl HybridTransport {
    /// Combines `tcp` (connected to every peer, its events on `tcp_events`)
    /// with `shm` (connected to the peers `p` with `via_shm[p]`, its events on
    /// the second element), forwarding the merged events to `out`. A clean
    /// TCP close of a shared-memory peer is held back up to `clean_grace`
    /// for the ring goodbye. Must be called inside a tokio runtime (it spawns
    /// the merging task).
    pub fn new(
        tcp: Arc<dyn Transport>,
        tcp_events: mpsc::UnboundedReceiver<TransportEvent>,
        shm: Option<(Arc<dyn Transport>, mpsc::UnboundedReceiver<TransportEvent>)>,
        via_shm: Vec<bool>,
        out: mpsc::UnboundedSender<TransportEvent>,
        clean_grace: Duration,
    ) -> Self {
        let via_shm = Arc::new(if shm.is_some() {
            via_shm
        } else {
            vec![false; via_shm.len()]
        });
        let (shm, shm_events) = match shm {
            Some((t, e)) => (Some(t), Some(e)),
            None => (None, None),
        };
        let merge = tokio::spawn(merge(
            tcp.clone(),
            shm.clone(),
            via_shm.clone(),
            tcp_events,
            shm_events,
            out,
            clean_grace,
        ));
        Self {
            tcp,
            shm,
            via_shm,
            merge: Mutex::new(Some(merge)),
        }
    }

    /// Whether messages to `peer` travel over shared memory.
    pub fn uses_shm(&self, peer: u32) -> bool {
        self.via_shm.get(peer as usize).copied().unwrap_or(false)
    }
}

impl Drop for HybridTransport {
    fn drop(&mut self) {
        if let Some(h) = self.merge.lock().expect("merge").take() {
            h.abort();
        }
    }
}

fn shm_path(
    tcp: &Arc<dyn Transport>,
    shm: &Option<Arc<dyn Transport>>,
    peer: u32,
    fallback: Option<PeerPath>,
) -> Option<PeerPath> {
    let control = match tcp.path(peer).or(fallback) {
        Some(PeerPath::Nic(n)) => Some(n),
        _ => None,
    };
    match shm.as_ref().and_then(|s| s.path(peer)) {
        Some(PeerPath::Shm { segment, .. }) => Some(PeerPath::Shm { segment, control }),
        other => other.or(control.map(PeerPath::Nic)),
    }
}

async fn merge(
    tcp: Arc<dyn Transport>,
    shm: Option<Arc<dyn Transport>>,
    via_shm: Arc<Vec<bool>>,
    mut tcp_rx: mpsc::UnboundedReceiver<TransportEvent>,
    mut shm_rx: Option<mpsc::UnboundedReceiver<TransportEvent>>,
    out: mpsc::UnboundedSender<TransportEvent>,
    grace: Duration,
) {
    let n = via_shm.len();
    let mut reported = vec![false; n];
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<u32>();
    let mut tcp_open = true;
    loop {
        let shm_next = async {
            match shm_rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let (ev, from_shm) = tokio::select! {
            e = tcp_rx.recv(), if tcp_open => match e {
                Some(e) => (e, false),
                None => { tcp_open = false; continue; }
            },
            e = shm_next => match e {
                Some(e) => (e, true),
                None => { shm_rx = None; continue; }
            },
            Some(p) = timer_rx.recv() => {
                if !reported[p as usize] {
                    reported[p as usize] = true;
                    let path = shm_path(&tcp, &shm, p, None);
                    let _ = out.send(TransportEvent::PeerClosed { peer: p, reason: CloseReason::Clean, path });
                }
                continue;
            }
        };
        match ev {
            TransportEvent::Message { .. } => {
                if out.send(ev).is_err() {
                    return;
                }
            }
            TransportEvent::PeerClosed { peer, reason, path } => {
                let i = peer as usize;
                if i >= n || reported[i] {
                    continue;
                }
                let path = if via_shm[i] {
                    shm_path(&tcp, &shm, peer, path)
                } else {
                    path
                };
                if via_shm[i] && !from_shm && reason == CloseReason::Clean {
                    // Wait for the ring goodbye, which follows the peer's data.
                    let tx = timer_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        let _ = tx.send(peer);
                    });
                    continue;
                }
                reported[i] = true;
                let _ = out.send(TransportEvent::PeerClosed { peer, reason, path });
            }
        }
        if !tcp_open && shm_rx.is_none() {
            return;
        }
    }
}

impl Transport for HybridTransport {
    fn name(&self) -> &'static str {
        if self.shm.is_some() { "tcp+shm" } else { "tcp" }
    }

    fn send(&self, peer: u32, msg: Message) -> Result<(), TransportError> {
        match &self.shm {
            Some(shm) if self.uses_shm(peer) => shm.send(peer, msg),
            _ => self.tcp.send(peer, msg),
        }
    }

    fn send_on(&self, peer: u32, ifname: &str, msg: Message) -> Result<(), TransportError> {
        match &self.shm {
            Some(shm) if self.uses_shm(peer) => shm.send(peer, msg),
            _ => self.tcp.send_on(peer, ifname, msg),
        }
    }

    fn send_lent(&self, peer: u32, msg: Message) -> Result<(), TransportError> {
        match &self.shm {
            Some(shm) if self.uses_shm(peer) => shm.send_lent(peer, msg),
            _ => self.tcp.send_lent(peer, msg),
        }
    }

    fn withdraw(&self, peer: u32) {
        if let Some(shm) = &self.shm
            && self.uses_shm(peer)
        {
            shm.withdraw(peer);
        }
    }

    fn set_nic_up(&self, ifname: &str, up: bool) {
        self.tcp.set_nic_up(ifname, up);
    }

    fn landing(&self) -> Option<std::sync::Arc<crate::landing::Landing>> {
        self.shm.as_ref().and_then(|s| s.landing())
    }

    /// Shared memory's reader threads deliver directly (TCP's frames are
    /// read by tasks of the engine's own runtime).
    fn set_deliver(&self, hook: crate::Deliver) {
        if let Some(shm) = &self.shm {
            shm.set_deliver(hook);
        }
    }

    /// Polls the shared-memory transport (TCP messages arrive through its
    /// tasks, as events).
    fn set_polling(&self, on: bool) {
        if let Some(shm) = &self.shm {
            shm.set_polling(on);
        }
    }

    fn pause_polling(&self) {
        if let Some(shm) = &self.shm {
            shm.pause_polling();
        }
    }

    fn set_sleeping(&self, on: bool) {
        if let Some(shm) = &self.shm {
            shm.set_sleeping(on);
        }
    }

    fn reader_copying(&self) -> bool {
        self.shm.as_ref().is_some_and(|s| s.reader_copying())
    }

    fn poll(&self, max: usize, f: &mut dyn FnMut(u32, Message)) -> usize {
        match &self.shm {
            Some(shm) => shm.poll(max, f),
            None => 0,
        }
    }

    fn path(&self, peer: u32) -> Option<PeerPath> {
        if self.uses_shm(peer) {
            shm_path(&self.tcp, &self.shm, peer, None)
        } else {
            self.tcp.path(peer)
        }
    }

    fn close(&self, reason: GoodbyeReason) -> BoxFuture {
        let tcp = self.tcp.clone();
        let shm = self.shm.clone();
        Box::pin(async move {
            match (&reason, shm) {
                (_, None) => tcp.close(reason).await,
                (GoodbyeReason::Clean, Some(shm)) => {
                    // Ring goodbyes (after the queued messages) first, then TCP's.
                    let _ = tokio::time::timeout(SHM_CLEAN_CLOSE, shm.close(reason.clone())).await;
                    tcp.close(reason).await;
                }
                (GoodbyeReason::Abort { .. }, Some(shm)) => {
                    let (a, b) = (shm.close(reason.clone()), tcp.close(reason));
                    tokio::join!(a, b);
                }
            }
        })
    }
}
