//! The scenarios of `zccl bench route` (pure): who sends how much to whom,
//! which NIC of host 0 is disturbed and how, the rate the traffic can reach
//! at best, and the acceptance targets.
//!
//! Ranks are numbered host by host: local rank `l` of host `h` is rank
//! `h × ranks + l`, and its GPU (so its affine NIC) is `l mod nics`. Host 0
//! sends to host 1; the other ranks and hosts only take part (the router may
//! use host 0's ranks as proxies).

use serde::Serialize;

/// One scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Only local rank 0 of host 0 sends, to local rank 0 of host 1 (a
    /// ring's boundary rank): one NIC's worth of traffic on a host of many.
    Imbalanced,
    /// Every rank of host 0 sends to its counterpart on host 1 at once.
    Balanced,
    /// Like imbalanced with 4× the bytes; halfway through, host 0's last NIC
    /// goes down (routed run only).
    Failure,
    /// Like imbalanced, with host 0's last NIC at a quarter of the rate.
    Slow,
    /// SP primitives (issue #13, [`super::sp`]): TokenRing's bidirectional
    /// step against two one-way ring shifts of the same bytes, ranks placed
    /// so that both ring neighbours of every rank are on another host.
    #[value(name = "token_ring")]
    TokenRing,
    /// The same, ranks placed host by host (the ring crosses between hosts
    /// only at the hosts' boundary ranks).
    #[value(name = "token_ring_block")]
    TokenRingBlock,
    /// All-Scan (pipelined chain) against an all-gather of the same states,
    /// ranks placed host by host.
    #[value(name = "all_scan")]
    AllScan,
}

/// The router's scenarios, in the order they run (the default set).
pub const ALL: [Scenario; 4] = [
    Scenario::Imbalanced,
    Scenario::Balanced,
    Scenario::Failure,
    Scenario::Slow,
];

/// The SP primitives' scenarios ([`super::sp`]), run only when named.
pub const SP: [Scenario; 3] = [
    Scenario::TokenRing,
    Scenario::TokenRingBlock,
    Scenario::AllScan,
];

/// How ranks are numbered across hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Host by host (`srun`'s block distribution): local rank `l` of host
    /// `h` is rank `h × ranks + l`.
    Block,
    /// Round robin over the hosts (`srun`'s cyclic distribution): local
    /// rank `l` of host `h` is rank `l × hosts + h`, so that ranks `r − 1`
    /// and `r + 1` are on other hosts than `r`.
    Interleaved,
}

impl Placement {
    /// The name used in the output.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Block => "block",
            Placement::Interleaved => "interleaved",
        }
    }
}

/// The cluster: hosts × NICs per host × ranks per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Hosts (at least 2: host 0 sends to host 1).
    pub hosts: usize,
    /// NICs per host.
    pub nics: usize,
    /// Ranks per host.
    pub ranks: usize,
}

impl Shape {
    /// Number of ranks in the job.
    pub fn world(&self) -> usize {
        self.hosts * self.ranks
    }

    /// The rank of local rank `local` of host `host`.
    pub fn rank(&self, host: usize, local: usize) -> u32 {
        (host * self.ranks + local) as u32
    }

    /// The rank of local rank `local` of host `host` under `placement`.
    ///
    /// ```
    /// use zccl_bench::route::scenario::{Placement, Shape};
    /// let shape = Shape { hosts: 2, nics: 4, ranks: 4 };
    /// assert_eq!(shape.rank_in(Placement::Block, 1, 0), 4);
    /// assert_eq!(shape.rank_in(Placement::Interleaved, 1, 0), 1);
    /// assert_eq!(shape.rank_in(Placement::Interleaved, 0, 3), 6);
    /// ```
    pub fn rank_in(&self, placement: Placement, host: usize, local: usize) -> u32 {
        match placement {
            Placement::Block => self.rank(host, local),
            Placement::Interleaved => (local * self.hosts + host) as u32,
        }
    }

    /// Host and local rank of `rank`.
    pub fn place(&self, rank: u32) -> (usize, usize) {
        let r = rank as usize;
        (r / self.ranks, r % self.ranks)
    }
}

/// One point-to-point transfer of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// Sending rank.
    pub from: u32,
    /// Receiving rank.
    pub to: u32,
    /// Payload bytes.
    pub bytes: u64,
}

/// How a scenario disturbs host 0 while (or before) it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disturbance {
    /// Nothing.
    None,
    /// NIC `nic` of host 0 goes down halfway through the transfer and comes
    /// back after it.
    LinkDown {
        /// The NIC.
        nic: usize,
    },
    /// NIC `nic` of host 0 runs at a quarter of the rate from the start.
    QuarterRate {
        /// The NIC.
        nic: usize,
    },
}

/// What one run measured, as the targets need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Throughput of the static-affinity run, bits/s, if it ran.
    pub static_bps: Option<f64>,
    /// Throughput of the routed run, bits/s.
    pub routed_bps: f64,
    /// Time of the routed run, seconds.
    pub routed_s: f64,
}

impl Scenario {
    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Imbalanced => "imbalanced",
            Scenario::Balanced => "balanced",
            Scenario::Failure => "failure",
            Scenario::Slow => "slow",
            Scenario::TokenRing => "token_ring",
            Scenario::TokenRingBlock => "token_ring_block",
            Scenario::AllScan => "all_scan",
        }
    }

    /// Whether this is one of the SP primitives' scenarios ([`SP`]), which
    /// time collectives of every rank instead of point-to-point transfers
    /// from host 0 to host 1 ([`super::sp`]).
    pub fn is_sp(self) -> bool {
        SP.contains(&self)
    }

    /// How the scenario numbers its ranks: the SP scenario `token_ring`
    /// interleaves the hosts, every other scenario places host by host.
    pub fn placement(self) -> Placement {
        match self {
            Scenario::TokenRing => Placement::Interleaved,
            _ => Placement::Block,
        }
    }

    /// Bytes each sender sends, given `--bytes`: 4× for failure.
    ///
    /// ```
    /// use zccl_bench::route::scenario::Scenario;
    /// assert_eq!(Scenario::Failure.bytes(64 << 20), 256 << 20);
    /// assert_eq!(Scenario::Slow.bytes(64 << 20), 64 << 20);
    /// ```
    pub fn bytes(self, base: u64) -> u64 {
        match self {
            Scenario::Failure => base * 4,
            _ => base,
        }
    }

    /// The transfers, each of `self.bytes(base)` bytes (none for the SP
    /// scenarios, whose ranks report their own timings).
    ///
    /// ```
    /// use zccl_bench::route::scenario::{Scenario, Shape};
    /// let shape = Shape { hosts: 2, nics: 4, ranks: 4 };
    /// let t = Scenario::Balanced.transfers(&shape, 8);
    /// assert_eq!(t.iter().map(|t| (t.from, t.to)).collect::<Vec<_>>(), [(0, 4), (1, 5), (2, 6), (3, 7)]);
    /// assert_eq!(Scenario::Imbalanced.transfers(&shape, 8).len(), 1);
    /// ```
    pub fn transfers(self, shape: &Shape, base: u64) -> Vec<Transfer> {
        if self.is_sp() {
            return Vec::new();
        }
        let bytes = self.bytes(base);
        let senders = match self {
            Scenario::Balanced => shape.ranks,
            _ => 1,
        };
        (0..senders)
            .map(|l| Transfer {
                from: shape.rank(0, l),
                to: shape.rank(1, l),
                bytes,
            })
            .collect()
    }

    /// Whether the static-affinity run is part of the scenario (failure is
    /// measured routed only: its target compares with the 3-NIC time).
    pub fn runs_static(self) -> bool {
        self != Scenario::Failure
    }

    /// The NIC of host 0 the scenario disturbs: the last one, which is never
    /// the sender's own (NIC 0) when there are at least two.
    pub fn disturbance(self, nics: usize) -> Disturbance {
        let nic = nics.saturating_sub(1);
        match self {
            Scenario::Failure => Disturbance::LinkDown { nic },
            Scenario::Slow => Disturbance::QuarterRate { nic },
            _ => Disturbance::None,
        }
    }

    /// Whether the scenario needs a NIC besides the sender's own.
    pub fn needs_two_nics(self) -> bool {
        matches!(self, Scenario::Failure | Scenario::Slow)
    }

    /// The best the traffic can do, bits/s: the combined rate of host 0's
    /// NICs that are up (failure: all but one; slow: one at a quarter).
    ///
    /// ```
    /// use zccl_bench::route::scenario::Scenario;
    /// assert_eq!(Scenario::Imbalanced.limit_bps(4, 200e6), 800e6);
    /// assert_eq!(Scenario::Failure.limit_bps(4, 200e6), 600e6);
    /// assert_eq!(Scenario::Slow.limit_bps(4, 200e6), 650e6);
    /// ```
    pub fn limit_bps(self, nics: usize, rate_bps: f64) -> f64 {
        let n = nics as f64;
        match self {
            Scenario::Imbalanced | Scenario::Balanced => n * rate_bps,
            // Not used: the SP scenarios have their own targets (sp.rs).
            Scenario::TokenRing | Scenario::TokenRingBlock | Scenario::AllScan => n * rate_bps,
            Scenario::Failure => (n - 1.0) * rate_bps,
            Scenario::Slow => (n - 0.75) * rate_bps,
        }
    }

    /// Failure only: the time bound, 1.2 × the time the bytes take at the
    /// combined rate of the NICs left (seconds).
    ///
    /// ```
    /// use zccl_bench::route::scenario::Scenario;
    /// // 75 MB at 3 × 200 Mbit/s = 1 s; the bound is 1.2 s.
    /// let b = Scenario::Failure.bound_s(75_000_000, 4, 200e6).unwrap();
    /// assert!((b - 1.2).abs() < 1e-9);
    /// assert_eq!(Scenario::Slow.bound_s(75_000_000, 4, 200e6), None);
    /// ```
    pub fn bound_s(self, total_bytes: u64, nics: usize, rate_bps: f64) -> Option<f64> {
        (self == Scenario::Failure)
            .then(|| 1.2 * total_bytes as f64 * 8.0 / self.limit_bps(nics, rate_bps))
    }

    /// The acceptance target, in words.
    pub fn target(self) -> &'static str {
        match self {
            Scenario::Imbalanced => "routed >= 3x static and >= 80% of limit",
            Scenario::Balanced => "routed >= 0.95x static",
            Scenario::Failure => "routed time <= bound (1.2x the time on the NICs left)",
            Scenario::Slow => "routed >= 90% of limit",
            Scenario::TokenRing | Scenario::TokenRingBlock => {
                "bidir <= 0.6x two one-way shifts of the same bytes"
            }
            Scenario::AllScan => "all_scan >= 2.5x faster than all_gather",
        }
    }

    /// Whether `m` meets the target; `None` when a run it needs is missing.
    ///
    /// ```
    /// use zccl_bench::route::scenario::{Measured, Scenario};
    /// let m = Measured { static_bps: Some(190e6), routed_bps: 700e6, routed_s: 0.8 };
    /// assert_eq!(Scenario::Imbalanced.target_met(&m, 800e6, None), Some(true));
    /// assert_eq!(Scenario::Balanced.target_met(&m, 800e6, None), Some(true));
    /// let m = Measured { static_bps: None, routed_bps: 500e6, routed_s: 5.0 };
    /// assert_eq!(Scenario::Failure.target_met(&m, 600e6, Some(4.3)), Some(false));
    /// assert_eq!(Scenario::Balanced.target_met(&m, 800e6, None), None);
    /// ```
    pub fn target_met(self, m: &Measured, limit_bps: f64, bound_s: Option<f64>) -> Option<bool> {
        match self {
            Scenario::Imbalanced => {
                let s = m.static_bps?;
                Some(m.routed_bps >= 3.0 * s && m.routed_bps >= 0.8 * limit_bps)
            }
            Scenario::Balanced => Some(m.routed_bps >= 0.95 * m.static_bps?),
            Scenario::Failure => Some(m.routed_s <= bound_s?),
            Scenario::Slow => Some(m.routed_bps >= 0.9 * limit_bps),
            // Their targets are ratios of times ([`super::sp::target_met`]).
            Scenario::TokenRing | Scenario::TokenRingBlock | Scenario::AllScan => None,
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_go_from_host_0_to_host_1() {
        let shape = Shape {
            hosts: 3,
            nics: 2,
            ranks: 2,
        };
        assert_eq!(shape.world(), 6);
        assert_eq!(shape.place(5), (2, 1));
        for s in ALL {
            for t in s.transfers(&shape, 100) {
                assert_eq!(shape.place(t.from).0, 0, "{s}");
                assert_eq!(shape.place(t.to).0, 1, "{s}");
                assert_eq!(shape.place(t.from).1, shape.place(t.to).1, "{s}");
                assert_eq!(t.bytes, s.bytes(100));
            }
        }
        assert_eq!(Scenario::Balanced.transfers(&shape, 1).len(), 2);
        assert_eq!(Scenario::Failure.transfers(&shape, 1)[0].bytes, 4);
    }

    #[test]
    fn the_disturbed_nic_is_not_the_senders() {
        for nics in 2..8 {
            for s in [Scenario::Failure, Scenario::Slow] {
                let nic = match s.disturbance(nics) {
                    Disturbance::LinkDown { nic } | Disturbance::QuarterRate { nic } => nic,
                    Disturbance::None => unreachable!(),
                };
                assert_ne!(nic, 0);
                assert!(nic < nics);
            }
        }
        assert_eq!(Scenario::Balanced.disturbance(4), Disturbance::None);
    }

    #[test]
    fn targets() {
        let limit = 800e6;
        let m = |st: Option<f64>, r: f64| Measured {
            static_bps: st,
            routed_bps: r,
            routed_s: 1.0,
        };
        // Imbalanced: both conditions.
        assert_eq!(
            Scenario::Imbalanced.target_met(&m(Some(200e6), 650e6), limit, None),
            Some(true)
        );
        assert_eq!(
            Scenario::Imbalanced.target_met(&m(Some(200e6), 590e6), limit, None),
            Some(false)
        );
        assert_eq!(
            Scenario::Imbalanced.target_met(&m(Some(230e6), 660e6), limit, None),
            Some(false)
        );
        // Balanced: 0.95x static.
        assert_eq!(
            Scenario::Balanced.target_met(&m(Some(700e6), 666e6), limit, None),
            Some(true)
        );
        assert_eq!(
            Scenario::Balanced.target_met(&m(Some(700e6), 664e6), limit, None),
            Some(false)
        );
        // Slow: 90% of 3.25 x rate.
        let slow = Scenario::Slow.limit_bps(4, 200e6);
        assert_eq!(
            Scenario::Slow.target_met(&m(None, 0.91 * slow), slow, None),
            Some(true)
        );
        assert_eq!(
            Scenario::Slow.target_met(&m(None, 0.89 * slow), slow, None),
            Some(false)
        );
        // Failure: time against the bound.
        assert_eq!(
            Scenario::Failure.target_met(&m(None, 1.0), 600e6, Some(1.0)),
            Some(true)
        );
        assert_eq!(
            Scenario::Failure.target_met(&m(None, 1.0), 600e6, None),
            None
        );
    }
}
