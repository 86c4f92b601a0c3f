//! The shared-memory transport between ranks of one host and one network
//! namespace.
//!
//! * **Who is local.** [`host_identity`] is `/proc/sys/kernel/random/boot_id`
//!   plus the inode of `/proc/self/ns/net` (or `ZCCL_HOST_ID`); the runtime
//!   publishes it in the address book, and two ranks use shared memory when
//!   their identities are equal, they read the same [`clock`](crate::clock)
//!   (its poll leases are written in its ticks) and both published a segment tag (a rank with
//!   `ZCCL_SHM_DISABLE=1` publishes none, so the pair falls back to TCP on both
//!   sides).
//! * **Segments.** One POSIX shared-memory segment per pair of ranks `a < b`,
//!   created by `a` with `shm_open(O_CREAT | O_EXCL, 0600)` + `ftruncate`,
//!   mapped with `memmap2`, named [`segment_name`]:
//!   `/zccl-<job>-<tag of a>-<a>-<b>` where `<job>` is [`job_tag`] (a 64-bit
//!   hash of the job secret, so the secret itself never appears in
//!   `/dev/shm`) and the tag is a random value rank `a` published, so
//!   concurrent jobs, and reruns with the same secret, never collide.
//! * **Cleanup.** Rank `b` unlinks the name as soon as it has mapped the
//!   segment, then sets the `attached` flag; rank `a` waits for that flag
//!   during setup (and unlinks the name itself if `b` never attaches). From
//!   then on the segment has no name: the kernel frees it when the last of the
//!   two processes unmaps it or exits, so neither a clean close, an abort, a
//!   panic nor `kill -9` leaves anything in `/dev/shm`. (Only a rank killed in
//!   the few milliseconds between creating a segment and its peer opening it
//!   can leave one behind.)
//! * **Rings.** The segment holds two single-producer/single-consumer byte
//!   rings (`a → b` and `b → a`), each of [`ShmConfig::ring_bytes`]
//!   (`ZCCL_SHM_RING_BYTES`, 4 MiB by default; smaller where `/dev/shm`
//!   cannot hold the rings of every local pair, see `fit_ring_bytes` in
//!   `segment.rs`). Where a job's rings on the host together take at most
//!   256 MiB (8 ranks of 4 MiB rings), both ranks map every page at setup
//!   (`Segment::prefault`, `MADV_POPULATE_WRITE`) instead of faulting each
//!   in on the rings' first lap (measured, 2 ranks: `zccl bench sendrecv
//!   -b 64K -n 20` 92–152 → 11–15 µs; a job's start 20 ms longer with 2
//!   ranks, 150 ms with 8 on 2 vCPUs). Positions are monotonic `u64`
//!   counters (`head` written only by the producer, `tail` only by the
//!   consumer, on separate cache lines). A message is a 32-byte record header
//!   followed by its payload: published whole when the ring has room for
//!   all of it (the reader then copies it straight into its receive's
//!   buffer), else streamed through the ring in pieces of at most 256 KiB
//!   (`STREAM_PIECE`), so messages of any size pass through a small ring
//!   and both sides copy at once. Payload bytes from 64 KiB up are written
//!   with stores that bypass the caches (`copy::copy_raw_shared`): the
//!   peer's core reads them, from memory, instead of from lines the
//!   writer's core holds modified (2 ranks on 2 vCPUs, medians of 5
//!   interleaved rounds: sendrecv 64 KiB 17.7 -> 9.8 us, 256 KiB 67 -> 33
//!   us; without CMA, 1 MiB 420 -> 207 us; docs/performance.md). Payloads
//!   of 16-64 KiB are written plain or streamed as the ring's consumer
//!   asks, from the times its polled copies of each kind take
//!   (`stream_choice.rs`): which is faster depends on whether the two
//!   cores share a cache. A producer that finds its ring
//!   empty more than 64 KiB into the data area writes a pad record to the
//!   end of it and its small record (up to 8 KiB) at the start
//!   (`Ring::idle_gap` in `ring.rs`): a stream of small messages
//!   the consumer keeps up with stays in the first pages of the ring, warm
//!   in both caches, instead of sweeping all 4 MiB (measured: the first
//!   thousands of 1 KiB operations of a job took a page fault every few
//!   messages, 4-rank all_reduce ~2x slower than later).
//! * **CMA (single copy).** A data message of at least
//!   [`ShmConfig::cma_min_bytes`] (more than 1 MiB by default; more than
//!   256 KiB, [`ShmConfig::crowded_cma_min_bytes`], on a host with more
//!   ranks than CPUs; 0 turns CMA off) does
//!   not go through the ring: the sender writes a 64-byte record carrying its
//!   pid, the address and length of the payload and a sequence number, and
//!   keeps the payload (`Bytes`) alive; the receiver's reader thread copies
//!   the payload straight from the sender's memory into the receive buffer
//!   with `process_vm_readv` (cross-memory attach, as Open MPI's `vader`
//!   does), then publishes how many such records it has copied in a counter
//!   of the ring's consumer line and wakes the sender's reader thread, which
//!   drops the kept payloads. A counter rather than a release record on the
//!   reverse ring: it needs no ring space, so a reader never waits for the
//!   peer while it holds a message (no deadlock), and a clean close can wait
//!   for the exact count. Whether one rank may read the other (ptrace
//!   rights: Yama, containers, PID namespaces) is probed once per direction
//!   at setup by reading a known word of the peer; where that fails, the
//!   pair keeps the ring copy, and the reason is logged once at INFO. Kept
//!   payloads are dropped when the receiver has copied them, or with the
//!   link (a dead peer); a clean close waits (up to [`CMA_CLOSE_WAIT`]) until
//!   the peer has copied them all. A payload may also be **lent** memory
//!   ([`Transport::send_lent`]: a slice of the user's buffer, read by the
//!   peer only). When the sender gives up on such a send (a timeout,
//!   [`Transport::withdraw`]) or aborts, it may reuse the memory at once, so
//!   it first marks the ring withdrawn (a word of the producer line, then a
//!   full fence); the reader checks the mark after every CMA copy (after a
//!   fence) and rejects a copy made after it, closing the link as lost, so
//!   bytes the owner changed are never delivered as data. An abort
//!   withdraws and then drops the kept payloads. A record with an impossible length,
//!   address, pid or sequence number, and a failed copy (`EFAULT`: the
//!   buffer is gone; `ESRCH`: the process is gone), close the link as
//!   [`CloseReason::Lost`]. Records stay in ring order, whatever their kind.
//! * **Waiting.** A thread that finds the ring empty (reader) or full
//!   (writer) spins for [`ShmConfig::spin_iterations`] rounds of
//!   `spin_loop()` (microseconds: on a 2-core machine a spinning rank would
//!   starve its peer), then sleeps with `FUTEX_WAIT` on a sequence word in the
//!   shared segment, with a timeout of [`ShmConfig::wait_slice`] so that
//!   closing is noticed. The other side bumps the word and calls `FUTEX_WAKE`
//!   only when the waiter announced itself. The reader thread waits for data
//!   *without* holding the ring's consumer lock, then takes the lock and
//!   reads one whole record (it keeps the lock while a large message streams
//!   in); when it finds the ring empty under the lock (a [`Transport::poll`]
//!   took the message meanwhile) it simply waits again, on a fresh sequence
//!   value, so no wake-up is lost.
//! * **Threads.** Per peer, one writer thread (fed by an unbounded queue, so
//!   [`Transport::send`] never blocks) and one reader thread that delivers
//!   whole messages as [`TransportEvent::Message`]. A sender writes a message
//!   into the ring itself, without waking the writer thread, when nothing is
//!   queued before it and the ring has room for all of its record (a
//!   message of any size, or a CMA record). The rings are always drained by the reader
//!   thread, whatever the application does. Per transport, one lease
//!   watcher thread (see Polling below).
//! * **Polling.** [`Transport::poll`] lets a user thread that waits on a
//!   handle take small messages (payload at most [`POLL_MAX_PAYLOAD`]) that
//!   are already complete in a ring, without waking the reader thread:
//!   per link (round robin), it `try_lock`s the consumer lock and reads the
//!   record at the tail if it is a whole data or control record, or a CMA
//!   record its producer left to polls: one of at most
//!   [`POLL_MAX_CMA_BYTES`], and, where the host has a CPU per rank, a
//!   larger one written when the peer had copied every earlier CMA record
//!   (a pipeline's later pieces, written while earlier ones wait, stay the
//!   reader thread's, which copies them while the waiting thread combines
//!   the last). The poll makes the copy itself: a copy never waits for the
//!   peer; a CMA record that is the last one in the ring and whose receive
//!   is not posted yet (no landing zone, no mark) is left there, by polls
//!   and the reader thread, for up to about what a second copy would cost,
//!   so that its bytes go once, straight into the receive's buffer; the
//!   reader thread waits out the rest of that time for a larger one it
//!   takes). Goodbyes, larger CMA records, large and partly written
//!   messages are left to the reader thread, so a poll
//!   never waits. A poll also drops the kept CMA payloads the peers have
//!   copied: a receiver that finishes a copy wakes the sender's reader
//!   thread for that only when no thread of the sender polls (the last
//!   poller to stop wakes it if a release is left). Both paths read records in ring order
//!   under the lock, and the callback runs under it; but a message that the
//!   reader thread already sent as an event may still sit in the event
//!   channel when a later message is delivered by a poll, so the layer above
//!   must match messages by their keys (`comm`, `channel`, `seq`), not by
//!   arrival order across the two paths. While a thread polls
//!   ([`Transport::set_polling`], a counter in the ring's consumer line), a
//!   producer that writes a small record does not wake the reader thread for
//!   it (that wake-up, on a 2-core machine, preempts the very thread that
//!   polls); the last poller to stop wakes the reader thread if anything is
//!   left, so either it sees the record or the producer sees no poller. A
//!   reader thread that is awake anyway (woken for a large record) also
//!   leaves a record a poll can take to the polling threads while they are
//!   attentive (one polls, or the lease runs): once it took one, it used to
//!   find the next within its spin and take every message from then on,
//!   through the engine's task (two wake-ups each). Left records wait for
//!   the next poll, or for the lease's end: one **lease watcher** thread
//!   per transport wakes then, looks at every ring, and wakes the reader
//!   threads that have something left (`watch`); the reader threads
//!   themselves sleep whole wait slices, so a busy rank wakes one thread
//!   per lease, not one per peer. A reader thread woken, while nobody
//!   polled, for a large CMA record left to polls whose receive is not
//!   posted yet waits for that post without the consumer lock, then looks
//!   again: the thread that posts a receive most often polls for it next,
//!   and then copies it itself rather than wait beside the reader thread's
//!   copy (`recv`'s `Look::AwaitPost`); a record written behind it ends
//!   that wait, as it ends any wait of a record for its receive (it would
//!   wait as long). Where ranks have no second CPU each, a
//!   waiting thread whose poll finds nothing sleeps rather than spins while
//!   a reader thread copies a large record
//!   ([`Transport::reader_copying`](crate::Transport::reader_copying)).
//! * **Dead peers.** This transport only reports what it sees in the ring: a
//!   clean goodbye record ([`CloseReason::Clean`], after every message sent
//!   before it) and corrupt ring state ([`CloseReason::Lost`]). A peer that is
//!   killed or stopped is detected by the TCP connection that
//!   [`crate::hybrid::HybridTransport`] keeps to every peer (EOF, heartbeats),
//!   which names the segment in its report.
//!
//! [`Transport::send`]: crate::Transport::send
//! [`Transport::send_lent`]: crate::Transport::send_lent
//! [`Transport::withdraw`]: crate::Transport::withdraw
//! [`Transport::poll`]: crate::Transport::poll
//! [`Transport::set_polling`]: crate::Transport::set_polling
//! [`TransportEvent::Message`]: crate::TransportEvent::Message
//! [`CloseReason::Lost`]: crate::CloseReason::Lost
//! [`CloseReason::Clean`]: crate::CloseReason::Clean

// The code, one idea per file:
// * `config`: tuning and setup inputs;
// * `segment`: who is local, segment names, the segment header layout,
//   creating, opening and unlinking segments;
// * `futex`: waiting and waking on a word of the segment;
// * `ring`: one single-producer/single-consumer byte ring (positions,
//   publishing, consuming, waiting), and the layout of its control block;
// * `record`: the record header and CMA extension codec (pure, like
//   `crate::frame`);
// * `link`: one peer's state (its two rings, the kept CMA payloads, their
//   release and withdrawal);
// * `send`: writing a message into a link (the writer thread, inline sends);
// * `recv`: taking records out of a link (the reader thread, polls, CMA
//   copies);
// * `setup`: `ShmTransport::establish`;
// * `transport`: `ShmTransport` and its `Transport` implementation;
// * `watch`: the lease watcher, which hands records left under a poll
//   lease that ran out to the reader threads.
mod config;
mod cpus;
mod futex;
mod link;
mod record;
mod recv;
mod ring;
mod segment;
mod send;
mod setup;
mod stream_choice;
#[cfg(test)]
mod testutil;
mod transport;
mod watch;

pub use config::{
    CMA_CLOSE_WAIT, CMA_MIN_BYTES, CROWDED_CMA_MIN_BYTES, CROWDED_POLL_CMA, FULL_HOST_POLL_LEASE,
    POLL_LEASE, POLL_MAX_CMA_BYTES, POLL_MAX_PAYLOAD, STREAM_ADAPT_MIN, ShmConfig, ShmSetup,
};
pub use cpus::{CpuMask, crowded, full, shared_cpus, shared_cpus_of};
pub use segment::{host_identity, job_tag, segment_name, valid_tag};
pub use transport::ShmTransport;
