//! Making the connections: socket options, accepting (with the handshake
//! and the rate-limited warning for junk connections) and dialing a peer
//! on each of its sockets, then starting the socket's reader and writer.

use super::data::{reader, writer};
use super::*;

pub(super) fn tune_stream(stream: &TcpStream, cfg: &TcpConfig) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!("TCP_NODELAY: {e}");
    }
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(5));
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        debug!("SO_KEEPALIVE: {e}");
    }
    if let Err(e) = sock.set_tcp_user_timeout(Some(cfg.peer_timeout.max(Duration::from_secs(1)))) {
        debug!("TCP_USER_TIMEOUT: {e}");
    }
}

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    nic: Interface,
    listener: tokio::net::TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let sh = shared.clone();
                let nic = nic.clone();
                tokio::spawn(async move {
                    if let Err(why) = accept_one(sh.clone(), &nic, stream, from).await {
                        log_junk(sh.rank, from, &nic.name, &why);
                    }
                });
            }
            Err(e) => {
                warn!(rank = shared.rank, "accept on {}: {e}", nic.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Junk connections: the warning, rate-limited.

/// Warnings in full per source address before they are rate-limited.
const JUNK_WARN_PER_ADDR: u32 = 3;
/// Past those, at most one warning per this interval (it counts the others).
const JUNK_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Source addresses remembered; connections from others are rate-limited.
const JUNK_MAX_ADDRS: usize = 1024;

/// What to log for one dropped incoming connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JunkLog {
    /// The warning.
    Warn,
    /// The warning, with how many were left out since the last one.
    Summary {
        /// Dropped connections logged at debug level only since the last warning.
        left_out: u64,
    },
    /// A debug line only (counted for the next summary).
    Quiet,
}

/// Rate limit of the "dropped incoming connection" warning (a port scanner
/// can open thousands): the first `per_addr` per source address in full,
/// then at most one warning per `every`, which counts those left out.
/// Pure: the time is an argument.
#[derive(Debug)]
struct RateLimiter {
    per_addr: u32,
    every: Duration,
    max_addrs: usize,
    seen: HashMap<IpAddr, u32>,
    left_out: u64,
    last_summary: Option<Instant>,
}

impl RateLimiter {
    fn new(per_addr: u32, every: Duration, max_addrs: usize) -> Self {
        Self {
            per_addr,
            every,
            max_addrs,
            seen: HashMap::new(),
            left_out: 0,
            last_summary: None,
        }
    }

    /// One more dropped connection from `from`, at `now`.
    fn check(&mut self, from: IpAddr, now: Instant) -> JunkLog {
        let known = self.seen.len() < self.max_addrs || self.seen.contains_key(&from);
        let count = if known {
            let n = self.seen.entry(from).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            u32::MAX
        };
        if count <= self.per_addr {
            return JunkLog::Warn;
        }
        if self
            .last_summary
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            self.left_out += 1;
            return JunkLog::Quiet;
        }
        self.last_summary = Some(now);
        JunkLog::Summary {
            left_out: std::mem::take(&mut self.left_out),
        }
    }
}

/// The process's limiter of the junk-connection warning.
static JUNK: std::sync::LazyLock<Mutex<RateLimiter>> = std::sync::LazyLock::new(|| {
    Mutex::new(RateLimiter::new(
        JUNK_WARN_PER_ADDR,
        JUNK_SUMMARY_EVERY,
        JUNK_MAX_ADDRS,
    ))
});

/// Logs a dropped incoming connection, rate-limited ([`RateLimiter`]).
pub(super) fn log_junk(rank: u32, from: SocketAddr, nic: &str, why: &str) {
    let verdict = JUNK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(from.ip(), Instant::now());
    match verdict {
        JunkLog::Warn => warn!(rank, %from, nic, "dropped incoming connection: {why}"),
        JunkLog::Summary { left_out } => warn!(
            rank,
            %from,
            nic,
            "dropped incoming connection: {why} ({left_out} more dropped since the last such warning; \
             past {JUNK_WARN_PER_ADDR} from one address, at most one warning per {}s)",
            JUNK_SUMMARY_EVERY.as_secs()
        ),
        JunkLog::Quiet => debug!(rank, %from, nic, "dropped incoming connection: {why}"),
    }
}

pub(super) async fn accept_one(
    shared: Arc<Shared>,
    nic: &Interface,
    mut stream: TcpStream,
    from: SocketAddr,
) -> Result<(), String> {
    let hs_timeout = shared.cfg.handshake_timeout;
    let hello = read_hello(&mut stream, hs_timeout).await?;
    let mut exp = shared.expectation();
    exp.src_range = Some((shared.rank + 1, shared.world));
    if let Err(e) = validate(&hello, &exp) {
        // A rank of this job (the socket check is the last one) set up
        // with another socket count, while the connections are being set
        // up: answer with ours, so that it knows too, and fail the setup
        // (see `sockets_mismatch`). Once the job runs (the setup's
        // receiver is gone) it is a stray like any other.
        if let Some((count, ours)) = e.socket_count_mismatch()
            && !shared.ready.is_closed()
        {
            let _ = write_hello(&mut stream, &shared.hello_to(hello.src_rank, 0), hs_timeout).await;
            let _ = shared
                .ready
                .send(Err(sockets_mismatch(hello.src_rank, count, ours)));
        }
        return Err(format!("{e} (claimed rank {})", hello.src_rank));
    }
    let peer = hello.src_rank;
    let slot = &shared.peers[peer as usize].sockets[hello.socket_index as usize];
    if slot.claimed.swap(true, Ordering::AcqRel) {
        return Err(format!(
            "duplicate connection for rank {peer} socket {}",
            hello.socket_index
        ));
    }
    if let Err(e) = write_hello(
        &mut stream,
        &shared.hello_to(peer, hello.socket_index),
        hs_timeout,
    )
    .await
    {
        slot.claimed.store(false, Ordering::Release);
        return Err(e);
    }
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let path = NicPath {
        ifname: nic.name.clone(),
        local,
        remote: from,
    };
    start_socket(&shared, peer, hello.socket_index, stream, path);
    Ok(())
}

pub(super) async fn dial(
    shared: Arc<Shared>,
    peer: u32,
    idx: u16,
    local: Interface,
    remote: Endpoint,
    deadline: Instant,
    errs: Arc<Mutex<HashMap<(u32, u16), String>>>,
) {
    let cfg = &shared.cfg;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match dial_once(&shared, peer, idx, &local, &remote).await {
            Ok((stream, path)) => {
                shared.peers[peer as usize].sockets[idx as usize]
                    .claimed
                    .store(true, Ordering::Release);
                start_socket(&shared, peer, idx, stream, path);
                return;
            }
            Err(Dial::Mismatch(why)) => {
                let _ = shared.ready.send(Err(why));
                return;
            }
            Err(Dial::Failed(why)) => {
                debug!(
                    rank = shared.rank,
                    peer, idx, attempt, "dial {} via {}: {why}", remote.addr, local.name
                );
                errs.lock().expect("errors").insert((peer, idx), why);
                if Instant::now() + cfg.handshake_timeout.min(Duration::from_millis(100))
                    >= deadline
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50 + 50 * u64::from(attempt.min(10))))
                    .await;
            }
        }
    }
}

/// Why a dial did not give a connection.
pub(super) enum Dial {
    /// Worth another try until the setup's deadline.
    Failed(String),
    /// The peer uses another number of sockets per peer: fatal.
    Mismatch(String),
}

impl From<String> for Dial {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

pub(super) async fn dial_once(
    shared: &Shared,
    peer: u32,
    idx: u16,
    local: &Interface,
    remote: &Endpoint,
) -> Result<(TcpStream, NicPath), Dial> {
    let cfg = &shared.cfg;
    let sock = match remote.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if let Some(b) = cfg.socket_buffer_bytes {
        let _ = sock.set_send_buffer_size(b as u32);
        let _ = sock.set_recv_buffer_size(b as u32);
    }
    let same_family = matches!(
        (local.addr, remote.addr),
        (IpAddr::V4(_), SocketAddr::V4(_)) | (IpAddr::V6(_), SocketAddr::V6(_))
    );
    if same_family {
        sock.bind(SocketAddr::new(local.addr, 0))
            .map_err(|e| format!("bind to {} {}: {e}", local.name, local.addr))?;
    }
    let mut stream =
        match tokio::time::timeout(cfg.handshake_timeout, sock.connect(remote.addr)).await {
            Err(_) => return Err(Dial::Failed("connect timed out".into())),
            Ok(r) => r.map_err(|e| format!("connect: {e}"))?,
        };
    write_hello(
        &mut stream,
        &shared.hello_to(peer, idx),
        cfg.handshake_timeout,
    )
    .await?;
    let reply = read_hello(&mut stream, cfg.handshake_timeout).await?;
    let mut exp = shared.expectation();
    exp.src_rank = Some(peer);
    if let Err(e) = validate(&reply, &exp) {
        return Err(match e.socket_count_mismatch() {
            Some((count, ours)) => Dial::Mismatch(sockets_mismatch(peer, count, ours)),
            None => Dial::Failed(format!("rank {peer} answered with an invalid hello: {e}")),
        });
    }
    if reply.socket_index != idx {
        return Err(Dial::Failed(format!(
            "rank {peer} answered for socket {} instead of {idx}",
            reply.socket_index
        )));
    }
    let local_addr = stream.local_addr().map_err(|e| e.to_string())?;
    let ifname = if same_family {
        local.name.clone()
    } else {
        "(any)".into()
    };
    Ok((
        stream,
        NicPath {
            ifname,
            local: local_addr,
            remote: remote.addr,
        },
    ))
}

pub(super) fn start_socket(
    shared: &Arc<Shared>,
    peer: u32,
    idx: u16,
    stream: TcpStream,
    path: NicPath,
) {
    tune_stream(&stream, &shared.cfg);
    let slot = &shared.peers[peer as usize].sockets[idx as usize];
    *slot.path.lock().expect("path") = Some(path.clone());
    let rx = slot
        .rx
        .lock()
        .expect("rx")
        .take()
        .expect("socket started twice");
    shared.touch_socket(peer, idx);
    debug!(rank = shared.rank, peer, idx, %path, "socket established");
    let (r, w) = stream.into_split();
    let abort = shared.abort_tx.subscribe();
    shared.spawn(
        true,
        writer(shared.clone(), peer, idx, w, rx, abort, path.clone()),
    );
    shared.spawn(true, reader(shared.clone(), peer, idx, r, path));
    let _ = shared.ready.send(Ok((peer, idx)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_warnings_are_rate_limited() {
        let every = Duration::from_secs(10);
        let mut l = RateLimiter::new(3, every, 2);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // The first three from an address in full, each address on its own.
        for i in 0..3 {
            assert_eq!(l.check(a, at(i)), JunkLog::Warn);
        }
        assert_eq!(l.check(b, at(3)), JunkLog::Warn);
        // Then one summary at once, and silence until `every` has passed.
        assert_eq!(l.check(a, at(4)), JunkLog::Summary { left_out: 0 });
        for i in 0..1000 {
            assert_eq!(l.check(a, at(5 + i)), JunkLog::Quiet);
        }
        assert_eq!(l.check(b, at(2000)), JunkLog::Warn);
        assert_eq!(l.check(b, at(2001)), JunkLog::Warn);
        assert_eq!(l.check(b, at(2002)), JunkLog::Quiet);
        assert_eq!(l.check(a, at(9_999)), JunkLog::Quiet);
        // The next summary counts what was left out.
        assert_eq!(l.check(a, at(10_004)), JunkLog::Summary { left_out: 1002 });
        assert_eq!(l.check(b, at(10_005)), JunkLog::Quiet);
        assert_eq!(l.check(a, at(20_004)), JunkLog::Summary { left_out: 1 });
        // Past `max_addrs` addresses, a new address gets no warnings in full.
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(l.check(c, at(20_005)), JunkLog::Quiet);
        assert_eq!(l.check(c, at(40_000)), JunkLog::Summary { left_out: 1 });
    }

    #[test]
    fn a_flood_logs_a_few_lines() {
        // 1,600 junk connections from one address in a minute: 3 warnings in
        // full, then one per 10 s.
        let mut l = RateLimiter::new(3, Duration::from_secs(10), 1024);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let logged = (0..1600u64)
            .filter(|i| {
                let now = t0 + Duration::from_micros(i * 37_500);
                l.check(a, now) != JunkLog::Quiet
            })
            .count();
        assert_eq!(logged, 3 + 6);
    }
}
