//! The sending side of one routed transfer: which chunk goes on which lane,
//! and when (pure: time is an input, decisions are outputs).
//!
//! The planner's lanes are the paths; this state machine clocks chunks onto
//! them by acknowledgement, so each lane carries what it can:
//!
//! * each lane keeps at most a **window** of chunks unacknowledged: enough
//!   for [`WINDOW_DELAY`] of its measured rate ([`MIN_WINDOW`] to [`MAX_WINDOW`]
//!   chunks). A lane that slows gets fewer chunks because its acks come
//!   back slower; its rate estimate (from the acks) shrinks its window;
//! * a lane whose NIC goes down ([`Outgoing::lane_down`]), or that stops
//!   acknowledging for longer than it plausibly should
//!   ([`Outgoing::check_stalls`]), is dropped and its unacknowledged chunks
//!   go back to the front of the queue for the other lanes;
//! * when the queue is empty, an idle lane **re-sends** the chunk another
//!   lane is expected to finish last, if it would finish it sooner (tail
//!   hedging: a slow lane does not set the pace of the end);
//! * the receiver drops duplicates, so a chunk sent twice, or re-sent
//!   after its lane came back, is delivered once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::plan::NicId;

/// A lane's window holds about this much of its rate.
pub const WINDOW_DELAY: Duration = Duration::from_millis(100);
/// Most chunks in flight on one lane.
pub const MAX_WINDOW: usize = 4;
/// Fewest chunks in flight on one lane: one being sent while the ack of
/// the previous one travels back (with one, the NIC idles a round trip per
/// chunk, and a rate measured from such acks would shrink the window
/// further).
pub const MIN_WINDOW: usize = 2;
/// A lane is stalled when its oldest chunk waits this long, at least.
pub const MIN_STALL: Duration = Duration::from_millis(300);

/// One lane of a transfer as the executor runs it.
#[derive(Debug, Clone)]
pub struct LaneRun {
    /// NIC the lane leaves on.
    pub src_nic: NicId,
    /// NIC it arrives on.
    pub dst_nic: NicId,
    /// Proxy rank that relays it (None: the sender itself).
    pub proxy: Option<u32>,
    /// Estimated rate, bytes/s.
    pub rate: f64,
    /// Chunks sent on it and not acknowledged yet, oldest first, with the
    /// time they were sent.
    outstanding: VecDeque<(usize, Instant)>,
    last_ack: Option<Instant>,
    /// Taken out of this transfer (NIC down or stalled).
    pub dead: bool,
    /// Bytes acknowledged on it.
    pub acked_bytes: u64,
}

impl LaneRun {
    /// A lane starting at `rate` bytes/s.
    pub fn new(src_nic: NicId, dst_nic: NicId, proxy: Option<u32>, rate: f64) -> Self {
        LaneRun {
            src_nic,
            dst_nic,
            proxy,
            rate: rate.max(1.0),
            outstanding: VecDeque::new(),
            last_ack: None,
            dead: false,
            acked_bytes: 0,
        }
    }

    /// Chunks it has in flight.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }
}

/// One decision: send chunk `chunk` on lane `lane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    /// Lane index.
    pub lane: usize,
    /// Chunk index.
    pub chunk: usize,
    /// A copy of a chunk already in flight elsewhere (tail hedging or
    /// re-send after a failure).
    pub resend: bool,
}

/// The sending state of one routed transfer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `(offset, len)` of every chunk.
    pub chunks: Vec<(u64, u64)>,
    /// The lanes.
    pub lanes: Vec<LaneRun>,
    acked: Vec<bool>,
    copies: Vec<u8>,
    sent_before: Vec<bool>,
    queue: VecDeque<usize>,
    remaining: usize,
}

impl Outgoing {
    /// A transfer of `chunks` over `lanes`, nothing sent yet.
    pub fn new(chunks: Vec<(u64, u64)>, lanes: Vec<LaneRun>) -> Self {
        let n = chunks.len();
        Outgoing {
            chunks,
            lanes,
            acked: vec![false; n],
            copies: vec![0; n],
            sent_before: vec![false; n],
            queue: (0..n).collect(),
            remaining: n,
        }
    }

    /// Every chunk acknowledged.
    pub fn done(&self) -> bool {
        self.remaining == 0
    }

    /// Bytes not yet acknowledged on each lane's source NIC.
    pub fn backlog(&self) -> impl Iterator<Item = (NicId, u64)> + '_ {
        self.lanes.iter().map(|l| {
            let b = l
                .outstanding
                .iter()
                .map(|&(c, _)| self.chunks[c].1)
                .sum::<u64>();
            (l.src_nic, b)
        })
    }

    fn chunk_len(&self, c: usize) -> f64 {
        self.chunks[c].1.max(1) as f64
    }

    fn window(&self, l: usize) -> usize {
        let lane = &self.lanes[l];
        let typical = self.chunks.first().map_or(1.0, |c| c.1.max(1) as f64);
        let w = (lane.rate * WINDOW_DELAY.as_secs_f64() / typical).ceil() as usize;
        w.clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// When lane `l` is expected to finish the chunk at position `pos` of
    /// its outstanding list.
    fn expected_finish(&self, l: usize, pos: usize) -> Option<Instant> {
        let lane = &self.lanes[l];
        let start = lane.last_ack.max(lane.outstanding.front().map(|o| o.1))?;
        let bytes: f64 = lane
            .outstanding
            .iter()
            .take(pos + 1)
            .map(|&(c, _)| self.chunk_len(c))
            .sum();
        Some(start + Duration::from_secs_f64(bytes / lane.rate))
    }

    /// What to send now.
    pub fn dispatch(&mut self, now: Instant) -> Vec<Dispatch> {
        let mut out = Vec::new();
        if self.lanes.iter().all(|l| l.dead) {
            return out;
        }
        // Fill windows, lanes in turn, so chunks interleave over lanes.
        loop {
            let mut progressed = false;
            for l in 0..self.lanes.len() {
                if self.lanes[l].dead || self.lanes[l].outstanding.len() >= self.window(l) {
                    continue;
                }
                while let Some(c) = self.queue.pop_front() {
                    if self.acked[c] {
                        continue;
                    }
                    let resend = std::mem::replace(&mut self.sent_before[c], true);
                    self.copies[c] += 1;
                    self.lanes[l].outstanding.push_back((c, now));
                    out.push(Dispatch {
                        lane: l,
                        chunk: c,
                        resend,
                    });
                    progressed = true;
                    break;
                }
            }
            if !progressed {
                break;
            }
        }
        if !self.queue.is_empty() {
            return out;
        }
        // Tail hedging: an idle lane takes over the chunk expected to finish
        // last, when it would finish it sooner.
        for l in 0..self.lanes.len() {
            if self.lanes[l].dead || !self.lanes[l].outstanding.is_empty() {
                continue;
            }
            let mut best: Option<(Instant, usize)> = None;
            for m in (0..self.lanes.len()).filter(|&m| m != l) {
                for pos in 0..self.lanes[m].outstanding.len() {
                    let c = self.lanes[m].outstanding[pos].0;
                    if self.acked[c] || self.copies[c] > 1 {
                        continue;
                    }
                    let Some(fin) = self.expected_finish(m, pos) else {
                        continue;
                    };
                    if best.is_none_or(|(f, _)| fin > f) {
                        best = Some((fin, c));
                    }
                }
            }
            if let Some((fin, c)) = best {
                let mine = now + Duration::from_secs_f64(self.chunk_len(c) / self.lanes[l].rate);
                if mine < fin {
                    self.copies[c] += 1;
                    self.lanes[l].outstanding.push_back((c, now));
                    out.push(Dispatch {
                        lane: l,
                        chunk: c,
                        resend: true,
                    });
                }
            }
        }
        out
    }

    /// Chunk `chunk` arrived, on lane `lane`. Returns whether it was new.
    pub fn on_ack(&mut self, chunk: usize, lane: usize, now: Instant) -> bool {
        if chunk >= self.chunks.len() || self.acked[chunk] {
            return false;
        }
        self.acked[chunk] = true;
        self.remaining -= 1;
        let len = self.chunk_len(chunk);
        if let Some(l) = self.lanes.get_mut(lane)
            && let Some(pos) = l.outstanding.iter().position(|o| o.0 == chunk)
        {
            let sent = l.outstanding[pos].1;
            let since = l.last_ack.map_or(sent, |a| a.max(sent));
            let dt = now.saturating_duration_since(since).as_secs_f64();
            if dt > 0.0 {
                let sample = len / dt;
                l.rate = 0.7 * l.rate + 0.3 * sample;
            }
            l.last_ack = Some(now);
            l.acked_bytes += len as u64;
        }
        for l in &mut self.lanes {
            l.outstanding.retain(|o| o.0 != chunk);
        }
        true
    }

    /// Takes every lane leaving on or arriving at `nic` out of this
    /// transfer; their unacknowledged chunks go back to the queue. Returns
    /// how many chunks were re-queued.
    pub fn lane_down(&mut self, nic: NicId) -> usize {
        let mut n = 0;
        for l in 0..self.lanes.len() {
            if !self.lanes[l].dead && (self.lanes[l].src_nic == nic || self.lanes[l].dst_nic == nic)
            {
                n += self.kill(l);
            }
        }
        n
    }

    /// Brings lanes on `nic` back (its link is up again).
    pub fn lane_up(&mut self, nic: NicId) {
        for l in &mut self.lanes {
            if l.src_nic == nic || l.dst_nic == nic {
                l.dead = false;
            }
        }
    }

    fn kill(&mut self, l: usize) -> usize {
        self.lanes[l].dead = true;
        let lost: Vec<usize> = self.lanes[l].outstanding.drain(..).map(|o| o.0).collect();
        let mut n = 0;
        for &c in lost.iter().rev() {
            self.copies[c] = self.copies[c].saturating_sub(1);
            if !self.acked[c] && self.copies[c] == 0 {
                self.queue.push_front(c);
                n += 1;
            }
        }
        n
    }

    /// Lanes whose oldest chunk has waited far longer than their rate
    /// explains: they are taken out (as by [`Outgoing::lane_down`]) and
    /// their indices returned. The last live lane is never taken out.
    pub fn check_stalls(&mut self, now: Instant) -> Vec<usize> {
        let mut stalled = Vec::new();
        for l in 0..self.lanes.len() {
            let live = self.lanes.iter().filter(|x| !x.dead).count();
            let lane = &self.lanes[l];
            if lane.dead || live <= 1 {
                continue;
            }
            let Some(&(c, sent)) = lane.outstanding.front() else {
                continue;
            };
            let since = lane.last_ack.map_or(sent, |a| a.max(sent));
            let expect = self.window(l) as f64 * self.chunk_len(c) / lane.rate;
            let limit = MIN_STALL.max(Duration::from_secs_f64(4.0 * expect));
            if now.saturating_duration_since(since) > limit {
                self.kill(l);
                stalled.push(l);
            }
        }
        stalled
    }

    /// Brings every lane back when all of them were taken out (better to
    /// retry than to wait for the deadline).
    pub fn revive_if_all_dead(&mut self) -> bool {
        if !self.lanes.is_empty() && self.lanes.iter().all(|l| l.dead) {
            for l in &mut self.lanes {
                l.dead = false;
            }
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    fn nic(i: usize) -> NicId {
        NicId { host: 0, index: i }
    }

    fn transfer(n: usize, rates: &[f64]) -> Outgoing {
        let chunks = (0..n).map(|i| (i as u64 * 1000, 1000)).collect();
        let lanes = rates
            .iter()
            .enumerate()
            .map(|(i, &r)| LaneRun::new(nic(i), NicId { host: 1, index: i }, None, r))
            .collect();
        Outgoing::new(chunks, lanes)
    }

    /// Simulates lanes of the given true rates (bytes/s), serving chunks
    /// in order; returns the completion time and the chunks sent per lane.
    fn simulate(o: &mut Outgoing, true_rates: &[f64], fail: Option<(usize, f64)>) -> (f64, usize) {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut busy_until = vec![0.0f64; true_rates.len()];
        let mut events: Vec<(f64, usize, usize)> = Vec::new(); // (time, lane, chunk)
        let mut now = 0.0;
        let mut sends = 0;
        let mut failed = false;
        for _ in 0..100_000 {
            if let Some((lane, when)) = fail
                && !failed
                && now >= when
            {
                failed = true;
                events.retain(|e| e.1 != lane);
                o.lane_down(o.lanes[lane].src_nic);
            }
            for d in o.dispatch(at(now)) {
                sends += 1;
                let start = busy_until[d.lane].max(now);
                let end = start + 1000.0 / true_rates[d.lane];
                busy_until[d.lane] = end;
                if !(failed && Some(d.lane) == fail.map(|f| f.0)) {
                    events.push((end, d.lane, d.chunk));
                }
            }
            if o.done() {
                return (now, sends);
            }
            events.sort_by(|a, b| a.0.total_cmp(&b.0));
            let next_fail = fail.filter(|_| !failed).map(|f| f.1);
            match (events.first().copied(), next_fail) {
                (Some(e), Some(f)) if f < e.0 => now = f,
                (Some((t, l, c)), _) => {
                    events.remove(0);
                    now = t;
                    o.on_ack(c, l, at(now));
                }
                (None, Some(f)) => now = f,
                (None, None) => {
                    now += 0.05;
                    o.check_stalls(at(now));
                    o.revive_if_all_dead();
                }
            }
        }
        panic!("did not finish");
    }

    #[test]
    fn every_chunk_is_acked_exactly_once_and_lanes_share() {
        let mut o = transfer(100, &[MB, MB, MB, MB]);
        let (t, sends) = simulate(&mut o, &[MB, MB, MB, MB], None);
        assert!(o.done());
        // 100 chunks of 1 kB over 4 lanes of 1 MB/s: 25 ms ideal.
        assert!(t < 0.028, "took {t}");
        assert!(sends <= 104, "{sends} sends");
        for l in &o.lanes {
            assert!(l.acked_bytes >= 20_000, "{:?}", l.acked_bytes);
        }
    }

    #[test]
    fn a_slow_lane_gets_fewer_chunks_and_does_not_set_the_pace() {
        // Planned at equal rates; one lane really runs at a quarter.
        let mut o = transfer(200, &[MB, MB, MB, MB]);
        let (t, _) = simulate(&mut o, &[MB, MB, MB, MB / 4.0], None);
        let ideal = 200.0 * 1000.0 / (3.25 * MB);
        assert!(t < ideal / 0.9, "took {t}, ideal {ideal}");
        assert!(o.lanes[3].acked_bytes < o.lanes[0].acked_bytes / 2);
    }

    #[test]
    fn a_lane_that_goes_down_has_its_chunks_resent_elsewhere() {
        let mut o = transfer(200, &[MB, MB, MB, MB]);
        let (t, _) = simulate(&mut o, &[MB, MB, MB, MB], Some((2, 0.02)));
        assert!(o.done());
        assert!(o.lanes[2].dead);
        // 200 kB: 20 ms on 4 lanes, the remaining ~120 kB on 3.
        let bound = 0.02 + 120_000.0 / (3.0 * MB);
        assert!(t < bound * 1.2, "took {t}, bound {bound}");
    }

    #[test]
    fn a_silent_lane_is_found_stalled_and_routed_around() {
        let mut o = transfer(10, &[MB, MB]);
        let t0 = Instant::now();
        let sent = o.dispatch(t0);
        assert!(sent.iter().any(|d| d.lane == 1));
        // Lane 0 delivers everything it gets; lane 1 never answers.
        let mut now = t0;
        for _ in 0..100 {
            now += Duration::from_millis(20);
            let lane0: Vec<usize> = o.lanes[0].outstanding.iter().map(|x| x.0).collect();
            for c in lane0 {
                o.on_ack(c, 0, now);
            }
            o.check_stalls(now);
            o.dispatch(now);
            if o.done() {
                break;
            }
        }
        assert!(o.done());
        assert!(o.lanes[1].dead);
        // The last live lane is never declared stalled.
        assert!(!o.lanes[0].dead);
    }

    #[test]
    fn duplicate_and_unknown_acks_are_ignored() {
        let mut o = transfer(3, &[MB]);
        let now = Instant::now();
        o.dispatch(now);
        assert!(o.on_ack(1, 0, now));
        assert!(!o.on_ack(1, 0, now));
        assert!(!o.on_ack(99, 0, now));
        assert!(!o.on_ack(0, 42, now) || o.remaining == 1);
    }
}
