//! Rendezvous through a root: every rank registers its [`PeerInfo`] (host
//! identity, pid, one listening endpoint per NIC) with the root, which answers
//! each rank with the whole [`AddressBook`] once all `world_size` ranks have
//! registered.
//!
//! Protocol over one TCP connection per rank: `Hello` both ways (purpose
//! `Bootstrap`, the job secret, rank → [`ROOT_RANK`]), then one `Bootstrap`
//! frame rank → root (JSON [`PeerInfo`]) and one root → rank (JSON reply: the
//! book, or an error naming the ranks that never registered). Every read has
//! a timeout and every frame a bounded length; a connection that fails the
//! handshake (scanner, random bytes, another job, silence) is logged and
//! dropped without affecting the rendezvous.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zccl_transports::frame::{FrameKind, FrameLimits};
use zccl_transports::handshake::{
    Expectation, HandshakeError, Hello, JobSecret, PROTOCOL_VERSION, Purpose, ROOT_RANK, validate,
};
use zccl_transports::tcp::{
    Endpoint, read_hello, read_single_frame, write_hello, write_single_frame,
};

use crate::error::{Error, Result};
use crate::unique_id::UniqueId;

/// What one rank publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The rank.
    pub rank: u32,
    /// Identity of its host (same string = same host and network namespace,
    /// see [`host_id`]).
    pub host_id: String,
    /// Its process id (for logs).
    pub pid: u32,
    /// One listening endpoint per usable NIC.
    pub endpoints: Vec<Endpoint>,
    /// The random tag in the names of the shared-memory segments this rank
    /// creates; `None` when it does not use shared memory
    /// (`ZCCL_SHM_DISABLE=1`), in which case its same-host peers use TCP too.
    #[serde(default)]
    pub shm_tag: Option<String>,
    /// Its NICs and its host's GPU-NIC affinity, for the router.
    #[serde(default)]
    pub route: crate::router::cluster::RouteInfo,
    /// Its values of the settings every rank must share (`ZCCL_ROUTER`,
    /// `ZCCL_ALGO`), as `(variable, value)`: checked by
    /// [`AddressBook::disagreement`] once every rank registered.
    #[serde(default)]
    pub agreed: Vec<(String, String)>,
    /// What its clock's ticks count (`zccl_transports::clock::Source::kind`):
    /// ranks of one host that differ (one cannot read the kernel's
    /// clocksource, say) would misread each other's poll leases, so they
    /// use TCP between them ([`AddressBook::shares_memory`]).
    #[serde(default)]
    pub clock: String,
}

/// Every rank's [`PeerInfo`], indexed by rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressBook {
    /// Entry `i` is rank `i`.
    pub peers: Vec<PeerInfo>,
}

impl AddressBook {
    /// The first setting the ranks must share ([`PeerInfo::agreed`]) that
    /// they do not, as a message naming the variable and which ranks hold
    /// which value; `None` when they agree. Every rank reads the same book,
    /// so every rank fails alike at init (instead of running schedules that
    /// never meet, until the timeout blames a stalled rank). Pure.
    ///
    /// ```
    /// use zccl_runtime::bootstrap::{AddressBook, PeerInfo};
    /// let p = |rank, algo: &str| PeerInfo { rank, host_id: "h".into(), pid: 0,
    ///     endpoints: vec![], shm_tag: None, route: Default::default(),
    ///     agreed: vec![("ZCCL_ALGO".into(), algo.into())], clock: "tsc".into() };
    /// let book = AddressBook { peers: vec![p(0, "ring"), p(1, "tree"), p(2, "tree")] };
    /// assert_eq!(book.disagreement().unwrap(),
    ///     "ZCCL_ALGO differs between ranks: rank 0 \"ring\", ranks 1-2 \"tree\"; \
    ///      it must be the same on every rank");
    /// let same = AddressBook { peers: vec![p(0, "ring"), p(1, "ring")] };
    /// assert_eq!(same.disagreement(), None);
    /// ```
    pub fn disagreement(&self) -> Option<String> {
        let mut names: Vec<&str> = Vec::new();
        for p in &self.peers {
            for (k, _) in &p.agreed {
                if !names.contains(&k.as_str()) {
                    names.push(k);
                }
            }
        }
        for name in names {
            // value -> ranks holding it, in rank order of first holder.
            let mut groups: Vec<(&str, Vec<u32>)> = Vec::new();
            for p in &self.peers {
                let v = p
                    .agreed
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or("(not sent)", |(_, v)| v.as_str());
                match groups.iter_mut().find(|g| g.0 == v) {
                    Some(g) => g.1.push(p.rank),
                    None => groups.push((v, vec![p.rank])),
                }
            }
            if groups.len() > 1 {
                let said: Vec<String> = groups
                    .iter()
                    .map(|(v, ranks)| format!("{} \"{v}\"", rank_list(ranks)))
                    .collect();
                return Some(format!(
                    "{name} differs between ranks: {}; it must be the same on every rank",
                    said.join(", ")
                ));
            }
        }
        None
    }

    /// Whether ranks `a` and `b` talk over shared memory: two ranks of one
    /// host (and network namespace) that both publish a segment tag (are
    /// willing) and read the same clock (see [`PeerInfo::clock`]). Pure.
    ///
    /// ```
    /// use zccl_runtime::bootstrap::{AddressBook, PeerInfo};
    /// let p = |rank, host: &str, shm: bool, clock: &str| PeerInfo { rank,
    ///     host_id: host.into(), pid: 0, endpoints: vec![],
    ///     shm_tag: shm.then(|| format!("{rank:016x}")), route: Default::default(),
    ///     agreed: vec![], clock: clock.into() };
    /// let book = AddressBook { peers: vec![p(0, "a", true, "tsc"), p(1, "a", true, "tsc"),
    ///     p(2, "b", true, "tsc"), p(3, "a", false, "tsc"), p(4, "a", true, "monotonic")] };
    /// assert!(book.shares_memory(0, 1));
    /// assert!(!book.shares_memory(0, 0)); // itself
    /// assert!(!book.shares_memory(0, 2)); // another host
    /// assert!(!book.shares_memory(0, 3)); // ZCCL_SHM_DISABLE=1 there
    /// assert!(!book.shares_memory(0, 4)); // another clock
    /// assert!(book.clocks_apart(0, 4) && !book.clocks_apart(0, 1));
    /// ```
    pub fn shares_memory(&self, a: u32, b: u32) -> bool {
        self.same_host_willing(a, b)
            .is_some_and(|(x, y)| x.clock == y.clock)
    }

    /// Whether ranks `a` and `b` would talk over shared memory but for
    /// their clocks ([`AddressBook::shares_memory`]): what the runtime
    /// tells the user about. Pure.
    pub fn clocks_apart(&self, a: u32, b: u32) -> bool {
        self.same_host_willing(a, b)
            .is_some_and(|(x, y)| x.clock != y.clock)
    }

    /// The entries of two different ranks of one host that both publish a
    /// segment tag.
    fn same_host_willing(&self, a: u32, b: u32) -> Option<(&PeerInfo, &PeerInfo)> {
        let (x, y) = (self.peers.get(a as usize)?, self.peers.get(b as usize)?);
        (a != b && x.shm_tag.is_some() && y.shm_tag.is_some() && x.host_id == y.host_id)
            .then_some((x, y))
    }

    /// `(local rank, ranks on the host)` of `rank`, from host identities.
    ///
    /// ```
    /// use zccl_runtime::bootstrap::{AddressBook, PeerInfo};
    /// let p = |rank, host: &str| PeerInfo { rank, host_id: host.into(), pid: 0,
    ///                                      endpoints: vec![], shm_tag: None,
    ///                                      route: Default::default(), agreed: vec![],
    ///                                      clock: "tsc".into() };
    /// let book = AddressBook { peers: vec![p(0, "a"), p(1, "b"), p(2, "a")] };
    /// assert_eq!(book.local_rank(2), (1, 2));
    /// assert_eq!(book.local_rank(1), (0, 1));
    /// ```
    pub fn local_rank(&self, rank: u32) -> (u32, u32) {
        let host = &self.peers[rank as usize].host_id;
        let same: Vec<u32> = self
            .peers
            .iter()
            .filter(|p| &p.host_id == host)
            .map(|p| p.rank)
            .collect();
        (
            same.iter().position(|&r| r == rank).unwrap_or(0) as u32,
            same.len() as u32,
        )
    }

    /// Checks that the book has one entry per rank, in order.
    pub fn validate(&self, world_size: u32) -> Result<()> {
        if self.peers.len() != world_size as usize {
            return Err(Error::Bootstrap(format!(
                "address book has {} entries for {world_size} ranks",
                self.peers.len()
            )));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.rank != i as u32 {
                return Err(Error::Bootstrap(format!(
                    "address book entry {i} is rank {}",
                    p.rank
                )));
            }
            if p.endpoints.is_empty() {
                return Err(Error::Bootstrap(format!("rank {i} published no endpoint")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum RootReply {
    Book(AddressBook),
    Error(String),
}

/// This host's identity: `ZCCL_HOST_ID`, else the kernel boot id and the
/// inode of this process's network namespace (see
/// [`zccl_transports::shm::host_identity`]). Ranks with equal identities count
/// as one host (`local_rank`) and talk over shared memory.
pub fn host_id() -> String {
    zccl_transports::shm::host_identity()
}

/// Limits of the bootstrap protocol.
#[derive(Debug, Clone, Copy)]
pub struct BootstrapLimits {
    /// Deadline of the whole rendezvous.
    pub timeout: Duration,
    /// Longest wait for one connection's hello and registration.
    pub handshake_timeout: Duration,
    /// Frame bounds.
    pub frames: FrameLimits,
}

/// A running bootstrap root: serves one rendezvous on a background thread,
/// then exits (also on its deadline).
///
/// ```no_run
/// use std::time::Duration;
/// use zccl_runtime::{BootstrapRoot, UniqueId};
/// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(),
///     UniqueId::random_secret().unwrap(), Duration::from_secs(60)).unwrap();
/// let id: UniqueId = root.unique_id(); // hand this to every rank
/// ```
#[derive(Debug)]
pub struct BootstrapRoot {
    id: UniqueId,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl BootstrapRoot {
    /// Binds `bind` (port 0 picks one) and serves until every rank got the
    /// address book or `timeout` passed. The world size is learned from the
    /// first valid registration.
    pub fn start(bind: SocketAddr, secret: JobSecret, timeout: Duration) -> Result<Self> {
        let limits = BootstrapLimits {
            timeout,
            handshake_timeout: timeout.min(Duration::from_secs(10)),
            frames: FrameLimits {
                max_frame: 16 << 20,
                max_message: 16 << 20,
            },
        };
        Self::start_with(bind, secret, limits)
    }

    /// Like [`BootstrapRoot::start`] with explicit limits.
    pub fn start_with(
        bind: SocketAddr,
        secret: JobSecret,
        limits: BootstrapLimits,
    ) -> Result<Self> {
        let listener = std::net::TcpListener::bind(bind)
            .map_err(|e| Error::Bootstrap(format!("root cannot listen on {bind}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Bootstrap(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Bootstrap(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name("zccl-root".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(listener)
                        .map_err(|e| Error::Bootstrap(e.to_string()))?;
                    serve(l, secret, limits).await
                })
            })
            .map_err(|e| Error::Bootstrap(format!("cannot start root thread: {e}")))?;
        info!(%addr, "bootstrap root listening");
        Ok(Self {
            id: UniqueId::new(addr, secret),
            thread: Some(thread),
        })
    }

    /// The id to hand to every rank.
    pub fn unique_id(&self) -> UniqueId {
        self.id
    }

    /// Waits for the root to finish (bounded by its own deadline).
    pub fn join(mut self) -> Result<()> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Bootstrap("root thread panicked".into())),
            None => Ok(()),
        }
    }
}

/// What a connection to the root turned out to be.
enum Arrival {
    /// A rank of this job registered (boxed: the larger variant by far).
    Registered(Box<PeerInfo>, TcpStream, SocketAddr),
    /// A registration that dooms the job (another world size, a rank out of
    /// range or twice, another job secret): its reason, already sent to the
    /// offender.
    Fatal(String),
}

/// The job's world size, and the rank whose registration fixed it.
type World = Arc<Mutex<Option<(u32, u32)>>>;

async fn serve(
    listener: tokio::net::TcpListener,
    secret: JobSecret,
    limits: BootstrapLimits,
) -> Result<()> {
    let deadline = Instant::now() + limits.timeout;
    let world: World = Arc::default();
    // Set once the job failed: later registrations get this reason at once.
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Arrival>();
    let acceptor = {
        let (world, failed) = (world.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, from)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (tx, world, failed) = (tx.clone(), world.clone(), failed.clone());
                tokio::spawn(async move {
                    let r = tokio::time::timeout(
                        limits.handshake_timeout,
                        register(stream, from, secret, &world, &failed, &limits),
                    )
                    .await;
                    match r {
                        Ok(Ok(a)) => {
                            let _ = tx.send(a);
                        }
                        Ok(Err(why)) => warn!(%from, "bootstrap root dropped a connection: {why}"),
                        Err(_) => {
                            warn!(%from, "bootstrap root dropped a connection: no registration within {:?}", limits.handshake_timeout)
                        }
                    }
                });
            }
        })
    };
    let mut ranks: BTreeMap<u32, (PeerInfo, TcpStream, SocketAddr)> = BTreeMap::new();
    let outcome = loop {
        let want = world.lock().expect("world").map(|(w, _)| w);
        if let Some(w) = want
            && ranks.len() == w as usize
        {
            break Ok(w);
        }
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(Arrival::Registered(info, mut stream, from))) => {
                if let Some((_, _, first)) = ranks.get(&info.rank) {
                    let why = format!(
                        "rank {} registered twice (from {first} and from {from}): two processes \
                         claim the same rank",
                        info.rank
                    );
                    // Its registration was read already.
                    send_error(&mut stream, &why, &limits).await;
                    break Err(why);
                }
                debug!(rank = info.rank, %from, "rank registered");
                ranks.insert(info.rank, (*info, stream, from));
            }
            Ok(Some(Arrival::Fatal(why))) => break Err(why),
            Ok(None) => unreachable!("acceptor holds a sender"),
            Err(_) => {
                let missing: Vec<String> = match want {
                    Some(w) => (0..w)
                        .filter(|r| !ranks.contains_key(r))
                        .map(|r| r.to_string())
                        .collect(),
                    None => vec!["all".into()],
                };
                break Err(format!(
                    "ranks [{}] did not register with the root within {:.1} s",
                    missing.join(", "),
                    limits.timeout.as_secs_f64()
                ));
            }
        }
    };
    let reply = match &outcome {
        Ok(_) => RootReply::Book(AddressBook {
            peers: ranks.values().map(|(i, _, _)| i.clone()).collect(),
        }),
        Err(why) => {
            warn!("bootstrap failed: {why}");
            *failed.lock().expect("failed") = Some(why.clone());
            RootReply::Error(why.clone())
        }
    };
    let payload = serde_json::to_vec(&reply).map_err(|e| Error::Bootstrap(e.to_string()))?;
    let mut sends = Vec::new();
    for (rank, (_, mut stream, _)) in ranks {
        let payload = payload.clone();
        sends.push(tokio::spawn(async move {
            let r = tokio::time::timeout(
                limits.handshake_timeout,
                write_single_frame(&mut stream, FrameKind::Bootstrap, &payload),
            )
            .await;
            if !matches!(r, Ok(Ok(()))) {
                warn!(rank, "bootstrap root could not send the address book");
            }
        }));
    }
    for s in sends {
        let _ = s.await;
    }
    match outcome {
        Ok(w) => {
            acceptor.abort();
            info!(world = w, "bootstrap complete");
            Ok(())
        }
        Err(why) => {
            // Ranks still on their way get the reason when they register
            // (the acceptor answers them from `failed`) until the deadline;
            // so do those whose registration raced with the failure.
            while let Ok(Some(a)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                if let Arrival::Registered(_, mut stream, _) = a {
                    send_error(&mut stream, &format!("the job failed: {why}"), &limits).await;
                }
            }
            acceptor.abort();
            Err(Error::Bootstrap(why))
        }
    }
}

/// Answers a registration with an error: a hello that mirrors the rank's
/// (so it reads on), then the reason in place of the address book.
async fn refuse(stream: &mut TcpStream, hello: &Hello, why: &str, limits: &BootstrapLimits) {
    let reply = Hello {
        src_rank: ROOT_RANK,
        dst_rank: hello.src_rank,
        ..*hello
    };
    if write_hello(stream, &reply, limits.handshake_timeout)
        .await
        .is_ok()
    {
        reject(stream, why, limits).await;
    }
}

/// Sends `why` in place of the address book, after taking the rank's
/// registration off the wire (closing on unread bytes would reset the
/// connection before the reason arrives).
async fn reject(stream: &mut TcpStream, why: &str, limits: &BootstrapLimits) {
    let _ = tokio::time::timeout(
        limits.handshake_timeout,
        read_single_frame(stream, FrameKind::Bootstrap, &limits.frames),
    )
    .await;
    send_error(stream, why, limits).await;
}

/// Sends `why` in place of the address book.
async fn send_error(stream: &mut TcpStream, why: &str, limits: &BootstrapLimits) {
    if let Ok(payload) = serde_json::to_vec(&RootReply::Error(why.to_string())) {
        let _ = tokio::time::timeout(
            limits.handshake_timeout,
            write_single_frame(stream, FrameKind::Bootstrap, &payload),
        )
        .await;
    }
}

async fn register(
    mut stream: TcpStream,
    from: SocketAddr,
    secret: JobSecret,
    world: &Mutex<Option<(u32, u32)>>,
    failed: &Mutex<Option<String>>,
    limits: &BootstrapLimits,
) -> Result<Arrival, String> {
    // Not even a zccl hello: a stray connection, dropped (and logged).
    let hello = read_hello(&mut stream, limits.handshake_timeout).await?;
    let known = *world.lock().expect("world");
    let exp = Expectation {
        purpose: Purpose::Bootstrap,
        secret,
        local_rank: ROOT_RANK,
        world_size: known.map(|(w, _)| w),
        src_rank: None,
        src_range: None,
        num_sockets: None,
    };
    let who = format!("rank {} (from {from})", hello.src_rank);
    let fatal = match validate(&hello, &exp) {
        Ok(()) => None,
        Err(HandshakeError::WrongSecret) => Some(format!(
            "{who} presented another job secret than the root's: it was started with another \
             ZCCL_UNIQUE_ID / ZCCL_JOB_SECRET, or belongs to another job"
        )),
        Err(HandshakeError::WorldSizeMismatch { ours, theirs }) => Some(format!(
            "world size mismatch: {who} says the job has {theirs} ranks, rank {} said {ours}",
            known.map_or(0, |(_, r)| r)
        )),
        Err(HandshakeError::BadSourceRank { rank, world_size }) => Some(format!(
            "rank {rank} (from {from}) is not a rank of a world of {world_size}"
        )),
        // Another purpose or protocol: not a registration of this job.
        Err(e) => return Err(e.to_string()),
    };
    if let Some(why) = fatal {
        refuse(&mut stream, &hello, &why, limits).await;
        return Ok(Arrival::Fatal(why));
    }
    let late = failed.lock().expect("failed").clone();
    if let Some(why) = late {
        refuse(
            &mut stream,
            &hello,
            &format!("the job failed: {why}"),
            limits,
        )
        .await;
        return Err(format!(
            "late registration of {who} refused: the job failed"
        ));
    }
    let conflict = {
        let mut w = world.lock().expect("world");
        match *w {
            None => {
                *w = Some((hello.world_size, hello.src_rank));
                None
            }
            Some((ws, first)) if ws != hello.world_size => Some(format!(
                "world size mismatch: {who} says the job has {} ranks, rank {first} said {ws}",
                hello.world_size
            )),
            Some(_) => None,
        }
    };
    if let Some(why) = conflict {
        refuse(&mut stream, &hello, &why, limits).await;
        return Ok(Arrival::Fatal(why));
    }
    let reply = Hello {
        src_rank: ROOT_RANK,
        dst_rank: hello.src_rank,
        ..hello
    };
    write_hello(&mut stream, &reply, limits.handshake_timeout).await?;
    let payload = read_single_frame(&mut stream, FrameKind::Bootstrap, &limits.frames).await?;
    let info: PeerInfo =
        serde_json::from_slice(&payload).map_err(|e| format!("bad registration: {e}"))?;
    if info.rank != hello.src_rank {
        return Err(format!(
            "registration for rank {} on a connection of rank {}",
            info.rank, hello.src_rank
        ));
    }
    Ok(Arrival::Registered(Box::new(info), stream, from))
}

/// Registers `me` with the root of `id` and returns the address book.
/// Retries connecting until the deadline (the root may start later).
pub async fn exchange(
    id: &UniqueId,
    me: PeerInfo,
    world_size: u32,
    limits: &BootstrapLimits,
    deadline: Instant,
) -> Result<AddressBook> {
    let rank = me.rank;
    let root = id.root();
    // A tiny timeout (ZCCL_TIMEOUT, or init's) ends before the first try.
    let mut last_err = String::from("the deadline passed before the first try");
    let mut stream = loop {
        if Instant::now() >= deadline {
            return Err(Error::Bootstrap(format!(
                "rank {rank} could not reach the root at {root} before init's deadline \
                 (ZCCL_TIMEOUT): {last_err}"
            )));
        }
        match tokio::time::timeout_at(deadline.into(), TcpStream::connect(root)).await {
            Ok(Ok(s)) => break s,
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = "connect timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stream.set_nodelay(true);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        purpose: Purpose::Bootstrap,
        secret: id.secret(),
        src_rank: rank,
        dst_rank: ROOT_RANK,
        world_size,
        socket_index: 0,
        num_sockets: 1,
    };
    let fail = |what: String| Error::Bootstrap(format!("rank {rank} with root {root}: {what}"));
    write_hello(&mut stream, &hello, limits.handshake_timeout)
        .await
        .map_err(fail)?;
    let reply = read_hello(&mut stream, limits.handshake_timeout)
        .await
        .map_err(fail)?;
    let exp = Expectation {
        purpose: Purpose::Bootstrap,
        secret: id.secret(),
        local_rank: rank,
        world_size: Some(world_size),
        src_rank: Some(ROOT_RANK),
        src_range: None,
        num_sockets: None,
    };
    validate(&reply, &exp)
        .map_err(|e| fail(format!("root answered with an invalid hello: {e}")))?;
    let payload = serde_json::to_vec(&me).map_err(|e| fail(e.to_string()))?;
    write_single_frame(&mut stream, FrameKind::Bootstrap, &payload)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let frame = match tokio::time::timeout_at(
        deadline.into(),
        read_single_frame(&mut stream, FrameKind::Bootstrap, &limits.frames),
    )
    .await
    {
        Err(_) => return Err(fail("no address book before the deadline".into())),
        Ok(r) => r.map_err(fail)?,
    };
    match serde_json::from_slice::<RootReply>(&frame)
        .map_err(|e| fail(format!("bad reply: {e}")))?
    {
        RootReply::Book(book) => {
            book.validate(world_size)?;
            Ok(book)
        }
        RootReply::Error(why) => Err(Error::Bootstrap(why)),
    }
}

/// `ranks` (ascending) as `rank 3`, `ranks 0-2`, `ranks 0, 2, 5-7`.
fn rank_list(ranks: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ranks[i].to_string()
        } else {
            format!("{}-{}", ranks[i], ranks[j])
        });
        i = j + 1;
    }
    let word = if ranks.len() == 1 { "rank" } else { "ranks" };
    format!("{word} {}", parts.join(", "))
}
