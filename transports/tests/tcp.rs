//! The TCP transport in one process: full mesh, striping, strays, liveness.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use zccl_transports::handshake::JobSecret;
use zccl_transports::ifname::Interface;
use zccl_transports::tcp::{TcpConfig, TcpListeners, TcpSetup, TcpTransport};
use zccl_transports::{
    CloseReason, GoodbyeReason, Message, MessageKind, Transport, TransportError, TransportEvent,
};

fn lo() -> Vec<Interface> {
    vec![Interface {
        name: "lo".into(),
        addr: "127.0.0.1".parse().unwrap(),
    }]
}

fn cfg() -> TcpConfig {
    TcpConfig {
        sockets_per_peer: 3,
        chunk_bytes: 1000,
        heartbeat_interval: Duration::from_millis(50),
        peer_timeout: Duration::from_millis(400),
        handshake_timeout: Duration::from_millis(300),
        ..TcpConfig::default()
    }
}

async fn mesh(
    n: u32,
    secret: JobSecret,
) -> Vec<(TcpTransport, mpsc::UnboundedReceiver<TransportEvent>)> {
    let listeners: Vec<TcpListeners> = (0..n)
        .map(|_| TcpListeners::bind(&lo(), &cfg()).unwrap())
        .collect();
    let peers: Vec<_> = listeners.iter().map(TcpListeners::endpoints).collect();
    let tasks: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(r, l)| {
            let setup = TcpSetup {
                rank: r as u32,
                world_size: n,
                secret,
                peers: peers.clone(),
                config: cfg(),
                setup_timeout: Duration::from_secs(5),
            };
            tokio::spawn(async move {
                let (tx, rx) = mpsc::unbounded_channel();
                (TcpTransport::establish(l, setup, tx).await.unwrap(), rx)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<TransportEvent>) -> TransportEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_messages_arrive_whole() {
    let mut m = mesh(3, JobSecret::from_bytes([1; 16])).await;
    for len in [0usize, 1, 999, 1000, 1001, 12_345, 1 << 20] {
        let payload: Bytes = (0..len)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let msg = Message {
            kind: MessageKind::Data,
            dtype: 6,
            comm: 3,
            channel: 2,
            seq: len as u64,
            payload: payload.clone(),
        };
        m[2].0.send(0, msg.clone()).unwrap();
        match next_event(&mut m[0].1).await {
            TransportEvent::Message { peer, msg: got } => {
                assert_eq!(peer, 2);
                assert_eq!(got, msg);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        m[0].0
            .path(1)
            .unwrap()
            .to_string()
            .starts_with("NIC lo 127.0.0.1:")
    );
    assert!(
        m[0].0
            .send(
                0,
                Message {
                    kind: MessageKind::Data,
                    dtype: 0,
                    comm: 0,
                    channel: 0,
                    seq: 0,
                    payload: Bytes::new()
                }
            )
            .is_err()
    );
    // A clean close is reported as such, once all sockets said goodbye.
    let (t2, _) = m.pop().unwrap();
    tokio::time::timeout(Duration::from_secs(2), t2.close(GoodbyeReason::Clean))
        .await
        .unwrap();
    match next_event(&mut m[0].1).await {
        TransportEvent::PeerClosed {
            peer: 2,
            reason: CloseReason::Clean,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strays_are_dropped_and_aborts_carry_the_cause() {
    let secret = JobSecret::from_bytes([2; 16]);
    let listeners = TcpListeners::bind(&lo(), &cfg()).unwrap();
    let addr = listeners.endpoints()[0].addr;
    // A world of 1: the transport is up at once and keeps rejecting strays.
    let (tx, _rx) = mpsc::unbounded_channel();
    let setup = TcpSetup {
        rank: 0,
        world_size: 1,
        secret,
        peers: vec![vec![]],
        config: cfg(),
        setup_timeout: Duration::from_secs(1),
    };
    let t = TcpTransport::establish(listeners, setup, tx).await.unwrap();
    let strays = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for payload in [
            &b"\x00\x01garbage"[..],
            b"ZCCLHELO but not really a hello at all....",
            b"",
        ] {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(payload).unwrap();
            held.push(s);
        }
        held
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // past the handshake timeout
    drop(strays);
    tokio::time::timeout(
        Duration::from_secs(2),
        t.close(GoodbyeReason::Abort {
            cause_rank: Some(0),
            message: "test".into(),
        }),
    )
    .await
    .unwrap();

    // Two ranks: rank 1 aborts naming rank 5 as the cause; rank 0 learns it.
    let mut m = mesh(2, secret).await;
    let (t1, _) = m.pop().unwrap();
    let close = t1.close(GoodbyeReason::Abort {
        cause_rank: Some(5),
        message: "rank 5 was lost".into(),
    });
    tokio::time::timeout(Duration::from_secs(2), close)
        .await
        .unwrap_or(());
    match next_event(&mut m[0].1).await {
        TransportEvent::PeerClosed {
            peer: 1,
            reason:
                CloseReason::Aborted {
                    cause_rank: Some(5),
                    message,
                },
            ..
        } => {
            assert_eq!(message, "rank 5 was lost");
        }
        other => panic!("{other:?}"),
    }
    // The goodbye stopped rank 0's writers to rank 1. A send racing with that
    // event must say the connection is going (its cause comes with the
    // event), never that rank 0's own transport is closed: the runtime once
    // failed such a send with "transport closed", naming no rank.
    let (t0, _) = &m[0];
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in 0..6 {
        let msg = Message {
            kind: MessageKind::Data,
            dtype: 1,
            comm: 0,
            channel: 0,
            seq,
            payload: Bytes::from_static(b"late"),
        };
        assert_eq!(t0.send(1, msg), Err(TransportError::PeerGone(1)));
    }
}
