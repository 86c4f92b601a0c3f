//! Landing zones: user buffers that an incoming message is copied into
//! directly, instead of into a receive buffer and then again at its match.
//!
//! A receive that names its destination (`irecv_into` in the runtime, for
//! sizes its transport lands; small ones elsewhere are copied in by their
//! handle instead, `zccl_runtime`'s `land`) **posts** a [`Zone`] under the
//! message's key `(peer, comm, channel, seq)`.
//! A transport thread about to copy a message of that key **claims** the zone
//! (only while it is open, and only for exactly the zone's length), copies
//! the payload into it and marks it filled; the message then goes up with an
//! empty payload, and the receive completes without a copy. A message that
//! arrives before its zone is posted, or over a path that does not land
//! (TCP, the ring's small records), is copied into the zone when the
//! receive matches it ([`Zone::fill_from`]); a large one may first wait a
//! little for the zone ([`Landing::claim_within`]).
//!
//! The owner **closes** the zone when it takes its buffer back (the
//! receive completed, failed or was dropped): closing waits out a copy in
//! progress, and nothing writes into the buffer afterwards.
//!
//! A **combining** zone ([`Zone::combining`], [`Landing::post_combining`])
//! has no memory: its message is handed to a sink of the receiver's
//! ([`Combine`]), which reduces it into memory of its own. A transport
//! that copies by CMA claims it ([`Landing::claim_any`]) and hands the
//! payload over in pieces of [`COMBINE_PIECE_BYTES`], each read into a
//! buffer of the copying thread and handed over while still in its cache
//! ([`Claim::combining`]); [`Landing::claim`] leaves it alone, and a
//! message that came whole goes to the sink through [`Zone::fill_from`].
//!
//! A receive that names no destination may **mark** its key instead
//! ([`Landing::mark`]): it is posted, and its message takes a buffer of
//! the transport's when it comes. A transport that leaves a message whose
//! receive is not posted yet where it is, for a while
//! ([`Landing::is_posted`], [`Landing::claim_within`]), then knows not to
//! wait for a zone that will not come.
//!
//! ```
//! use zccl_transports::landing::{LandKey, Landing};
//! let landing = Landing::default();
//! let mut buf = vec![0u8; 4];
//! let key = LandKey { peer: 1, comm: 0, channel: 2, seq: 7 };
//! // SAFETY: `buf` stays valid and untouched until the zone is closed.
//! let zone = unsafe { landing.post(key, buf.as_mut_ptr(), buf.len()) };
//! assert!(landing.claim(key, 3).is_none()); // wrong length: not this zone
//! let mut claim = landing.claim(key, 4).unwrap();
//! claim.dest().copy_from_slice(&[1, 2, 3, 4]);
//! claim.done(true);
//! assert!(zone.landed());
//! zone.close();
//! assert_eq!(buf, [1, 2, 3, 4]);
//! ```

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The key of a message: who sent it and its place in the sender's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LandKey {
    /// Sending rank (world rank).
    pub peer: u32,
    /// Communicator context id.
    pub comm: u32,
    /// Channel.
    pub channel: u32,
    /// Sequence number of the message on `(comm, channel)` from `peer`.
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A transport thread is copying into the buffer.
    Busy,
    /// The payload is in the buffer; `landed`: by a transport thread.
    Filled {
        landed: bool,
    },
    /// The owner took the buffer back.
    Closed {
        filled: bool,
        landed: bool,
    },
}

/// One posted destination buffer (see the module docs).
pub struct Zone {
    ptr: *mut u8,
    len: usize,
    state: Mutex<State>,
    cv: Condvar,
    /// Threads in `close` waiting for a copy to finish (changed under
    /// `state`'s lock): a finished claim notifies only if there are any
    /// (a notification is a system call even with nobody waiting).
    closers: std::sync::atomic::AtomicUsize,
    /// A combining zone's sink ([`Zone::combining`]): the bytes go to it
    /// instead of into `ptr` (null then). Called only by the thread that
    /// holds the zone Busy (a claim) or its state's lock (`fill_from`).
    combine: Option<Mutex<Combine>>,
}

/// Where a combining zone's bytes go ([`Zone::combining`]): called with
/// each piece of the message in order, as `(offset, bytes)`, the offsets
/// counted from the message's start; the pieces cover the message once.
/// Every piece but the last is a multiple of [`COMBINE_PIECE_BYTES`] long,
/// so a piece never splits an element.
pub type Combine = Box<dyn FnMut(usize, &[u8]) + Send>;

/// The size of the pieces a transport thread hands a combining zone
/// ([`Combine`]): small enough that a piece copied into a buffer of the
/// thread's is still in its cache when the sink reads it, a multiple of
/// every element's size.
pub const COMBINE_PIECE_BYTES: usize = 256 << 10;

// SAFETY: the buffer is written only by the thread that holds the zone Busy
// (a claim) or holds its lock (`fill_from`); the poster keeps it valid until
// `close` returned (the contract of `Landing::post` / `Zone::new`).
unsafe impl Send for Zone {}
// SAFETY: as above.
unsafe impl Sync for Zone {}

impl Zone {
    /// A zone that is not posted anywhere (for transports that do not land:
    /// the engine fills it at match time).
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes, and not otherwise
    /// accessed, until [`Zone::close`] returned.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Arc<Self> {
        Self::open(ptr, len, None)
    }

    /// An open zone: memory at `ptr` (null for a sink), or a sink.
    fn open(ptr: *mut u8, len: usize, combine: Option<Combine>) -> Arc<Self> {
        Arc::new(Zone {
            ptr,
            len,
            state: Mutex::new(State::Open),
            cv: Condvar::new(),
            closers: std::sync::atomic::AtomicUsize::new(0),
            combine: combine.map(Mutex::new),
        })
    }

    /// A zone of `len` bytes whose message is handed to `combine` in
    /// pieces instead of being stored (see [`Combine`]): a receive that
    /// reduces what it gets into memory of its own. A transport that
    /// copies by CMA reads each piece into a cache-sized buffer and hands
    /// it over at once ([`Claim::combining`]), so the message is never
    /// written to memory whole; a message that came any other way is
    /// handed over whole by [`Zone::fill_from`] (the runtime calls it from
    /// the receive's handle, off its engine's lock). Not posted anywhere
    /// ([`Landing::post_combining`] posts one).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use zccl_transports::landing::Zone;
    /// let sum = Arc::new(Mutex::new(0u64));
    /// let s = sum.clone();
    /// let zone = Zone::combining(3, Box::new(move |_off: usize, b: &[u8]| {
    ///     *s.lock().unwrap() += b.iter().map(|&x| u64::from(x)).sum::<u64>();
    /// }));
    /// assert!(zone.fill_from(&[1, 2, 3]));
    /// assert!(zone.close());
    /// assert_eq!(*sum.lock().unwrap(), 6);
    /// ```
    pub fn combining(len: usize, combine: Combine) -> Arc<Self> {
        Self::open(std::ptr::null_mut(), len, Some(combine))
    }

    /// Whether the zone hands its bytes to a sink ([`Zone::combining`]).
    pub fn combines(&self) -> bool {
        self.combine.is_some()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the zone has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a transport thread copied the message into the zone (its
    /// delivered payload is then empty).
    pub fn landed(&self) -> bool {
        matches!(
            *self.state.lock().expect("zone"),
            State::Filled { landed: true } | State::Closed { landed: true, .. }
        )
    }

    /// At the match of a message that did not land: copies `src` into the
    /// zone (or hands it to a combining zone's sink, whole) if it is still
    /// open and of the same length. Returns whether it did (a closed zone's
    /// owner no longer wants the data).
    pub fn fill_from(&self, src: &[u8]) -> bool {
        let mut st = self.state.lock().expect("zone");
        if *st != State::Open || src.len() != self.len {
            return false;
        }
        if let Some(c) = &self.combine {
            (c.lock().expect("zone sink"))(0, src);
        } else {
            // SAFETY: the zone is open and we hold its lock: neither a claim
            // nor `close` runs meanwhile; the poster keeps the memory valid.
            unsafe { crate::copy::copy_raw(self.ptr, src.as_ptr(), self.len) };
        }
        *st = State::Filled { landed: false };
        true
    }

    /// The owner takes the buffer back: waits until no copy is in progress;
    /// afterwards nothing writes into it. Returns whether it was filled.
    pub fn close(&self) -> bool {
        let mut st = self.state.lock().expect("zone");
        while *st == State::Busy {
            self.closers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            st = self.cv.wait(st).expect("zone");
            self.closers
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (filled, landed) = match *st {
            State::Filled { landed } => (true, landed),
            State::Closed { filled, landed } => (filled, landed),
            _ => (false, false),
        };
        *st = State::Closed { filled, landed };
        filled
    }
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("len", &self.len)
            .field("state", &*self.state.lock().expect("zone"))
            .finish()
    }
}

/// A transport thread's right to copy one message into a zone.
pub struct Claim {
    zone: Arc<Zone>,
    done: bool,
}

impl Claim {
    /// The destination, to copy the payload into (empty for a combining
    /// zone, whose claims only [`Landing::claim_any`] and
    /// [`Landing::claim_within`] give: see [`Claim::combining`]).
    pub fn dest(&mut self) -> &mut [u8] {
        if self.zone.combine.is_some() {
            debug_assert!(false, "a combining zone has no destination");
            return &mut [];
        }
        // SAFETY: the zone is Busy for this claim: nobody else writes or
        // reads it until `done`/drop, and the poster keeps it valid.
        unsafe { std::slice::from_raw_parts_mut(self.zone.ptr, self.zone.len) }
    }

    /// A combining zone's sink ([`Zone::combining`]), to hand the payload
    /// to in pieces of [`COMBINE_PIECE_BYTES`] (the last one shorter), in
    /// order; `None` for a zone to copy into ([`Claim::dest`]).
    pub fn combining(&self) -> Option<std::sync::MutexGuard<'_, Combine>> {
        self.zone
            .combine
            .as_ref()
            .map(|c| c.lock().expect("zone sink"))
    }

    /// The copy finished (`ok`) or failed (the zone opens again).
    pub fn done(mut self, ok: bool) {
        self.finish(ok);
    }

    fn finish(&mut self, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let mut st = self.zone.state.lock().expect("zone");
        *st = if ok {
            State::Filled { landed: true }
        } else {
            State::Open
        };
        if self.zone.closers.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            self.zone.cv.notify_all();
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// What a receive posted under its message's key.
enum Posted {
    /// A destination to copy the message into.
    Zone(Arc<Zone>),
    /// No destination: the receive is posted, and its message takes a
    /// buffer of the transport's ([`Landing::mark`]).
    Mark,
}

/// The zones and marks posted for one transport's incoming messages.
#[derive(Default)]
pub struct Landing {
    zones: Mutex<HashMap<LandKey, Posted>>,
    /// The transport claims zones only for messages of at least this many
    /// bytes ([`Landing::lands`]).
    min_bytes: usize,
    /// Notified when a zone or mark is posted, if a thread waits in
    /// [`Landing::claim_within`] (`waiting`, read under `zones`' lock).
    posted_cv: Condvar,
    waiting: AtomicUsize,
}

impl Landing {
    /// Zones for a transport that claims them only for messages of at least
    /// `min_bytes` bytes (the receiver copies smaller ones in itself, at
    /// the match or at the receive's wait). The default claims any size.
    ///
    /// ```
    /// use zccl_transports::landing::Landing;
    /// let l = Landing::with_min_bytes(16 << 10);
    /// assert!(!l.lands(4096));
    /// assert!(l.lands(16 << 10));
    /// assert!(Landing::default().lands(1));
    /// ```
    pub fn with_min_bytes(min_bytes: usize) -> Self {
        Landing {
            min_bytes,
            ..Landing::default()
        }
    }

    /// Whether a message of `len` bytes can be claimed into a zone at all:
    /// a receive of a smaller one need not post one (a post and its removal
    /// take the zones' lock twice, a tenth of a small receive's time).
    pub fn lands(&self, len: usize) -> bool {
        len >= self.min_bytes
    }

    /// Posts a zone for the message `key`.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes, and not otherwise
    /// accessed, until the returned zone's [`Zone::close`] returned.
    pub unsafe fn post(&self, key: LandKey, ptr: *mut u8, len: usize) -> Arc<Zone> {
        // SAFETY: forwarded from our caller.
        let zone = unsafe { Zone::new(ptr, len) };
        self.insert(key, Posted::Zone(zone.clone()));
        zone
    }

    /// Posts a combining zone ([`Zone::combining`]) for the message `key`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use zccl_transports::landing::{LandKey, Landing};
    /// let landing = Landing::default();
    /// let key = LandKey { peer: 1, comm: 0, channel: 2, seq: 7 };
    /// let got = Arc::new(Mutex::new(Vec::new()));
    /// let g = got.clone();
    /// let zone = landing.post_combining(key, 4, Box::new(move |off: usize, b: &[u8]| {
    ///     g.lock().unwrap().push((off, b.to_vec()));
    /// }));
    /// // A transport that copies into zones as they are leaves it alone ...
    /// assert!(landing.claim(key, 4).is_none());
    /// // ... one that hands pieces over claims it.
    /// let mut claim = landing.claim_any(key, 4).unwrap();
    /// (claim.combining().unwrap())(0, &[1, 2]);
    /// (claim.combining().unwrap())(2, &[3, 4]);
    /// claim.done(true);
    /// assert!(zone.landed());
    /// zone.close();
    /// assert_eq!(*got.lock().unwrap(), [(0, vec![1, 2]), (2, vec![3, 4])]);
    /// ```
    pub fn post_combining(&self, key: LandKey, len: usize, combine: Combine) -> Arc<Zone> {
        let zone = Zone::combining(len, combine);
        self.insert(key, Posted::Zone(zone.clone()));
        zone
    }

    /// Marks message `key`'s receive as posted without a zone: the message
    /// takes a buffer of the transport's when it comes, at once (a
    /// [`Landing::claim_within`] waiting for it stops waiting). Forget it
    /// with [`Landing::remove`] when the receive ends; a claim of the
    /// message forgets it too.
    ///
    /// ```
    /// use std::sync::atomic::AtomicBool;
    /// use std::time::{Duration, Instant};
    /// use zccl_transports::landing::{LandKey, Landing};
    /// let landing = Landing::default();
    /// let key = LandKey { peer: 1, comm: 0, channel: 2, seq: 7 };
    /// landing.mark(key);
    /// assert!(landing.is_posted(key));
    /// let t = Instant::now();
    /// let stop = AtomicBool::new(false);
    /// // Nothing to copy into, and no wait for it.
    /// assert!(landing.claim_within(key, 4, Duration::from_secs(5), &stop).is_none());
    /// assert!(t.elapsed() < Duration::from_secs(1));
    /// assert!(!landing.is_posted(key), "the message came: the mark is gone");
    /// ```
    pub fn mark(&self, key: LandKey) {
        self.insert(key, Posted::Mark);
    }

    fn insert(&self, key: LandKey, posted: Posted) {
        let mut zones = self.zones.lock().expect("landing");
        zones.insert(key, posted);
        // A waiter counts itself before it takes the lock to look, so under
        // the lock its count is seen.
        if self.waiting.load(Ordering::Relaxed) != 0 {
            self.posted_cv.notify_all();
        }
    }

    /// Forgets the zone or mark of `key` (its owner takes the buffer back;
    /// call [`Zone::close`] too).
    pub fn remove(&self, key: LandKey) {
        self.zones.lock().expect("landing").remove(&key);
    }

    /// Whether message `key`'s receive is posted: a zone (of any length)
    /// or a [mark](Landing::mark). A transport may leave a message whose
    /// receive is not posted yet where it is rather than copy it into a
    /// buffer of its own (shared memory does, for CMA records).
    ///
    /// ```
    /// use zccl_transports::landing::{LandKey, Landing};
    /// let landing = Landing::default();
    /// let key = LandKey { peer: 1, comm: 0, channel: 2, seq: 7 };
    /// assert!(!landing.is_posted(key));
    /// let mut buf = vec![0u8; 4];
    /// // SAFETY: `buf` stays valid and untouched until the zone is closed.
    /// let zone = unsafe { landing.post(key, buf.as_mut_ptr(), buf.len()) };
    /// assert!(landing.is_posted(key));
    /// landing.remove(key);
    /// zone.close();
    /// assert!(!landing.is_posted(key));
    /// ```
    pub fn is_posted(&self, key: LandKey) -> bool {
        self.zones.lock().expect("landing").contains_key(&key)
    }

    /// A transport thread is about to copy `len` bytes of message `key`:
    /// the zone to copy them into, now held for this copy, if one is posted
    /// and open for exactly that length. A [mark](Landing::mark) is
    /// forgotten here (the message came) and gives no zone. A combining
    /// zone ([`Zone::combining`]) is left posted (its message is handed
    /// over at the match); [`Landing::claim_any`] claims those too.
    pub fn claim(&self, key: LandKey, len: usize) -> Option<Claim> {
        Self::claim_in(self.zones.lock().expect("landing"), key, len, false)
    }

    /// [`Landing::claim`], combining zones included: for a transport
    /// thread that hands a combining zone's payload over in pieces
    /// ([`Claim::combining`]).
    pub fn claim_any(&self, key: LandKey, len: usize) -> Option<Claim> {
        Self::claim_in(self.zones.lock().expect("landing"), key, len, true)
    }

    /// [`Landing::claim`] (or, `any`, [`Landing::claim_any`]) with the
    /// zones' lock held (and let go here).
    fn claim_in(
        mut zones: std::sync::MutexGuard<'_, HashMap<LandKey, Posted>>,
        key: LandKey,
        len: usize,
        any: bool,
    ) -> Option<Claim> {
        let zone = match zones.get(&key)? {
            Posted::Zone(z) if z.combine.is_some() && !any => return None,
            Posted::Zone(z) if z.len == len => z.clone(),
            Posted::Zone(_) => return None,
            Posted::Mark => {
                zones.remove(&key);
                return None;
            }
        };
        zones.remove(&key);
        drop(zones);
        let mut st = zone.state.lock().expect("zone");
        if *st != State::Open {
            return None;
        }
        *st = State::Busy;
        drop(st);
        Some(Claim { zone, done: false })
    }

    /// [`Landing::claim_any`] (combining zones included), waiting up to
    /// `wait` for the receive of `key` to be posted: for a large message
    /// that came before its receive, which
    /// would otherwise be copied into a buffer of its own (allocated,
    /// faulted in, freed) and then again into the receive's buffer at the
    /// match. Gives up early once `stop` is set (checked every
    /// millisecond); `None` when no zone of exactly `len` bytes came, at
    /// once when the receive posted a [mark](Landing::mark) or a zone of
    /// another length.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::AtomicBool};
    /// use std::time::Duration;
    /// use zccl_transports::landing::{LandKey, Landing};
    /// let landing = Arc::new(Landing::default());
    /// let key = LandKey { peer: 1, comm: 0, channel: 2, seq: 7 };
    /// let stop = AtomicBool::new(false);
    /// // Nobody posts: it gives up after the wait.
    /// assert!(landing.claim_within(key, 4, Duration::from_millis(5), &stop).is_none());
    /// // Posted meanwhile by another thread: claimed.
    /// let mut buf = vec![0u8; 4];
    /// let (l2, addr) = (landing.clone(), buf.as_mut_ptr() as usize);
    /// let poster = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(20));
    ///     // SAFETY: `buf` outlives the zone (closed below, before `buf` is read).
    ///     unsafe { l2.post(key, addr as *mut u8, 4) }
    /// });
    /// let mut claim = landing.claim_within(key, 4, Duration::from_secs(5), &stop).unwrap();
    /// claim.dest().copy_from_slice(b"zccl");
    /// claim.done(true);
    /// let zone = poster.join().unwrap();
    /// zone.close();
    /// assert_eq!(&buf, b"zccl");
    /// ```
    pub fn claim_within(
        &self,
        key: LandKey,
        len: usize,
        wait: Duration,
        stop: &AtomicBool,
    ) -> Option<Claim> {
        self.claim_within_while(key, len, wait, stop, &|| true)
    }

    /// [`Landing::claim_within`], giving up early also once `keep` says so
    /// (asked every millisecond, under the zones' lock: it must not touch
    /// them): a transport thread that holds other messages up while it
    /// waits stops when one comes behind.
    pub(crate) fn claim_within_while(
        &self,
        key: LandKey,
        len: usize,
        wait: Duration,
        stop: &AtomicBool,
        keep: &dyn Fn() -> bool,
    ) -> Option<Claim> {
        let (zones, found) = self.wait_for(key, wait, stop, keep);
        // A zone of another length, or a mark: no claim, and the message
        // takes a buffer of its own.
        if found {
            Self::claim_in(zones, key, len, true)
        } else {
            None
        }
    }

    /// Waits up to `wait` for the receive of `key` to be posted (a zone or
    /// a [mark](Landing::mark)), claiming nothing: whether it was. Gives up
    /// early once `stop` is set (checked every millisecond). A transport
    /// thread that would rather leave the message to the thread that posts
    /// its receive than copy it itself waits here, then looks again.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::AtomicBool};
    /// use std::time::Duration;
    /// use zccl_transports::landing::{LandKey, Landing};
    /// let landing = Arc::new(Landing::default());
    /// let key = LandKey { peer: 1, comm: 0, channel: 2, seq: 7 };
    /// let stop = AtomicBool::new(false);
    /// assert!(!landing.wait_posted(key, Duration::from_millis(5), &stop));
    /// let l2 = landing.clone();
    /// let poster = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(20));
    ///     l2.mark(key);
    /// });
    /// assert!(landing.wait_posted(key, Duration::from_secs(5), &stop));
    /// assert!(landing.is_posted(key), "nothing was claimed");
    /// poster.join().unwrap();
    /// ```
    pub fn wait_posted(&self, key: LandKey, wait: Duration, stop: &AtomicBool) -> bool {
        self.wait_for(key, wait, stop, &|| true).1
    }

    /// [`Landing::wait_posted`], giving up early also once `keep` says so
    /// (asked every millisecond, under the zones' lock: it must not touch
    /// them).
    pub(crate) fn wait_posted_while(
        &self,
        key: LandKey,
        wait: Duration,
        stop: &AtomicBool,
        keep: &dyn Fn() -> bool,
    ) -> bool {
        self.wait_for(key, wait, stop, keep).1
    }

    /// Waits up to `wait` (or until `stop`, or until `keep` says no) for
    /// `key` to be posted; returns the zones' lock, held, and whether it
    /// was.
    fn wait_for(
        &self,
        key: LandKey,
        wait: Duration,
        stop: &AtomicBool,
        keep: &dyn Fn() -> bool,
    ) -> (std::sync::MutexGuard<'_, HashMap<LandKey, Posted>>, bool) {
        // (A wait too long for the clock: about a year is as good.)
        let until = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 25));
        // Counted before the lock is taken to look (see `insert`).
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let mut zones = self.zones.lock().expect("landing");
        let found = loop {
            if zones.contains_key(&key) {
                break true;
            }
            let now = Instant::now();
            if now >= until || stop.load(Ordering::Acquire) || !keep() {
                break false;
            }
            let slice = (until - now).min(Duration::from_millis(1));
            zones = self
                .posted_cv
                .wait_timeout(zones, slice)
                .expect("landing")
                .0;
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        (zones, found)
    }

    /// Number of posted zones and marks (tests, diagnostics).
    pub fn posted(&self) -> usize {
        self.zones.lock().expect("landing").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> LandKey {
        LandKey {
            peer: 1,
            comm: 2,
            channel: 3,
            seq,
        }
    }

    #[test]
    fn a_close_waits_out_a_copy_in_progress_and_nothing_writes_after() {
        let landing = Landing::default();
        let mut buf = vec![0u8; 1 << 20];
        let zone = unsafe { landing.post(key(1), buf.as_mut_ptr(), buf.len()) };
        let mut claim = landing.claim(key(1), 1 << 20).unwrap();
        assert_eq!(landing.posted(), 0, "claimed zones leave the map");
        let closer = {
            let zone = zone.clone();
            std::thread::spawn(move || zone.close())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!closer.is_finished(), "close waits for the copy");
        claim.dest().fill(9);
        claim.done(true);
        assert!(closer.join().unwrap(), "filled");
        assert!(zone.landed());
        // Closed: a late match copies nothing.
        assert!(!zone.fill_from(&vec![1u8; 1 << 20]));
        assert!(buf.iter().all(|&b| b == 9));
    }

    /// A mark or a zone of another length ends a wait at once, with no
    /// claim; a mark posted while a thread waits wakes it; a claim
    /// forgets the mark.
    #[test]
    fn a_posted_receive_without_a_fitting_zone_is_not_waited_for() {
        use std::time::{Duration, Instant};
        let landing = std::sync::Arc::new(Landing::default());
        let stop = AtomicBool::new(false);
        let long = Duration::from_secs(20);
        landing.mark(key(1));
        let t = Instant::now();
        assert!(landing.claim_within(key(1), 8, long, &stop).is_none());
        assert!(
            !landing.is_posted(key(1)),
            "the message came: mark forgotten"
        );
        let mut buf = [0u8; 8];
        let zone = unsafe { landing.post(key(2), buf.as_mut_ptr(), 8) };
        assert!(landing.claim_within(key(2), 7, long, &stop).is_none());
        assert!(landing.is_posted(key(2)), "the zone stays for its match");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Marked by another thread while this one waits.
        let t = Instant::now();
        let marker = {
            let l = landing.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                l.mark(key(3));
            })
        };
        assert!(landing.claim_within(key(3), 8, long, &stop).is_none());
        let waited = t.elapsed();
        marker.join().unwrap();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(landing.posted(), 1, "only the zone is left");
        landing.remove(key(2));
        assert!(!zone.close());
    }

    #[test]
    fn claims_need_an_open_zone_of_the_exact_length() {
        let landing = Landing::default();
        let mut buf = [0u8; 8];
        let zone = unsafe { landing.post(key(2), buf.as_mut_ptr(), 8) };
        assert!(landing.claim(key(3), 8).is_none(), "other message");
        assert!(landing.claim(key(2), 7).is_none(), "other length");
        // A failed copy opens the zone again; the match then fills it.
        let claim = landing.claim(key(2), 8).unwrap();
        drop(claim);
        assert!(!zone.landed());
        assert!(zone.fill_from(&[5; 8]));
        assert!(!zone.fill_from(&[6; 8]), "filled once");
        assert!(zone.close());
        assert_eq!(buf, [5; 8]);
        // A zone closed before any message: never written.
        let mut buf2 = [0u8; 4];
        let z2 = unsafe { landing.post(key(4), buf2.as_mut_ptr(), 4) };
        landing.remove(key(4));
        assert!(!z2.close());
        assert!(landing.claim(key(4), 4).is_none());
        assert!(!z2.fill_from(&[1; 4]));
        assert_eq!(buf2, [0; 4]);
    }
}
