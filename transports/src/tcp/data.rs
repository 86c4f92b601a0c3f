//! The data path: each socket's writer (frames, chunks, heartbeats,
//! goodbye) and reader (reassembly into whole messages, delivery), and the
//! monitor that reports a peer silent past `peer_timeout`.

use super::*;

// ---------------------------------------------------------------------------
// Data path.

pub(super) async fn write_frame(
    w: &mut OwnedWriteHalf,
    h: &FrameHeader,
    payload: &[u8],
) -> std::io::Result<()> {
    // Header and payload leave in one `writev`: no copy, and no separate
    // 40-byte segment ahead of every chunk (`TCP_NODELAY` is set).
    let head = h.encode();
    let (mut head_off, mut pay_off) = (0, 0);
    while pay_off < payload.len() || head_off < head.len() {
        let bufs = [
            std::io::IoSlice::new(&head[head_off..]),
            std::io::IoSlice::new(&payload[pay_off..]),
        ];
        let n = w.write_vectored(&bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len() - head_off);
        head_off += from_head;
        pay_off += n - from_head;
    }
    Ok(())
}

pub(super) async fn write_goodbye(w: &mut OwnedWriteHalf, reason: &GoodbyeReason) {
    let payload = reason.encode();
    let h = FrameHeader::single(FrameKind::Goodbye, payload.len() as u32);
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = write_frame(w, &h, &payload).await;
        let _ = w.shutdown().await;
    })
    .await;
}

pub(super) async fn writer(
    shared: Arc<Shared>,
    peer: u32,
    idx: u16,
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    mut abort: watch::Receiver<Option<GoodbyeReason>>,
    path: NicPath,
) {
    let slot = &shared.peers[peer as usize].sockets[idx as usize];
    let hb = shared.cfg.heartbeat_interval;
    loop {
        let out = tokio::select! {
            biased;
            r = abort.changed() => {
                let reason = abort.borrow().clone();
                if let (Ok(()), Some(reason)) = (r, reason) {
                    write_goodbye(&mut w, &reason).await;
                }
                return;
            }
            _ = slot.stop.notified() => {
                // The peer said goodbye on this socket: finish our half.
                let _ = tokio::time::timeout(Duration::from_millis(500), w.shutdown()).await;
                return;
            }
            o = rx.recv() => o,
            _ = tokio::time::sleep(hb) => Some(Out::Frame(FrameHeader::single(FrameKind::Heartbeat, 0), Bytes::new())),
        };
        match out {
            None => return,
            Some(Out::Goodbye(reason)) => {
                write_goodbye(&mut w, &reason).await;
                return;
            }
            Some(Out::Frame(h, payload)) => {
                let mut write = Box::pin(write_frame(&mut w, &h, &payload));
                let res = tokio::select! {
                    biased;
                    _ = abort.changed() => {
                        // Abort mid-frame: finish the frame in flight (bounded, and
                        // within the engine's close notice) so that the goodbye
                        // naming the cause can follow it. If it cannot, the peer
                        // sees a bare EOF here and waits for the goodbye on our
                        // other sockets before blaming this rank.
                        let finished = matches!(
                            tokio::time::timeout(Duration::from_millis(250), &mut write).await,
                            Ok(Ok(()))
                        );
                        drop(write);
                        let reason = abort.borrow().clone();
                        if let (true, Some(reason)) = (finished, reason) {
                            write_goodbye(&mut w, &reason).await;
                        }
                        return;
                    }
                    r = &mut write => r,
                };
                if h.kind == FrameKind::Data {
                    metrics::Metrics::global()
                        .nic_inflight_add(&path.ifname, -(payload.len() as i64));
                }
                if res.is_ok() && h.kind == FrameKind::Data {
                    metrics::Metrics::global().nic_transmit(
                        &path.ifname,
                        None,
                        payload.len() as u64,
                    );
                }
                if let Err(e) = res {
                    // The reader of this socket sees the same failure after
                    // the bytes already queued for it, which may hold the
                    // peer's goodbye naming the real cause: let it win.
                    drop(rx);
                    shared
                        .report_lost(
                            peer,
                            format!("send failed on socket {idx}: {e}"),
                            path,
                            false,
                        )
                        .await;
                    return;
                }
            }
        }
    }
}

pub(super) async fn reader(
    shared: Arc<Shared>,
    peer: u32,
    idx: u16,
    mut r: OwnedReadHalf,
    path: NicPath,
) {
    let limits = shared.cfg.limits;
    let ps = &shared.peers[peer as usize];
    let lost = |why: String| shared.report(peer, CloseReason::Lost(why), Some(path.clone()));
    loop {
        let mut hb = [0u8; FRAME_HEADER_LEN];
        if let Err(e) = r.read_exact(&mut hb).await {
            let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("connection closed without goodbye on socket {idx}")
            } else {
                format!("receive failed on socket {idx}: {e}")
            };
            shared.report_lost(peer, why, path, true).await;
            return;
        }
        if shared.closing.load(Ordering::Acquire) {
            // Draining until the peer closes its half; content is irrelevant.
            let h = FrameHeader::decode(&hb, &limits);
            let Ok(h) = h else { return };
            let mut sink = vec![0u8; (h.chunk_len as usize).min(1 << 20)];
            let mut left = h.chunk_len as usize;
            while left > 0 {
                let n = left.min(sink.len());
                if r.read_exact(&mut sink[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
            continue;
        }
        let h = match FrameHeader::decode(&hb, &limits) {
            Ok(h) => h,
            Err(e) => {
                lost(format!("protocol error on socket {idx}: {e}"));
                return;
            }
        };
        shared.touch_socket(peer, idx);
        let whole = h.offset == 0 && u64::from(h.chunk_len) == h.total_len;
        let data = matches!(h.kind, FrameKind::Data | FrameKind::Control);
        if data && !whole {
            // One chunk of a larger message: straight into its buffer.
            let key = (h.kind as u8, h.comm, h.channel, h.seq);
            let (off, len) = (h.offset, u64::from(h.chunk_len));
            let (dst, fresh) = {
                let mut map = ps.reasm.lock().expect("reassembly");
                let part = map.entry(key).or_insert_with(|| {
                    let (buf, fresh) = RecvBuf::new_lazy(h.total_len as usize);
                    Partial {
                        buf,
                        fresh,
                        received: 0,
                        dtype: h.dtype,
                        claimed: BTreeMap::new(),
                    }
                });
                let overlaps = part
                    .claimed
                    .range(..off + len.max(1))
                    .next_back()
                    .is_some_and(|(_, &end)| end > off)
                    || part.claimed.contains_key(&off);
                if part.dtype != h.dtype || part.buf.len() as u64 != h.total_len || overlaps {
                    drop(map);
                    lost(format!(
                        "inconsistent chunks for comm {} channel {} seq {}",
                        h.comm, h.channel, h.seq
                    ));
                    return;
                }
                part.claimed.insert(off, off + len);
                // SAFETY: `off + len <= total_len` (checked by the decoder).
                let dst = unsafe { part.buf.as_mut_ptr().add(off as usize) };
                (ChunkDst(dst), part.fresh)
            };
            // SAFETY: the range is claimed by this reader alone, initialised,
            // and stays allocated until every claimed range is complete (so
            // it may also be faulted in, overwriting it).
            let chunk = unsafe {
                if fresh {
                    crate::recvbuf::prefault_range(dst.0, len as usize);
                }
                std::slice::from_raw_parts_mut(dst.0, len as usize)
            };
            if let Err(e) = r.read_exact(chunk).await {
                let why = format!("receive failed mid-frame on socket {idx}: {e}");
                shared.report_lost(peer, why, path, true).await;
                return;
            }
            if h.kind == FrameKind::Data {
                metrics::Metrics::global().nic_receive(&path.ifname, None, len);
            }
            shared.touch_socket(peer, idx);
            let done = {
                let mut map = ps.reasm.lock().expect("reassembly");
                let part = map.get_mut(&key).expect("claimed partial");
                part.received += len;
                if part.received >= h.total_len {
                    map.remove(&key).map(|p| p.buf.into_bytes())
                } else {
                    None
                }
            };
            if let Some(payload) = done {
                deliver(&shared, peer, &h, payload);
            }
            continue;
        }
        let mut payload = RecvBuf::new(h.chunk_len as usize);
        if let Err(e) = r.read_exact(payload.as_mut_slice()).await {
            let why = format!("receive failed mid-frame on socket {idx}: {e}");
            shared.report_lost(peer, why, path, true).await;
            return;
        }
        shared.touch_socket(peer, idx);
        match h.kind {
            FrameKind::Heartbeat => {}
            FrameKind::Goodbye => {
                match GoodbyeReason::decode(payload.as_slice()) {
                    Some(GoodbyeReason::Clean) => {
                        ps.sockets[idx as usize].stop.notify_one();
                        let closed = ps.clean_closed.fetch_add(1, Ordering::AcqRel) + 1;
                        if closed == ps.sockets.len() {
                            shared.report(peer, CloseReason::Clean, Some(path.clone()));
                        }
                    }
                    Some(GoodbyeReason::Abort {
                        cause_rank,
                        message,
                    }) => {
                        // The peer reads no more: finish our half of this socket too.
                        ps.sockets[idx as usize].stop.notify_one();
                        shared.report(
                            peer,
                            CloseReason::Aborted {
                                cause_rank,
                                message,
                            },
                            Some(path.clone()),
                        );
                    }
                    None => lost(format!("malformed goodbye on socket {idx}")),
                }
                return;
            }
            FrameKind::Bootstrap => {
                lost(format!("unexpected bootstrap frame on data socket {idx}"));
                return;
            }
            FrameKind::Data | FrameKind::Control => {
                if h.kind == FrameKind::Data {
                    metrics::Metrics::global().nic_receive(
                        &path.ifname,
                        None,
                        u64::from(h.chunk_len),
                    );
                }
                deliver(&shared, peer, &h, payload.into_bytes());
            }
        }
    }
}

pub(super) fn deliver(shared: &Shared, peer: u32, h: &FrameHeader, payload: Bytes) {
    let kind = if h.kind == FrameKind::Data {
        MessageKind::Data
    } else {
        MessageKind::Control
    };
    let msg = Message {
        kind,
        dtype: h.dtype,
        comm: h.comm,
        channel: h.channel,
        seq: h.seq,
        payload,
    };
    let _ = shared.events.send(TransportEvent::Message { peer, msg });
}

pub(super) async fn monitor(shared: Arc<Shared>) {
    let tick = (shared.cfg.heartbeat_interval / 2).max(Duration::from_millis(10));
    let limit = shared.cfg.peer_timeout.as_millis() as u64;
    loop {
        tokio::time::sleep(tick).await;
        let now = shared.now_ms();
        for (p, st) in shared.peers.iter().enumerate() {
            if p as u32 == shared.rank || st.reported.load(Ordering::Acquire) {
                continue;
            }
            let silent = now.saturating_sub(st.last_heard_ms.load(Ordering::Relaxed));
            if silent > limit {
                let nic = shared.first_path(p as u32);
                metrics::Metrics::global().peer_timeout();
                shared.report(
                    p as u32,
                    CloseReason::Stuck {
                        silent_for: Duration::from_millis(silent),
                    },
                    nic,
                );
            }
        }
    }
}
