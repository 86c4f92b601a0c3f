//! The shared-memory transport in one process: ranks are threads, each with
//! its own `ShmTransport` over real `/dev/shm` segments (CMA reads this
//! process's own memory, which is always allowed).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use zccl_transports::handshake::JobSecret;
use zccl_transports::shm::{
    CMA_MIN_BYTES, CROWDED_CMA_MIN_BYTES, POLL_MAX_PAYLOAD, ShmConfig, ShmSetup, ShmTransport,
    job_tag,
};
use zccl_transports::{
    CloseReason, GoodbyeReason, Message, MessageKind, PeerPath, Transport, TransportError,
    TransportEvent,
};

type Rank = (ShmTransport, mpsc::UnboundedReceiver<TransportEvent>);

/// A job id unique to this test process and call.
fn job() -> u64 {
    static N: AtomicU8 = AtomicU8::new(0);
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&std::process::id().to_le_bytes());
    b[4] = N.fetch_add(1, Ordering::Relaxed);
    job_tag(&JobSecret::from_bytes(b))
}

fn setup(rank: u32, n: u32, job: u64, ring: usize, timeout: Duration) -> ShmSetup {
    ShmSetup {
        rank,
        world_size: n,
        job,
        tags: (0..n).map(|r| Some(format!("t{r}"))).collect(),
        peers: (0..n).filter(|&p| p != rank).collect(),
        config: ShmConfig {
            ring_bytes: ring,
            max_message: 64 << 20,
            ..ShmConfig::default()
        },
        setup_timeout: timeout,
    }
}

fn mesh(n: u32, ring: usize) -> (u64, Vec<Rank>) {
    mesh_with(n, ring, |_, _| {})
}

/// Like `mesh`, with `tweak(rank, config)` applied to each rank's config.
fn mesh_with(
    n: u32,
    ring: usize,
    tweak: impl Fn(u32, &mut ShmConfig) + Copy + Send + 'static,
) -> (u64, Vec<Rank>) {
    let job = job();
    let threads: Vec<_> = (0..n)
        .map(|r| {
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::unbounded_channel();
                let mut s = setup(r, n, job, ring, Duration::from_secs(10));
                tweak(r, &mut s.config);
                let t = ShmTransport::establish(s, tx).unwrap();
                (t, rx)
            })
        })
        .collect();
    (
        job,
        threads.into_iter().map(|t| t.join().unwrap()).collect(),
    )
}

fn segments_of(job: u64) -> Vec<String> {
    let prefix = format!("zccl-{job:016x}-");
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn next(rx: &mut mpsc::UnboundedReceiver<TransportEvent>) -> TransportEvent {
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

fn payload(src: u32, dst: u32, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u32 ^ (src * 31) ^ (dst * 7) ^ (i as u32 >> 8)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn msg(kind: MessageKind, seq: u64, payload: Bytes) -> Message {
    Message {
        kind,
        dtype: 6,
        comm: 11,
        channel: 4,
        seq,
        payload,
    }
}

#[test]
fn messages_of_every_size_stream_through_a_small_ring_in_order() {
    let (job, mut m) = mesh(3, 4096);
    // Names are unlinked as soon as both sides mapped them.
    assert_eq!(segments_of(job), Vec::<String>::new());
    let sizes = [0usize, 1, 4095, 4096, 4097, 100_000, (1 << 20) + 3];
    std::thread::scope(|s| {
        for (r, (t, _)) in m.iter().enumerate() {
            s.spawn(move || {
                for p in (0..3u32).filter(|&p| p != r as u32) {
                    for (i, &len) in sizes.iter().enumerate() {
                        t.send(
                            p,
                            msg(MessageKind::Data, i as u64, payload(r as u32, p, len)),
                        )
                        .unwrap();
                    }
                    t.send(p, msg(MessageKind::Control, 99, Bytes::from_static(b"ack")))
                        .unwrap();
                }
            });
        }
    });
    for (r, (_, rx)) in m.iter_mut().enumerate() {
        let mut next_seq = [0u64; 3];
        for _ in 0..2 * (sizes.len() + 1) {
            match next(rx) {
                TransportEvent::Message { peer, msg: got } => {
                    let i = next_seq[peer as usize];
                    next_seq[peer as usize] += 1;
                    if i as usize == sizes.len() {
                        assert_eq!(
                            got,
                            msg(MessageKind::Control, 99, Bytes::from_static(b"ack"))
                        );
                    } else {
                        let want = msg(
                            MessageKind::Data,
                            i,
                            payload(peer, r as u32, sizes[i as usize]),
                        );
                        assert!(got == want, "rank {r}: message {i} from {peer} differs");
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // Paths name the (former) segment.
    match m[0].0.path(2) {
        Some(PeerPath::Shm { segment, .. }) => {
            assert!(
                segment.starts_with("/dev/shm/zccl-") && segment.ends_with("-0-2"),
                "{segment}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        m[0].0.send(0, msg(MessageKind::Data, 0, Bytes::new())),
        Err(TransportError::NoSuchPeer(0))
    ));
}

#[test]
fn clean_goodbye_comes_after_the_data() {
    let (_, mut m) = mesh(2, 8192);
    let (t1, mut rx1) = m.pop().unwrap();
    let (t0, _rx0) = m.pop().unwrap();
    for i in 0..3u64 {
        t0.send(1, msg(MessageKind::Data, i, payload(0, 1, 30_000)))
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), t0.close(GoodbyeReason::Clean))
            .await
            .unwrap()
    });
    assert!(t0.send(1, msg(MessageKind::Data, 9, Bytes::new())).is_err());
    for i in 0..3u64 {
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: got } => assert_eq!(got.seq, i),
            other => panic!("{other:?}"),
        }
    }
    match next(&mut rx1) {
        TransportEvent::PeerClosed {
            peer: 0,
            reason: CloseReason::Clean,
            path: Some(PeerPath::Shm { .. }),
        } => {}
        other => panic!("{other:?}"),
    }
    drop(t1);
}

#[test]
fn abort_is_prompt_even_with_a_writer_blocked_on_a_full_ring() {
    // Without CMA: the 1 MiB message goes through the ring.
    let (_, mut m) = mesh_with(2, 4096, |_, c| c.cma_min_bytes = 0);
    let (t1, rx1) = m.pop().unwrap();
    let (t0, _rx0) = m.pop().unwrap();
    // Rank 1 goes away: nobody drains the ring towards it any more.
    drop((t1, rx1));
    std::thread::sleep(Duration::from_millis(100));
    t0.send(1, msg(MessageKind::Data, 0, payload(0, 1, 1 << 20)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(2),
            t0.close(GoodbyeReason::Abort {
                cause_rank: Some(1),
                message: "test".into(),
            }),
        )
        .await
        .expect("abort finishes")
    });
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn setup_times_out_naming_the_peer_and_leaves_no_segment() {
    let job = job();
    let (tx, _rx) = mpsc::unbounded_channel();
    // Rank 0 creates the segment; rank 1 never comes.
    let t0 = Instant::now();
    let e = ShmTransport::establish(setup(0, 2, job, 4096, Duration::from_millis(300)), tx)
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    let s = e.to_string();
    assert!(
        s.contains("rank 1 never mapped shm segment /dev/shm/zccl-"),
        "{s}"
    );
    assert_eq!(segments_of(job), Vec::<String>::new());
    // Rank 1 waits for a segment that never appears.
    let (tx, _rx) = mpsc::unbounded_channel();
    let e = ShmTransport::establish(setup(1, 2, job, 4096, Duration::from_millis(200)), tx)
        .unwrap_err();
    assert!(e.to_string().contains("of rank 0 never appeared"), "{e}");
}

#[test]
fn a_rank_without_a_tag_is_refused() {
    let mut s = setup(0, 2, job(), 4096, Duration::from_millis(100));
    s.tags[1] = Some("bad/tag".into());
    let (tx, _rx) = mpsc::unbounded_channel();
    let e = ShmTransport::establish(s, tx).unwrap_err();
    assert!(e.to_string().contains("rank 1"), "{e}");
}

/// A payload that says when its memory is freed.
struct Tracked {
    data: Vec<u8>,
    freed: Arc<AtomicBool>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.freed.store(true, Ordering::Release);
    }
}

fn tracked(src: u32, dst: u32, len: usize) -> (Bytes, Arc<AtomicBool>) {
    let freed = Arc::new(AtomicBool::new(false));
    let t = Tracked {
        data: payload(src, dst, len).to_vec(),
        freed: freed.clone(),
    };
    (Bytes::from_owner(t), freed)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn large_messages_go_by_cma_in_order_and_are_released_once_copied() {
    let (_, mut m) = mesh(2, 64 << 10);
    let (t1, mut rx1) = m.pop().unwrap();
    let (t0, _rx0) = m.pop().unwrap();
    wait_for("CMA agreed", || t0.cma_to(1) && t1.cma_to(0));
    // Sizes around the threshold, one far above the ring, small ones between.
    let min = ShmConfig::default().cma_min_bytes;
    let sizes = [min - 1, 16, min, 3, 5 << 20, 0, min + 1, 33 << 20];
    let mut freed = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let (b, f) = tracked(0, 1, len);
        freed.push(f);
        t0.send(1, msg(MessageKind::Data, i as u64, b)).unwrap();
    }
    for (i, &len) in sizes.iter().enumerate() {
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: got } => {
                assert!(
                    got == msg(MessageKind::Data, i as u64, payload(0, 1, len)),
                    "message {i} ({len} B) differs"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // Every payload is freed once copied: ring messages at once, CMA ones
    // when rank 1's copy count reaches rank 0's reader thread.
    wait_for("payloads freed", || {
        freed.iter().all(|f| f.load(Ordering::Acquire))
    });
    // The other direction too.
    let (b, f) = tracked(1, 0, 1 << 20);
    t1.send(0, msg(MessageKind::Data, 7, b)).unwrap();
    let mut rx0 = _rx0;
    match next(&mut rx0) {
        TransportEvent::Message { peer: 1, msg: got } => {
            assert!(got == msg(MessageKind::Data, 7, payload(1, 0, 1 << 20)))
        }
        other => panic!("{other:?}"),
    }
    wait_for("payload freed", || f.load(Ordering::Acquire));
}

#[test]
fn cma_off_on_either_side_keeps_the_ring_copy() {
    for off in [0u32, 1] {
        let (_, mut m) = mesh_with(2, 64 << 10, move |r, c| {
            if r == off {
                c.cma_min_bytes = 0;
            }
        });
        let (t1, mut rx1) = m.pop().unwrap();
        let (t0, _rx0) = m.pop().unwrap();
        assert!(!t0.cma_to(1) && !t1.cma_to(0));
        assert_eq!(t1.cma_from(0), off != 1);
        let (b, f) = tracked(0, 1, 2 << 20);
        t0.send(1, msg(MessageKind::Data, 1, b)).unwrap();
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: got } => {
                assert!(got == msg(MessageKind::Data, 1, payload(0, 1, 2 << 20)))
            }
            other => panic!("{other:?}"),
        }
        // Copied through the ring: freed without any release.
        wait_for("payload freed", || f.load(Ordering::Acquire));
    }
}

#[test]
fn a_payload_nobody_copies_is_kept_and_an_abort_withdraws_and_frees_it() {
    let (_, mut m) = mesh(2, 64 << 10);
    let (t1, rx1) = m.pop().unwrap();
    let (t0, _rx0) = m.pop().unwrap();
    wait_for("CMA agreed", || t0.cma_to(1));
    // Rank 1 goes away without reading. (Its reader threads stop on their
    // own, unjoined: give them time to, or one still running could copy the
    // payload below and rightly free it.)
    drop((t1, rx1));
    std::thread::sleep(Duration::from_millis(100));
    let (b, freed) = tracked(0, 1, 1 << 20);
    t0.send(1, msg(MessageKind::Data, 0, b)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!freed.load(Ordering::Acquire), "freed while it may be read");
    // An abort does not wait for the peer: it marks the ring withdrawn (a
    // peer still copying rejects the copy, so memory this process reuses is
    // never read as message data) and frees the payload.
    let t = Instant::now();
    block_on(t0.close(GoodbyeReason::Abort {
        cause_rank: Some(1),
        message: "test".into(),
    }));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(freed.load(Ordering::Acquire), "kept after an abort");
    drop(t0);
}

#[test]
fn a_clean_close_waits_until_the_peer_copied_the_payloads() {
    let (_, mut m) = mesh(2, 64 << 10);
    let (t1, mut rx1) = m.pop().unwrap();
    let (t0, _rx0) = m.pop().unwrap();
    wait_for("CMA agreed", || t0.cma_to(1));
    let mut freed = Vec::new();
    for i in 0..4u64 {
        let (b, f) = tracked(0, 1, 3 << 20);
        freed.push(f);
        t0.send(1, msg(MessageKind::Data, i, b)).unwrap();
    }
    block_on(async {
        tokio::time::timeout(Duration::from_secs(5), t0.close(GoodbyeReason::Clean))
            .await
            .unwrap()
    });
    // Everything was copied (the close waited for it) and freed.
    assert!(freed.iter().all(|f| f.load(Ordering::Acquire)));
    for i in 0..4u64 {
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: got } => {
                assert!(got == msg(MessageKind::Data, i, payload(0, 1, 3 << 20)))
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        next(&mut rx1),
        TransportEvent::PeerClosed {
            peer: 0,
            reason: CloseReason::Clean,
            ..
        }
    ));
    drop(t1);
}

/// Message `seq` of the stress test: mostly tiny, some of 300 KiB (larger
/// than the test's 64 KiB rings: streamed through them, never whole there,
/// the reader thread's; the data ones go by CMA instead where the 3 ranks
/// outnumber the CPUs), a few large enough for CMA on any host (data). The
/// first 8 bytes carry `seq`.
fn stress_msg(src: u32, seq: u64) -> Message {
    let cma = seq % 4999 == 17;
    let len = if cma {
        CMA_MIN_BYTES + (44 << 10)
    } else if seq % 997 == 5 {
        300 << 10
    } else {
        8 + (seq % 57) as usize
    };
    let mut p = payload(src, 0, len).to_vec();
    p[..8].copy_from_slice(&seq.to_le_bytes());
    let kind = if seq.is_multiple_of(5) && !cma {
        MessageKind::Control
    } else {
        MessageKind::Data
    };
    msg(kind, seq, p.into())
}

#[test]
fn polls_racing_the_reader_threads_deliver_each_message_once_in_order() {
    const N: u64 = 50_000;
    let (_, mut m) = mesh(3, 64 << 10);
    let (t2, _rx2) = m.pop().unwrap();
    let (t1, _rx1) = m.pop().unwrap();
    let (t0, mut rx0) = m.pop().unwrap();
    // (peer, seq) in delivery order, per path.
    let polled = Mutex::new(Vec::<(u32, u64)>::new());
    let mut evented = Vec::<(u32, u64)>::new();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (src, t) in [(1u32, &t1), (2, &t2)] {
            s.spawn(move || {
                for seq in 0..N {
                    t.send(0, stress_msg(src, seq)).unwrap();
                }
            });
        }
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Ordering::Acquire) {
                    let n = t0.poll(16, &mut |peer, got| {
                        // Records whole in the 64 KiB ring, and CMA records
                        // (from 256 KiB where the 3 ranks outnumber the CPUs).
                        let len = got.payload.len();
                        assert!(
                            len < (64 << 10) || len >= CROWDED_CMA_MIN_BYTES.min(CMA_MIN_BYTES),
                            "{len}"
                        );
                        assert!(got == stress_msg(peer, got.seq), "{peer}/{}", got.seq);
                        polled.lock().unwrap().push((peer, got.seq));
                    });
                    if n == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        }
        // Stops the pollers even if an assertion below fails.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _done = Done(&done);
        let until = Instant::now() + Duration::from_secs(120);
        while (evented.len() + polled.lock().unwrap().len()) < 2 * N as usize {
            assert!(Instant::now() < until, "messages missing after 120 s");
            match rx0.try_recv() {
                Ok(TransportEvent::Message { peer, msg: got }) => {
                    assert!(got == stress_msg(peer, got.seq), "{peer}/{}", got.seq);
                    evented.push((peer, got.seq));
                }
                Ok(other) => panic!("{other:?}"),
                Err(_) => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    });
    let polled = polled.into_inner().unwrap();
    for peer in [1u32, 2] {
        let mut seen = vec![0u8; N as usize];
        for path in [&polled, &evented] {
            let seqs: Vec<u64> = path
                .iter()
                .filter(|(p, _)| *p == peer)
                .map(|(_, s)| *s)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "out of order from {peer}"
            );
            for s in seqs {
                seen[s as usize] += 1;
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "from {peer}: lost or duplicated"
        );
    }
    assert!(rx0.try_recv().is_err(), "nothing beyond");
    // Large ring messages are never polled (CMA ones may be); polls did
    // take part.
    assert!(polled.iter().all(|(p, s)| {
        let len = stress_msg(*p, *s).payload.len();
        len <= POLL_MAX_PAYLOAD || len >= CMA_MIN_BYTES
    }));
    eprintln!(
        "polled {} of {} messages, {} as events",
        polled.len(),
        2 * N,
        evented.len()
    );
    assert!(!polled.is_empty());
}

/// While a consumer thread polls ([`Transport::set_polling`]), producers
/// skip waking its reader thread for small records; a poller that stops
/// must wake the reader for anything left. With the reader's periodic
/// wake-up (`wait_slice`) pushed out to a minute, one lost wake-up strands
/// a message for that long. Each round: the poller starts, a message is
/// sent while the reader sleeps, the poller stops without polling; the
/// reader must deliver it. Then the same with a poller that races the
/// sender.
#[test]
fn a_poller_that_stops_never_strands_a_message() {
    let (_, mut m) = mesh_with(2, 64 << 10, |_, c| {
        c.wait_slice = Duration::from_secs(60);
    });
    let (t1, _rx1) = m.pop().unwrap();
    let (t0, mut rx0) = m.pop().unwrap();
    let deliver = |rx: &mut mpsc::UnboundedReceiver<TransportEvent>, seq: u64| {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.try_recv() {
                Ok(TransportEvent::Message { msg: got, .. }) => {
                    assert_eq!(got.seq, seq);
                    return;
                }
                Ok(other) => panic!("{other:?}"),
                Err(_) => {
                    assert!(
                        Instant::now() < until,
                        "message {seq} stranded: the reader was not woken"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    };
    for seq in 0..100u64 {
        t0.set_polling(true);
        // Let the reader thread finish spinning and sleep.
        std::thread::sleep(Duration::from_millis(2));
        t1.send(0, msg(MessageKind::Data, seq, payload(1, 0, 16)))
            .unwrap();
        t0.set_polling(false);
        deliver(&mut rx0, seq);
    }
    // The stop racing the send.
    for seq in 100..2100u64 {
        std::thread::scope(|s| {
            s.spawn(|| {
                t0.set_polling(true);
                std::hint::spin_loop();
                t0.set_polling(false);
            });
            t1.send(0, msg(MessageKind::Data, seq, payload(1, 0, 16)))
                .unwrap();
        });
        deliver(&mut rx0, seq);
    }
}
