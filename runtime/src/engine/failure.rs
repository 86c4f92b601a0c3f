//! Failures: a peer gone (cleanly or not), a local abort, the
//! communicator dropped. A clean close fails the ops with that peer; any
//! other failure fails the communicator, and the transport's close tells
//! the other peers which rank failed.

use tracing::warn;
use zccl_transports::{BoxFuture, CloseReason, GoodbyeReason, PeerPath};

use super::{Engine, Failure, Key, PendingOp, nic_text};
use crate::error::{Error, OpKind};

impl Engine {
    /// A peer is gone. A clean close fails only the ops with that peer; a
    /// failure fails the communicator: returns the failure and the
    /// transport's close (telling the other peers which rank failed), which
    /// the task awaits (bounded) before failing every handle.
    pub(super) fn on_peer_closed(
        &mut self,
        peer: u32,
        reason: CloseReason,
        nic: Option<PeerPath>,
    ) -> Option<(Failure, BoxFuture)> {
        let nic = nic_text(nic);
        let failure = match reason {
            CloseReason::Clean => {
                self.closed_peers.insert(peer);
                let keys: Vec<(OpKind, Key)> = self
                    .sends
                    .keys()
                    .filter(|k| k.2 == peer)
                    .map(|k| (OpKind::Send, *k))
                    .chain(
                        self.recvs
                            .keys()
                            .filter(|k| k.2 == peer)
                            .map(|k| (OpKind::Recv, *k)),
                    )
                    .collect();
                for (kind, key) in keys {
                    if let Some(p) = self.take(kind, key) {
                        let e = Error::PeerClosed {
                            op: p.desc().clone(),
                        };
                        self.finish((p.desc().comm, p.desc().channel), p.index, p.slot, Err(e));
                    }
                }
                return None;
            }
            CloseReason::Aborted {
                cause_rank,
                message,
            } => {
                let failed = cause_rank.unwrap_or(peer);
                let reason = if failed == peer {
                    format!("aborted ({message})")
                } else {
                    format!("failed, as reported by rank {peer}: {message}")
                };
                Failure {
                    failed_rank: Some(failed),
                    reason,
                    nic,
                }
            }
            other => Failure {
                failed_rank: Some(peer),
                reason: other.to_string(),
                nic,
            },
        };
        if self.failure.is_none() {
            warn!(rank = self.rank, failed_rank = ?failure.failed_rank, "communicator failed: rank {:?} {}", failure.failed_rank, failure.reason);
            let msg = format!(
                "rank {} {} (seen by rank {} on {})",
                failure.failed_rank.unwrap_or(peer),
                failure.reason,
                self.rank,
                failure.nic
            );
            // Tell the other peers which rank failed before the handles fail:
            // a process that exits on the error must not leave them a bare EOF.
            self.failure = Some(failure.clone());
            let close = self.transport.close(GoodbyeReason::Abort {
                cause_rank: failure.failed_rank,
                message: msg,
            });
            return Some((failure, close));
        }
        None
    }

    pub(super) fn fail_all(&mut self, f: Failure) {
        self.failure = Some(f.clone());
        if let Some(r) = self.router.as_mut() {
            r.clear();
        }
        self.held.clear();
        self.rts.clear();
        let mut all: Vec<PendingOp> = self
            .sends
            .drain()
            .map(|(_, p)| p)
            .chain(self.recvs.drain().map(|(_, p)| p))
            .collect();
        all.sort_by_key(|p| (p.desc().comm, p.desc().channel, p.index));
        self.earliest = None;
        for p in all {
            let e = self.failure_error(&f, p.desc());
            self.finish((p.desc().comm, p.desc().channel), p.index, p.slot, Err(e));
        }
    }

    /// `abort()`: like a failure of this rank (see [`Engine::on_peer_closed`]).
    pub(super) fn abort(&mut self, reason: String) -> Option<(Failure, BoxFuture)> {
        if self.failure.is_some() {
            return None;
        }
        let failure = Failure {
            failed_rank: None,
            reason: reason.clone(),
            nic: String::new(),
        };
        self.failure = Some(failure.clone());
        let close = self.transport.close(GoodbyeReason::Abort {
            cause_rank: Some(self.rank),
            message: format!("rank {} aborted its communicator: {reason}", self.rank),
        });
        Some((failure, close))
    }

    /// The communicator is dropped: pending ops fail, connections close
    /// cleanly (the returned future, awaited bounded by the task).
    pub(super) fn shutdown(&mut self, reason: &str) -> Option<BoxFuture> {
        if self.failure.is_some() {
            return None;
        }
        self.fail_all(Failure {
            failed_rank: None,
            reason: reason.into(),
            nic: String::new(),
        });
        Some(self.transport.close(GoodbyeReason::Clean))
    }
}
