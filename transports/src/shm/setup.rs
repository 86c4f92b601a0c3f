//! Bringing a transport up ([`ShmTransport::establish`]): segments created
//! by the lower rank of each pair and opened by the higher one, the names
//! unlinked once both mapped them, CMA probed in both directions, then the
//! links' threads started.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::config::ShmSetup;
use super::cpus::{CpuMask, crowded, shared_cpus_with};
use super::futex::{futex_wait, futex_wake};
use super::link::{Ctx, Link};
use super::recv::reader;
use super::ring::{CMA_NO, CMA_YES, R_CMA_OK, Ring};
use super::segment::{
    CTL, OFF_ATTACHED, OFF_CREATOR_MASK, OFF_CREATOR_PID, OFF_CREATOR_PROBE, OFF_CREATOR_PROBE_VAL,
    OFF_OPENER_MASK, OFF_OPENER_PID, OFF_OPENER_PROBE, OFF_OPENER_PROBE_VAL, Segment,
    create_segment, fit_ring_bytes, prefault_fits, segment_name, shm_free_bytes, try_open_segment,
    valid_tag,
};
use super::send::writer;
use super::transport::ShmTransport;
use super::watch::watcher;
use crate::{TransportError, TransportEvent};

/// A mapped segment during setup: peer, segment, ring bytes, and whether
/// this rank reads the peer's CMA records (the peer's pid, or why not).
type PeerSegment = (u32, Arc<Segment>, u64, Result<u32, String>);

/// Decides whether this rank reads the CMA records of ring `dir` of `seg`
/// (the ring from the peer), probing the peer whose pid and probe word sit
/// at the given header offsets, and publishes the answer in the ring's
/// consumer line. Returns the peer's pid when CMA is on, else why not.
fn cma_accept(
    seg: &Segment,
    dir: usize,
    enabled: bool,
    offs: (usize, usize, usize),
) -> Result<u32, String> {
    let (pid_off, probe_off, val_off) = offs;
    let res = if enabled {
        let pid = seg.u32_at(pid_off).load(Ordering::Acquire);
        let addr = seg.u64_at(probe_off).load(Ordering::Acquire);
        let val = seg.u64_at(val_off).load(Ordering::Acquire);
        crate::cma::probe(pid, addr, val).map(|()| pid)
    } else {
        Err("disabled here (cma_min_bytes = 0)".to_string())
    };
    let flag = if res.is_ok() { CMA_YES } else { CMA_NO };
    seg.u32_at(CTL[dir] + R_CMA_OK)
        .store(flag, Ordering::Release);
    res
}

impl ShmTransport {
    /// Creates, opens and maps the segments of every peer in `setup.peers`,
    /// waits until each peer mapped its side (the names are then unlinked),
    /// probes in both directions whether CMA works, and starts the reader and
    /// writer threads. Blocks until done or `setup.setup_timeout`; every peer
    /// listed must run this concurrently.
    ///
    /// Incoming messages and clean goodbyes are sent on `events`.
    pub fn establish(
        setup: ShmSetup,
        events: mpsc::UnboundedSender<TransportEvent>,
    ) -> Result<Self, TransportError> {
        let deadline = Instant::now() + setup.setup_timeout;
        let rank = setup.rank;
        let cfg = &setup.config;
        let local = setup.peers.len() + 1;
        let cma_on = cfg.cma_min_bytes > 0;
        if cma_on {
            // Before this rank publishes its probe word for the peers.
            match crate::cma::let_siblings_read() {
                Ok(Some(parent)) => debug!(
                    rank,
                    parent,
                    "Yama ptrace_scope 1: parent declared ptracer, so sibling ranks may read this one by CMA"
                ),
                Ok(None) => {}
                Err(e) => warn!(
                    rank,
                    error = %e,
                    "Yama ptrace_scope 1 and prctl(PR_SET_PTRACER) failed: sibling ranks cannot read this one by CMA (large same-host messages go through the ring)"
                ),
            }
        }
        let wanted = (cfg.ring_bytes.max(4096).div_ceil(4096) * 4096) as u64;
        // The rings of the segments this rank creates, sized so that the
        // whole host's fit in /dev/shm (only creators choose; every rank
        // checks, so that where none fit all of them say so at once).
        let cap = match shm_free_bytes() {
            Some(free) if !setup.peers.is_empty() => {
                let local = setup.peers.len() as u64 + 1;
                let cap =
                    fit_ring_bytes(wanted, local, free).map_err(|message| TransportError::Io {
                        context: "/dev/shm".into(),
                        message,
                    })?;
                if cap < wanted {
                    warn!(
                        rank,
                        free_mib = free >> 20,
                        local_ranks = local,
                        ring_kib = cap >> 10,
                        wanted_kib = wanted >> 10,
                        "/dev/shm is small for this many ranks: shared-memory rings shrunk (enlarge /dev/shm, e.g. docker run --shm-size, for full speed)"
                    );
                }
                cap
            }
            _ => wanted,
        };
        let tag_of = |r: u32| -> Result<&str, TransportError> {
            match setup.tags.get(r as usize) {
                Some(Some(t)) if valid_tag(t) => Ok(t.as_str()),
                _ => Err(TransportError::Io {
                    context: format!("shm setup with rank {r}"),
                    message: "rank published no valid shm tag".into(),
                }),
            }
        };
        tag_of(rank)?;
        for &p in &setup.peers {
            if p == rank || p >= setup.world_size {
                return Err(TransportError::NoSuchPeer(p));
            }
            tag_of(p)?;
        }
        let mut segs: Vec<PeerSegment> = Vec::new();
        // 1. Create the segments we own (we are the lower rank).
        for &p in setup.peers.iter().filter(|&&p| p > rank) {
            let name = segment_name(setup.job, tag_of(rank)?, rank, p);
            let seg = create_segment(&name, setup.job, rank, p, cap)?;
            segs.push((p, seg, cap, Err(String::new())));
        }
        // 2. Open the peers' segments, then unlink their names at once.
        for &p in setup.peers.iter().filter(|&&p| p < rank) {
            let name = segment_name(setup.job, tag_of(p)?, p, rank);
            let mut pause = Duration::from_millis(1);
            let (seg, pcap) = loop {
                if let Some(found) = try_open_segment(&name, setup.job, p, rank)? {
                    break found;
                }
                if Instant::now() >= deadline {
                    return Err(TransportError::SetupTimeout {
                        after: setup.setup_timeout,
                        missing: format!("shm segment /dev/shm{name} of rank {p} never appeared"),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            };
            seg.unlink();
            seg.u32_at(OFF_OPENER_PID)
                .store(std::process::id(), Ordering::Relaxed);
            let (probe, val) = crate::cma::probe_word();
            seg.u64_at(OFF_OPENER_PROBE).store(probe, Ordering::Relaxed);
            seg.u64_at(OFF_OPENER_PROBE_VAL)
                .store(val, Ordering::Relaxed);
            CpuMask::own().store(&seg, OFF_OPENER_MASK);
            // We read ring 0 (the creator's, lower rank's, direction).
            let cma = cma_accept(
                &seg,
                0,
                cma_on,
                (OFF_CREATOR_PID, OFF_CREATOR_PROBE, OFF_CREATOR_PROBE_VAL),
            );
            seg.u32_at(OFF_ATTACHED).store(1, Ordering::Release);
            futex_wake(seg.u32_at(OFF_ATTACHED));
            segs.push((p, seg, pcap, cma));
        }
        // 3. Wait until the peers mapped ours (they unlinked the names).
        for (p, seg, _, cma) in segs.iter_mut().filter(|(p, ..)| *p > rank) {
            while seg.u32_at(OFF_ATTACHED).load(Ordering::Acquire) == 0 {
                let now = Instant::now();
                if now >= deadline {
                    return Err(TransportError::SetupTimeout {
                        after: setup.setup_timeout,
                        missing: format!("rank {p} never mapped shm segment /dev/shm{}", seg.name),
                    });
                }
                futex_wait(
                    seg.u32_at(OFF_ATTACHED),
                    0,
                    (deadline - now).min(Duration::from_millis(20)),
                );
            }
            seg.unlinked.store(true, Ordering::Release);
            // We read ring 1 (the opener's direction).
            *cma = cma_accept(
                seg,
                1,
                cma_on,
                (OFF_OPENER_PID, OFF_OPENER_PROBE, OFF_OPENER_PROBE_VAL),
            );
        }
        // Every page of the rings mapped now, not one fault per page on
        // their first lap, where the job's rings on this host are small
        // enough all together (`prefault_fits`, decided from each
        // segment's own ring size, which both of its ranks read alike).
        for (p, seg, pcap, _) in &segs {
            if prefault_fits(local as u64, *pcap)
                && let Err(e) = seg.prefault(out_dir(rank, *p))
            {
                warn!(
                    rank,
                    peer = *p,
                    "could not map the shared-memory rings up front ({e}); their pages fault in as they are used"
                );
            }
        }
        // The CPUs this host's ranks share, from every local rank's
        // affinity mask (the peers wrote theirs before the segment's magic
        // or attach flag we acquired), and so the CMA threshold: lower
        // where the ranks outnumber them (`ShmConfig::cma_min_for`). Ranks
        // may count differently (a quota each sees alone), which is
        // harmless: a receiver handles CMA records of any size.
        let masks: Vec<CpuMask> = std::iter::once(CpuMask::own())
            .chain(segs.iter().map(|(p, seg, ..)| {
                CpuMask::load(
                    seg,
                    if *p > rank {
                        OFF_OPENER_MASK
                    } else {
                        OFF_CREATOR_MASK
                    },
                )
            }))
            .collect();
        let cpus = shared_cpus_with(&masks);
        let cma_min = cfg.cma_min_for(local, cpus);
        let is_crowded = crowded(local, cpus);
        // 4. Start the threads.
        let ctx = Arc::new(Ctx {
            rank,
            events,
            closing: AtomicBool::new(false),
            max_message: cfg.max_message,
            poll_lease: crate::clock::to_ticks(cfg.poll_lease_for(local, cpus)),
            unposted_wait: cfg.unposted_wait,
            wait_slice: cfg.wait_slice,
            watch: Default::default(),
            deliver: std::sync::OnceLock::new(),
            split_copies: !is_crowded,
            reader_copies: std::sync::atomic::AtomicU32::new(0),
            sleepers: std::sync::atomic::AtomicU32::new(0),
            // Ring records from RING_LAND_MIN_BYTES and CMA copies (above
            // cma_min_bytes) land in posted zones; nothing smaller does.
            landing: Arc::new(crate::landing::Landing::with_min_bytes(match cma_min {
                0 => super::recv::RING_LAND_MIN_BYTES,
                c => c.min(super::recv::RING_LAND_MIN_BYTES),
            })),
            #[cfg(test)]
            pause_readers: AtomicBool::new(false),
        });
        let mut links: Vec<Option<Arc<Link>>> = (0..setup.world_size).map(|_| None).collect();
        let mut cma_peers = Vec::new();
        let mut ring_peers = Vec::new();
        for (p, seg, pcap, cma) in segs {
            let (out_dir, in_dir) = (out_dir(rank, p), out_dir(p, rank));
            let (tx, rx) = std::sync::mpsc::channel();
            let (wdone_tx, wdone_rx) = oneshot::channel();
            let (rdone_tx, rdone_rx) = oneshot::channel();
            match &cma {
                Ok(_) => cma_peers.push(p),
                Err(why) => ring_peers.push((p, why.clone())),
            }
            let link = Arc::new(Link {
                peer: p,
                path: format!("/dev/shm{}", seg.name),
                tx: Mutex::new(Some(tx)),
                stop: Arc::new(AtomicBool::new(false)),
                out_ring: Arc::new(Ring::new(seg.clone(), out_dir, pcap, cfg)),
                in_ring: Arc::new(Ring::new(seg, in_dir, pcap, cfg)),
                done: Mutex::new(vec![wdone_rx, rdone_rx]),
                reported: AtomicBool::new(false),
                producer: Mutex::new(()),
                consumer: Mutex::new(()),
                reader_gone: AtomicBool::new(false),
                cma_seen: AtomicU64::new(0),
                stream_choice: Default::default(),
                deferred_at: AtomicU64::new(0),
                deferred_until: AtomicU64::new(0),
                backlog: AtomicUsize::new(0),
                cma_min,
                poll_cma_alone: super::link::poll_cma_alone(is_crowded),
                cma_from: cma.ok(),
                kept: Mutex::new(std::collections::VecDeque::new()),
                cma_sent: AtomicU64::new(0),
                cma_released: AtomicU64::new(0),
            });
            let spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
                std::thread::Builder::new()
                    .name(format!("zccl-shm-{what}{rank}-{p}"))
                    .spawn(f)
                    .map(|_| ())
                    .map_err(|e| TransportError::io(format!("spawn shm {what} thread"), &e))
            };
            let (l, c) = (link.clone(), ctx.clone());
            spawn(
                "w",
                Box::new(move || {
                    writer(&l, &c, rx);
                    drop(wdone_tx);
                }),
            )?;
            let (l, c) = (link.clone(), ctx.clone());
            spawn(
                "r",
                Box::new(move || {
                    reader(&l, &c);
                    drop(rdone_tx);
                }),
            )?;
            debug!(rank, peer = p, path = %link.path, ring_bytes = pcap, cma = link.cma_from.is_some(), "shm link up");
            links[p as usize] = Some(link);
        }
        info!(
            rank,
            peers = ?setup.peers,
            ring_bytes = cap,
            cma_min_bytes = cma_min,
            cma_from = ?cma_peers,
            shared_cpus = cpus,
            poll_lease_us = cfg.poll_lease_for(local, cpus).as_micros(),
            "shm transport ready"
        );
        if !ring_peers.is_empty() {
            let (peers, why): (Vec<u32>, Vec<String>) = ring_peers.into_iter().unzip();
            info!(
                rank,
                peers = ?peers,
                "shm: large messages from these ranks are copied through the ring, not by CMA: {}",
                why[0]
            );
        }
        let live: Vec<Arc<Link>> = links.iter().flatten().cloned().collect();
        if ctx.poll_lease != 0 && !live.is_empty() {
            let (l, c) = (live.clone(), ctx.clone());
            std::thread::Builder::new()
                .name(format!("zccl-shm-lease{rank}"))
                .spawn(move || watcher(&l, &c))
                .map_err(|e| TransportError::io("spawn shm lease watcher thread", &e))?;
        }
        Ok(Self {
            ctx,
            links,
            live,
            poll_next: AtomicUsize::new(0),
            covered: std::sync::atomic::AtomicU32::new(0),
            shared_cpus: cpus,
        })
    }
}

/// The ring of a pair's segment that `rank` writes to `peer`: ring 0
/// carries lower rank -> higher rank, ring 1 the other way.
fn out_dir(rank: u32, peer: u32) -> usize {
    usize::from(rank > peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::config::ShmConfig;
    use crate::shm::testutil::{cfg, pair};

    #[test]
    fn cma_is_probed_in_both_directions() {
        let ((t0, _rx0), (t1, _rx1)) = pair(cfg(), cfg());
        let until = Instant::now() + Duration::from_secs(5);
        // Rank 0's probe of rank 1 may end after rank 1's setup returned.
        while !t1.cma_to(0) {
            assert!(Instant::now() < until);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(t0.cma_to(1) && t0.cma_from(1) && t1.cma_from(0));
        let off = ShmConfig {
            cma_min_bytes: 0,
            ..cfg()
        };
        let ((t0, _rx0), (t1, _rx1)) = pair(cfg(), off);
        assert!(!t0.cma_to(1) && !t1.cma_from(0) && !t1.cma_to(0));
        // Rank 0 still reads rank 1's CMA records; rank 1 sends none.
        assert!(t0.cma_from(1));
    }
}
