//! Randomized, deterministic point-to-point scripts through the
//! communicator's own calls (`isend`, `irecv`, `send`, `recv`, `batch`:
//! channel 0, peerwise, as MPI's), every rank a thread of this process.
//!
//! A seed shared by the ranks makes a global script: for each ordered pair
//! of ranks `(a, b)` (`a == b` included) a list of messages, of sizes
//! across the transports' thresholds, whose bytes follow from
//! `(seed, a, b, index)`. Each rank then issues its part in an order of
//! its own (from a seed of its own), mixing non-blocking, blocking and
//! batched calls, waits for its handles in yet another order, and checks
//! every byte it received: messages of one pair must match their receives
//! in the order both sides posted them.
//!
//! **Why every script completes (it is a valid MPI program).** A rank runs
//! three phases:
//!
//! 1. It posts its *early* receives (most of them) with `irecv` or batches
//!    of receives, waiting for nothing.
//! 2. It issues all its sends, and its *late* receives, interleaved at
//!    random, and now and then waits for one of its handles.
//! 3. It waits for every handle still pending, in a random order.
//!
//! The script marks a message late only if its sender has the lower rank
//! (`a < b`), and only a suffix of a pair's messages (so that both sides
//! post a pair's messages in index order). Phase 2 blocks (a blocking
//! `send` or `recv`, a batch waited at once, a wait on an earlier handle)
//! only on
//!
//! * sends whose receive is early: posted in the receiver's phase 1, which
//!   blocks on nothing, so they complete (as an `MPI_Send` whose receive is
//!   posted);
//! * receives from a lower rank (early or late): by induction on the rank,
//!   every rank below gets through its phase 2 (rank 0 blocks on sends of
//!   the first kind only) and so issues all its sends, and a send, once
//!   issued, matches the receive whenever it is posted.
//!
//! A send whose receive is late is therefore issued non-blocking (alone or
//! in a batch) and its handle is waited in phase 3 only, as is any receive
//! from a higher rank or from itself. Every rank gets through phase 2, so
//! every op is posted and phase 3 completes.
//!
//! On a channel whose ops complete in issue order instead, a blocking send
//! of phase 2 waits behind the rank's phase-1 receives from higher ranks,
//! whose senders are likewise held: the scripts then fail with
//! `ZCCL_TIMEOUT` (20 s here) instead of hanging.

use std::collections::VecDeque;
use std::time::Instant;

mod thread_ranks;

use thread_ranks::job;
use zccl_runtime::{BatchHandle, Communicator, DType, Op, RecvHandle, SendHandle};

/// splitmix64: small, fast and good enough to shuffle a test.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut r = Rng(seed);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Message sizes in bytes, with their weights: on either side of where a
/// message's path changes.
const SIZES: [(usize, u64); 14] = [
    (0, 2),
    (1, 2),
    (8, 4),
    (1000, 4),
    (4096, 2),
    (20 << 10, 3),
    (70 << 10, 3),
    // `flow::EAGER_MAX`: the largest send that completes without an
    // acknowledgement, and the largest a shared-memory ring copies.
    (256 << 10, 2),
    // Acknowledged; copied by CMA on a crowded host (ranks outnumber CPUs).
    ((256 << 10) + 8, 2),
    (300 << 10, 2),
    // `shm::POLL_MAX_CMA_BYTES`, then CMA on any host (more than 1 MiB).
    (1 << 20, 1),
    ((1 << 20) + 8, 1),
    (3 << 20, 1),
    // Plain same-host receives of 4 MiB and more post a buffer of their own.
    (5 << 20, 1),
];

/// Payload bytes of one job's script at most (a message that would go past
/// it is 1000 B instead).
const BUDGET: usize = 24 << 20;

#[derive(Clone, Copy, Debug)]
struct Msg {
    len: usize,
    /// Sent and received as `i32`s (`len` a multiple of 4) rather than bytes.
    words: bool,
    /// Received in phase 2 (see the file's comment), not posted up front.
    late: bool,
}

/// The messages every rank agrees on.
struct Script {
    seed: u64,
    n: u32,
    /// `msgs[a * n + b]`: from `a` to `b`, in order.
    msgs: Vec<Vec<Msg>>,
    /// Random bytes the payloads are cut from ([`Script::payload`]).
    block: Vec<u8>,
}

/// Length of a script's block of random bytes (a prime: a message longer
/// than it does not repeat in step with a power of two).
const BLOCK: usize = 65521;

impl Script {
    fn new(seed: u64, n: u32) -> Self {
        let mut rng = Rng::new(seed);
        let total_weight: u64 = SIZES.iter().map(|s| s.1).sum();
        let mut spent = 0;
        let mut msgs = Vec::new();
        for a in 0..n {
            for b in 0..n {
                let count = if a == b {
                    rng.below(3)
                } else {
                    1 + rng.below(7)
                };
                // Late receives: a suffix of the pair's messages, from a
                // lower rank only.
                let first_late = if a < b && rng.chance(50) {
                    rng.below(count + 1)
                } else {
                    count
                };
                let pair: Vec<Msg> = (0..count)
                    .map(|i| {
                        let mut w = rng.next() % total_weight;
                        let mut len = SIZES[0].0;
                        for &(l, weight) in &SIZES {
                            if w < weight {
                                len = l;
                                break;
                            }
                            w -= weight;
                        }
                        if spent + len > BUDGET {
                            len = 1000;
                        }
                        spent += len;
                        Msg {
                            len,
                            words: len.is_multiple_of(4) && rng.chance(25),
                            late: i >= first_late,
                        }
                    })
                    .collect();
                msgs.push(pair);
            }
        }
        let block = (0..BLOCK.div_ceil(8))
            .flat_map(|_| rng.next().to_le_bytes())
            .take(BLOCK)
            .collect();
        Script {
            seed,
            n,
            msgs,
            block,
        }
    }

    fn pair(&self, a: u32, b: u32) -> &[Msg] {
        &self.msgs[(a * self.n + b) as usize]
    }

    fn msg(&self, a: u32, b: u32, i: usize) -> Msg {
        self.pair(a, b)[i]
    }

    /// The bytes of message `i` from `a` to `b`: the script's block from
    /// an offset of the message's own, round and round, its first 8 bytes
    /// a tag of `(a, b, i)` (copies, not a generator per byte: the test
    /// stays quick in a debug build).
    fn payload(&self, a: u32, b: u32, i: usize) -> Vec<u8> {
        let len = self.msg(a, b, i).len;
        let mut tag = Rng::new(self.seed ^ (u64::from(a) << 48) ^ (u64::from(b) << 32) ^ i as u64);
        let mut v = Vec::with_capacity(len);
        let mut at = tag.below(BLOCK);
        while v.len() < len {
            let take = (BLOCK - at).min(len - v.len());
            v.extend_from_slice(&self.block[at..at + take]);
            at = 0;
        }
        let tag = tag.next().to_le_bytes();
        let head = len.min(8);
        v[..head].copy_from_slice(&tag[..head]);
        v
    }
}

/// One send or receive of a rank's part of the script: message `idx` of
/// the pair.
#[derive(Clone, Copy, Debug)]
enum Item {
    Send { to: u32, idx: usize },
    Recv { from: u32, idx: usize },
}

enum Handle {
    Bytes(RecvHandle<u8>),
    Words(RecvHandle<i32>),
    Send(SendHandle),
    Batch(BatchHandle),
}

/// A handle not waited yet and the items it carries (several for a batch).
struct Pending {
    handle: Handle,
    items: Vec<Item>,
    /// Whether phase 2 may wait for it (see the file's comment).
    early_ok: bool,
}

/// Takes the next item of a random non-empty queue.
fn pop_random(rng: &mut Rng, queues: &mut [VecDeque<Item>]) -> Option<Item> {
    let live: Vec<usize> = (0..queues.len())
        .filter(|&q| !queues[q].is_empty())
        .collect();
    if live.is_empty() {
        return None;
    }
    queues[live[rng.below(live.len())]].pop_front()
}

/// One rank running its part of a script.
struct Rank<'a> {
    c: &'a Communicator,
    s: &'a Script,
    r: u32,
    rng: Rng,
    pending: Vec<Pending>,
    /// Messages received and checked.
    checked: usize,
}

impl Rank<'_> {
    fn words(bytes: &[u8]) -> Vec<i32> {
        zccl_runtime::buffer::vec_from_bytes(bytes)
    }

    /// Whether phase 2 may block on `it` (see the file's comment).
    fn early_ok(&self, it: Item) -> bool {
        match it {
            Item::Send { to, idx } => !self.s.msg(self.r, to, idx).late,
            Item::Recv { from, .. } => from < self.r,
        }
    }

    fn op(&self, it: Item) -> Op {
        match it {
            Item::Send { to, idx } => {
                let data = self.s.payload(self.r, to, idx);
                if self.s.msg(self.r, to, idx).words {
                    Op::send(to, Self::words(&data))
                } else {
                    Op::send(to, data)
                }
            }
            Item::Recv { from, idx } => {
                let m = self.s.msg(from, self.r, idx);
                if m.words {
                    Op::recv::<i32>(from, m.len / 4)
                } else {
                    Op::recv::<u8>(from, m.len)
                }
            }
        }
    }

    /// Checks what came for receive `it`.
    fn check(&mut self, it: Item, dtype: DType, got: &[u8]) {
        let Item::Recv { from, idx } = it else {
            panic!("{it:?} is not a receive")
        };
        let (s, r) = (self.s, self.r);
        let m = s.msg(from, r, idx);
        let want = s.payload(from, r, idx);
        let at = || {
            format!(
                "seed {} n {}: rank {r}, message {idx} from {from}",
                s.seed, s.n
            )
        };
        let want_type = if m.words { DType::I32 } else { DType::U8 };
        assert_eq!(dtype, want_type, "{}", at());
        assert_eq!(got.len(), want.len(), "{}", at());
        if got != &want[..] {
            let k = got.iter().zip(&want).position(|(g, w)| g != w).unwrap();
            panic!("{} ({} B): byte {k} differs", at(), m.len);
        }
        self.checked += 1;
    }

    /// Issues `it` non-blocking.
    fn issue(&mut self, it: Item, early_ok: bool) {
        let c = self.c;
        let handle = match (it, self.op(it)) {
            (Item::Send { .. }, Op::Send { peer, dtype, data }) => {
                Handle::Send(if dtype == DType::I32 {
                    c.isend(peer, Self::words(&data)).unwrap()
                } else {
                    c.isend(peer, data.to_vec()).unwrap()
                })
            }
            (Item::Recv { from, .. }, Op::Recv { dtype, count, .. }) => {
                if dtype == DType::I32 {
                    Handle::Words(c.irecv::<i32>(from, count).unwrap())
                } else {
                    Handle::Bytes(c.irecv::<u8>(from, count).unwrap())
                }
            }
            _ => unreachable!(),
        };
        self.pending.push(Pending {
            handle,
            items: vec![it],
            early_ok,
        });
    }

    /// Issues `its` as one batch.
    fn issue_batch(&mut self, its: Vec<Item>, early_ok: bool) {
        let ops = its.iter().map(|&it| self.op(it)).collect();
        let handle = Handle::Batch(self.c.batch(ops).unwrap());
        self.pending.push(Pending {
            handle,
            items: its,
            early_ok,
        });
    }

    /// Waits for `p` and checks what it received.
    fn finish(&mut self, p: Pending) {
        let at = format!("seed {} n {}", self.s.seed, self.s.n);
        match p.handle {
            Handle::Send(h) => h.wait().unwrap_or_else(|e| panic!("{at}: {e}")),
            Handle::Bytes(h) => {
                let got = h.wait().unwrap_or_else(|e| panic!("{at}: {e}"));
                self.check(p.items[0], DType::U8, got.as_bytes());
            }
            Handle::Words(h) => {
                let got = h.wait().unwrap_or_else(|e| panic!("{at}: {e}"));
                self.check(p.items[0], DType::I32, got.as_bytes());
            }
            Handle::Batch(h) => {
                let out = h.wait().unwrap_or_else(|e| panic!("{at}: {e}"));
                for (it, got) in p.items.into_iter().zip(out) {
                    if let Some(got) = got {
                        self.check(it, got.dtype(), got.bytes());
                    }
                }
            }
        }
    }

    /// Issues `it` and waits for it: `send`/`recv`, or `isend`/`irecv`
    /// and a wait.
    fn blocking(&mut self, it: Item) {
        if self.rng.chance(50) {
            self.issue(it, true);
            let p = self.pending.pop().unwrap();
            return self.finish(p);
        }
        let c = self.c;
        let at = format!("seed {} n {}", self.s.seed, self.s.n);
        let fail = |e: zccl_runtime::Error| -> ! { panic!("{at}: {e}") };
        match (it, self.op(it)) {
            (Item::Send { .. }, Op::Send { peer, dtype, data }) => {
                let sent = if dtype == DType::I32 {
                    c.send(peer, Self::words(&data))
                } else {
                    c.send(peer, data.to_vec())
                };
                sent.unwrap_or_else(|e| fail(e));
            }
            (Item::Recv { from, .. }, Op::Recv { dtype, count, .. }) => {
                if dtype == DType::I32 {
                    let got = c.recv::<i32>(from, count).unwrap_or_else(|e| fail(e));
                    self.check(it, dtype, got.as_bytes());
                } else {
                    let got = c.recv::<u8>(from, count).unwrap_or_else(|e| fail(e));
                    self.check(it, dtype, got.as_bytes());
                }
            }
            _ => unreachable!(),
        }
    }

    /// Phase 1: posts the early receives, from random sources in turn
    /// (each source's in index order), alone or in batches.
    fn post_early_receives(&mut self) {
        let (s, r) = (self.s, self.r);
        let mut queues: Vec<VecDeque<Item>> = (0..s.n)
            .map(|from| {
                (0..s.pair(from, r).len())
                    .filter(|&idx| !s.msg(from, r, idx).late)
                    .map(|idx| Item::Recv { from, idx })
                    .collect()
            })
            .collect();
        while let Some(it) = pop_random(&mut self.rng, &mut queues) {
            if self.rng.chance(25) {
                let mut its = vec![it];
                for _ in 0..1 + self.rng.below(3) {
                    its.extend(pop_random(&mut self.rng, &mut queues));
                }
                let ok = its.iter().all(|&it| self.early_ok(it));
                self.issue_batch(its, ok);
            } else {
                let ok = self.early_ok(it);
                self.issue(it, ok);
            }
        }
    }

    /// Phase 2: the sends and late receives, interleaved at random (each
    /// peer's in index order), with waits where they cannot deadlock.
    fn send_and_receive_late(&mut self) {
        let (s, r) = (self.s, self.r);
        let mut queues: Vec<VecDeque<Item>> = (0..s.n)
            .map(|to| {
                (0..s.pair(r, to).len())
                    .map(|idx| Item::Send { to, idx })
                    .collect()
            })
            .chain((0..s.n).map(|from| {
                (0..s.pair(from, r).len())
                    .filter(|&idx| s.msg(from, r, idx).late)
                    .map(|idx| Item::Recv { from, idx })
                    .collect()
            }))
            .collect();
        while let Some(it) = pop_random(&mut self.rng, &mut queues) {
            if self.rng.chance(20) {
                let mut its = vec![it];
                for _ in 0..1 + self.rng.below(3) {
                    its.extend(pop_random(&mut self.rng, &mut queues));
                }
                let ok = its.iter().all(|&it| self.early_ok(it));
                self.issue_batch(its, ok);
                if ok && self.rng.chance(50) {
                    let p = self.pending.pop().unwrap();
                    self.finish(p);
                }
            } else if self.early_ok(it) && self.rng.chance(40) {
                self.blocking(it);
            } else {
                let ok = self.early_ok(it);
                self.issue(it, ok);
            }
            // Now and then, wait for a handle phase 2 may wait for.
            if self.rng.chance(25) {
                let ok: Vec<usize> = (0..self.pending.len())
                    .filter(|&i| self.pending[i].early_ok)
                    .collect();
                if !ok.is_empty() {
                    let i = ok[self.rng.below(ok.len())];
                    let p = self.pending.swap_remove(i);
                    self.finish(p);
                }
            }
        }
    }

    /// Phase 3: waits for every pending handle, in a random order.
    fn wait_all(&mut self) {
        while !self.pending.is_empty() {
            let i = self.rng.below(self.pending.len());
            let p = self.pending.swap_remove(i);
            self.finish(p);
        }
    }
}

/// Runs `s` on this rank; the number of messages it received and checked.
fn run_rank(c: &Communicator, s: &Script) -> usize {
    let r = c.rank();
    let mut rank = Rank {
        c,
        s,
        r,
        rng: Rng::new(s.seed ^ 0x5eed ^ (u64::from(r) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)),
        pending: Vec::new(),
        checked: 0,
    };
    rank.post_early_receives();
    rank.send_and_receive_late();
    rank.wait_all();
    rank.checked
}

/// Runs the scripts of `seeds` on 3 and 4 ranks with `extra` settings;
/// odd seeds with a flow-control window of 1 MiB, so that the larger
/// messages (and those past a full window) wait for a clear-to-send.
fn run_scripts(extra: &'static [(&'static str, &'static str)], seeds: std::ops::Range<u64>) {
    for n in [3u32, 4] {
        for seed in seeds.clone() {
            let window = if seed.is_multiple_of(2) {
                "67108864"
            } else {
                "1048576"
            };
            let mut env = extra.to_vec();
            env.push(("ZCCL_MAX_UNEXPECTED_BYTES", window));
            let t = Instant::now();
            let got = job(n, &env, move |c| {
                let s = Script::new(seed, c.size());
                run_rank(&c, &s)
            });
            let took = t.elapsed();
            let s = Script::new(seed, n);
            let want: Vec<usize> = (0..n)
                .map(|b| (0..n).map(|a| s.pair(a, b).len()).sum())
                .collect();
            assert_eq!(got, want, "seed {seed} n {n} {extra:?}");
            let bytes: usize = s.msgs.iter().flatten().map(|m| m.len).sum();
            eprintln!(
                "seed {seed} n {n} {extra:?}: {} messages, {:.1} MiB in {took:.2?}",
                want.iter().sum::<usize>(),
                bytes as f64 / f64::from(1 << 20)
            );
        }
    }
}

/// Random scripts of sends and receives, non-blocking, blocking and
/// batched, issued and waited in random orders, complete and deliver every
/// byte in per-pair order over the default transports (shared memory
/// between the threads' ranks: ring, CMA and landing paths by size). The
/// communicator's own calls complete per peer and direction, as MPI's, so
/// a blocking send after receives from other peers completes; with the
/// channel's issue order the scripts time out.
#[test]
fn random_scripts_complete_in_order_over_shared_memory() {
    run_scripts(&[], 0..16);
}

/// The same random scripts over TCP loopback (shared memory disabled):
/// the per-peer order and completion do not depend on the transport.
#[test]
fn random_scripts_complete_in_order_over_tcp() {
    run_scripts(&[("ZCCL_SHM_DISABLE", "1")], 100..116);
}
