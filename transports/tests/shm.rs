//! The shared-memory transport in one process: ranks are threads, each with
//! its own `ShmTransport` over real `/dev/shm` segments.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use zccl_transports::handshake::JobSecret;
use zccl_transports::shm::{ShmConfig, ShmSetup, ShmTransport, job_tag};
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
    let job = job();
    let threads: Vec<_> = (0..n)
        .map(|r| {
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::unbounded_channel();
                let t =
                    ShmTransport::establish(setup(r, n, job, ring, Duration::from_secs(10)), tx)
                        .unwrap();
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
    let (_, mut m) = mesh(2, 4096);
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
