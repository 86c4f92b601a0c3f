//! The scale sweep: ring attention (ring shift), TokenRing, Ulysses
//! all-to-all and All-Scan at 16, 128 and 1024 GPUs (8 GPUs and 8 NICs of
//! 400 Gbit/s per host, rails, 16 hosts per pod, spine 2:1), with uneven
//! sequence lengths across hosts ([`host_weights`]), static NIC affinity
//! against the router; plus the seeds' comparisons (Zeppelin's routing
//! gain, ZeCO's All-Scan vs all-gather at 256 GPUs, TokenRing's
//! bidirectional step).
//!
//! The model is LLaMA2-7B's attention (MHA, hidden 4096, 32 heads of 128,
//! bf16 activations, `f32` GLA states for All-Scan), 4096 tokens per GPU on
//! average, communication only (no compute to overlap with).
//!
//! ```
//! use zccl_sim::sweep::{Pattern, SweepConfig, run_point};
//! use zccl_sim::run::Mode;
//! let cfg = SweepConfig::default();
//! let st = run_point(&cfg, Pattern::RingAttention, 16, Mode::Static).unwrap();
//! let rt = run_point(&cfg, Pattern::RingAttention, 16, Mode::Router).unwrap();
//! assert!(st.time_s > rt.time_s);
//! ```

use std::time::Instant;

use serde::Serialize;

use crate::SimError;
use crate::cluster::ClusterSpec;
use crate::run::{Mode, RunConfig, RunResult, simulate};
use crate::workload::{
    Program, all_scan, all_to_all, host_weights, ring_all_gather, ring_shift, shifts, token_ring,
    window,
};

/// A sequence-parallel communication pattern.
///
/// ```
/// assert_eq!(zccl_sim::sweep::Pattern::RingAttention.name(), "ring_attention");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Ring attention's KV rotation: `n-1` ring shifts of each rank's K and V.
    RingAttention,
    /// TokenRing: Q around the ring, partial results straight back.
    TokenRing,
    /// Ulysses: all-to-all of Q, K and V inside groups of
    /// [`SweepConfig::ulysses_degree`] ranks.
    Ulysses,
    /// ZeCO's All-Scan of GLA states.
    AllScan,
    /// LASP-2's ring all-gather of the same states (All-Scan's baseline).
    AllGather,
}

impl Pattern {
    /// The name in the JSON and the plot.
    ///
    /// ```
    /// assert_eq!(zccl_sim::sweep::Pattern::AllScan.name(), "all_scan");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Pattern::RingAttention => "ring_attention",
            Pattern::TokenRing => "token_ring",
            Pattern::Ulysses => "ulysses",
            Pattern::AllScan => "all_scan",
            Pattern::AllGather => "all_gather",
        }
    }
}

/// The sweep's parameters.
///
/// ```
/// let c = zccl_sim::sweep::SweepConfig::default();
/// assert_eq!(c.gpus, vec![16, 128, 1024]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepConfig {
    /// GPU counts.
    pub gpus: Vec<usize>,
    /// GPUs (ranks) per host.
    pub gpus_per_host: usize,
    /// NICs per host.
    pub nics_per_host: usize,
    /// NIC rate, Gbit/s.
    pub nic_gbps: f64,
    /// Hosts per pod.
    pub hosts_per_pod: usize,
    /// Spine oversubscription.
    pub spine_oversub: f64,
    /// Mean tokens per GPU.
    pub tokens_per_gpu: u64,
    /// Hidden size (Q, K, V and the output per token: `hidden × 2` bytes each).
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Head dimension (GLA state: `heads × d × d × 4` bytes).
    pub head_dim: u64,
    /// Ulysses degree (bounded by the heads).
    pub ulysses_degree: usize,
    /// All-Scan row blocks.
    pub scan_blocks: usize,
    /// Uneven sequence lengths across hosts ([`host_weights`]); false: even.
    pub uneven: bool,
    /// TokenRing runs whole up to this many GPUs; above, a window of
    /// [`SweepConfig::token_ring_sample_steps`] steps from the middle.
    pub token_ring_full_max: usize,
    /// Steps of that window.
    pub token_ring_sample_steps: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            gpus: vec![16, 128, 1024],
            gpus_per_host: 8,
            nics_per_host: 8,
            nic_gbps: 400.0,
            hosts_per_pod: 16,
            spine_oversub: 2.0,
            tokens_per_gpu: 4096,
            hidden: 4096,
            heads: 32,
            head_dim: 128,
            ulysses_degree: 32,
            scan_blocks: 8,
            uneven: true,
            token_ring_full_max: 128,
            token_ring_sample_steps: 16,
        }
    }
}

impl SweepConfig {
    /// The cluster of `gpus` GPUs.
    ///
    /// ```
    /// let c = zccl_sim::sweep::SweepConfig::default().cluster(128);
    /// assert_eq!(c.hosts, 16);
    /// ```
    pub fn cluster(&self, gpus: usize) -> ClusterSpec {
        let mut s = ClusterSpec::rail_optimized(
            gpus.div_ceil(self.gpus_per_host),
            self.gpus_per_host,
            self.nics_per_host,
            self.nic_gbps,
        );
        s.hosts_per_pod = self.hosts_per_pod;
        s.spine_oversub = self.spine_oversub;
        s
    }

    /// Tokens of each rank (its host's weight × the mean).
    ///
    /// ```
    /// let t = zccl_sim::sweep::SweepConfig::default().tokens(16);
    /// assert_eq!(t.len(), 16);
    /// assert_eq!(t[0], t[7]);             // one host, one weight
    /// ```
    pub fn tokens(&self, gpus: usize) -> Vec<u64> {
        let hosts = gpus.div_ceil(self.gpus_per_host);
        let w = if self.uneven {
            host_weights(hosts)
        } else {
            vec![1.0; hosts]
        };
        (0..gpus)
            .map(|r| (self.tokens_per_gpu as f64 * w[r / self.gpus_per_host]).round() as u64)
            .collect()
    }

    /// The program of `pattern` at `gpus` GPUs.
    ///
    /// ```
    /// use zccl_sim::sweep::{Pattern, SweepConfig};
    /// let p = SweepConfig::default().program(Pattern::Ulysses, 16).unwrap();
    /// assert_eq!(p.steps.len(), 16);
    /// ```
    pub fn program(&self, pattern: Pattern, gpus: usize) -> Result<Program, SimError> {
        let tok = self.tokens(gpus);
        let act = |r: usize| tok[r] * self.hidden * 2; // one bf16 activation
        let state = self.heads * self.head_dim * self.head_dim * 4;
        let rows = (self.heads * self.head_dim) as usize;
        Ok(match pattern {
            Pattern::RingAttention => ring_shift(gpus, |o| 2 * act(o)),
            Pattern::TokenRing => {
                let lse = |r: usize| tok[r] * self.heads * 4;
                token_ring(gpus, act, |o| act(o) + lse(o))
            }
            Pattern::Ulysses => {
                let g = self.ulysses_degree.min(gpus);
                all_to_all(gpus, g, |src, _| 3 * act(src) / g as u64)?
            }
            Pattern::AllScan => all_scan(gpus, state, rows, self.scan_blocks)?,
            Pattern::AllGather => ring_all_gather(gpus, state),
        })
    }
}

/// One simulated point.
///
/// ```
/// use zccl_sim::{run::Mode, sweep::*};
/// let p = run_point(&SweepConfig::default(), Pattern::RingAttention, 16, Mode::Router).unwrap();
/// assert!(p.striped > 0 && p.sampled_steps.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Pattern.
    pub pattern: Pattern,
    /// GPUs.
    pub gpus: usize,
    /// Static or router.
    pub mode: Mode,
    /// Completion time, seconds.
    pub time_s: f64,
    /// Payload bytes.
    pub bytes: u64,
    /// Sends between hosts, and how many were striped.
    pub inter_host_sends: u64,
    /// Striped by the router.
    pub striped: u64,
    /// `(first, count, of)`: only steps `first..first+count` of `of` were
    /// simulated and the time scaled by `of / count` (TokenRing at scale,
    /// whose routed lanes couple every NIC into one max-min problem).
    pub sampled_steps: Option<(usize, usize, usize)>,
    /// CPU seconds the simulation took.
    pub wall_s: f64,
}

/// Simulates one point (lane fidelity).
///
/// ```
/// use zccl_sim::{run::Mode, sweep::{Pattern, SweepConfig, run_point}};
/// let p = run_point(&SweepConfig::default(), Pattern::AllScan, 16, Mode::Static).unwrap();
/// assert_eq!(p.inter_host_sends, 8);   // 8 blocks cross from host 0 to host 1
/// ```
pub fn run_point(
    cfg: &SweepConfig,
    pattern: Pattern,
    gpus: usize,
    mode: Mode,
) -> Result<Point, SimError> {
    let t0 = Instant::now();
    let cluster = cfg.cluster(gpus).build()?;
    let mut program = cfg.program(pattern, gpus)?;
    let mut sampled = None;
    let mut scale = 1.0;
    if pattern == Pattern::TokenRing && gpus > cfg.token_ring_full_max {
        let of = program.steps[0].len();
        let (first, count) = (of / 2, cfg.token_ring_sample_steps.min(of));
        program = window(&program, first.min(of - count), count)?;
        sampled = Some((first.min(of - count), count, of));
        scale = of as f64 / count as f64;
    }
    let r: RunResult = simulate(&cluster, &program, &RunConfig::new(mode))?;
    Ok(Point {
        pattern,
        gpus,
        mode,
        sampled_steps: sampled,
        time_s: r.time_s * scale,
        bytes: r.bytes,
        inter_host_sends: r.inter_host_sends,
        striped: r.striped,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// A comparison with a paper's figure.
///
/// ```
/// let c = zccl_sim::sweep::Comparison { name: "x".into(), simulated: 2.0, paper: 2.0, paper_source: String::new() };
/// assert_eq!(c.simulated / c.paper, 1.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// What is compared.
    pub name: String,
    /// The simulated ratio.
    pub simulated: f64,
    /// The paper's ratio.
    pub paper: f64,
    /// Where the paper's figure comes from.
    pub paper_source: String,
}

/// The sweep's output.
///
/// ```
/// let cfg = zccl_sim::sweep::SweepConfig { gpus: vec![16], ..Default::default() };
/// let s = zccl_sim::sweep::sweep(&cfg).unwrap();
/// assert_eq!(s.router_gain.len(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweep {
    /// Parameters.
    pub config: SweepConfig,
    /// Per-host token weights at the largest size.
    pub host_weights: Vec<f64>,
    /// Every point.
    pub points: Vec<Point>,
    /// Router speed-up (`static / router` time) by pattern and GPUs.
    pub router_gain: Vec<(String, usize, f64)>,
    /// The seeds' effects.
    pub comparisons: Vec<Comparison>,
    /// CPU seconds of the whole sweep.
    pub wall_s: f64,
}

/// Runs the sweep.
///
/// ```no_run
/// let s = zccl_sim::sweep::sweep(&zccl_sim::sweep::SweepConfig::default()).unwrap();
/// assert!(s.wall_s < 60.0);
/// ```
pub fn sweep(cfg: &SweepConfig) -> Result<Sweep, SimError> {
    let t0 = Instant::now();
    let mut points = Vec::new();
    let patterns = [
        Pattern::RingAttention,
        Pattern::TokenRing,
        Pattern::Ulysses,
        Pattern::AllScan,
        Pattern::AllGather,
    ];
    for &g in &cfg.gpus {
        for p in patterns {
            for m in [Mode::Static, Mode::Router] {
                points.push(run_point(cfg, p, g, m)?);
            }
        }
    }
    let find = |p: Pattern, g: usize, m: Mode| {
        points
            .iter()
            .find(|x| x.pattern == p && x.gpus == g && x.mode == m)
            .map(|x| x.time_s)
    };
    let mut router_gain = Vec::new();
    for &g in &cfg.gpus {
        for p in patterns {
            if let (Some(s), Some(r)) = (find(p, g, Mode::Static), find(p, g, Mode::Router)) {
                router_gain.push((p.name().to_string(), g, s / r));
            }
        }
    }
    let mut comparisons = Vec::new();
    // Zeppelin: per-round inter-node transfer of ring attention, TE CP vs
    // Zeppelin routing (Fig. 12): 2.18 ms -> 411 us.
    if let Some(&(_, _, gain)) = router_gain
        .iter()
        .find(|(p, g, _)| p == "ring_attention" && *g == *cfg.gpus.iter().max().unwrap_or(&0))
    {
        comparisons.push(Comparison {
            name: format!(
                "ring attention, router vs static affinity, {} GPUs ({} lengths)",
                cfg.gpus.iter().max().unwrap_or(&0),
                if cfg.uneven { "uneven" } else { "even" }
            ),
            simulated: gain,
            paper: 2.18e-3 / 411e-6,
            paper_source: "Zeppelin Fig. 12: per-round inter-node transfer 2.18 ms (TE CP) vs 411 us (routing), cluster A (4 NICs/node); routing alone end to end 1.6x (Fig. 11)".into(),
        });
    }
    // ZeCO: All-Scan vs all-gather at 256 GPUs.
    let ag = run_point(cfg, Pattern::AllGather, 256, Mode::Router)?;
    let sc = run_point(cfg, Pattern::AllScan, 256, Mode::Router)?;
    comparisons.push(Comparison {
        name: "all-gather / All-Scan of GLA states, 256 GPUs".into(),
        simulated: ag.time_s / sc.time_s,
        paper: 8.514 / 2.165,
        paper_source: "ZeCO Table 2: 8.514 ms vs 2.165 ms (H100, 8K tokens/GPU, 32 heads)".into(),
    });
    // The same with NCCL-like software latency per message (8 us): the
    // chain's 255 hops are latency-bound, the ring's 255 steps are not.
    let slow = |p: Pattern| -> Result<f64, SimError> {
        let mut spec = cfg.cluster(256);
        spec.message_latency_s = 8e-6;
        let c = spec.build()?;
        Ok(simulate(&c, &cfg.program(p, 256)?, &RunConfig::new(Mode::Router))?.time_s)
    };
    comparisons.push(Comparison {
        name: "all-gather / All-Scan, 256 GPUs, 8 us per message".into(),
        simulated: slow(Pattern::AllGather)? / slow(Pattern::AllScan)?,
        paper: 8.514 / 2.165,
        paper_source: "ZeCO Table 2".into(),
    });
    points.push(ag);
    points.push(sc);
    // TokenRing: the bidirectional step vs two one-way shifts of the same
    // bytes, one host of 8 GPUs (the paper's single node) and 16 GPUs.
    for g in [8usize, 16] {
        let c = cfg.cluster(g).build()?;
        let s = cfg.tokens_per_gpu * cfg.hidden * 2;
        let two = simulate(
            &c,
            &shifts(g, &[&[1], &[-1]], s),
            &RunConfig::new(Mode::Router),
        )?;
        let bi = simulate(
            &c,
            &shifts(g, &[&[1, -1]], s),
            &RunConfig::new(Mode::Router),
        )?;
        comparisons.push(Comparison {
            name: format!("two one-way shifts / bidirectional step (TokenRing), {g} GPUs"),
            simulated: two.time_s / bi.time_s,
            paper: 7.6 / 4.6,
            paper_source: "TokenRing README: 7.6 ms per ring-attention step vs 3.5-4.6 ms per TokenRing step (4x A10, PCIe)".into(),
        });
    }
    Ok(Sweep {
        config: cfg.clone(),
        host_weights: host_weights(
            cfg.gpus
                .iter()
                .max()
                .unwrap_or(&8)
                .div_ceil(cfg.gpus_per_host),
        ),
        points,
        router_gain,
        comparisons,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

impl Sweep {
    /// The sweep as pretty JSON.
    ///
    /// ```no_run
    /// let s = zccl_sim::sweep::sweep(&Default::default()).unwrap();
    /// assert!(s.to_json().contains("router_gain"));
    /// ```
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    /// A text summary.
    ///
    /// ```no_run
    /// let s = zccl_sim::sweep::sweep(&Default::default()).unwrap();
    /// print!("{}", s.table());
    /// ```
    pub fn table(&self) -> String {
        let mut s =
            String::from("# zccl sim sweep: completion time (ms), static affinity vs router\n");
        s.push_str(&format!(
            "# {:<15} {:>5} {:>12} {:>12} {:>8} {:>9}\n",
            "pattern", "GPUs", "static ms", "router ms", "gain", "cpu s"
        ));
        for (p, g, gain) in &self.router_gain {
            let get = |m: Mode| {
                self.points
                    .iter()
                    .find(|x| x.pattern.name() == p && x.gpus == *g && x.mode == m)
            };
            if let (Some(a), Some(b)) = (get(Mode::Static), get(Mode::Router)) {
                s.push_str(&format!(
                    "  {:<15} {:>5} {:>12.3} {:>12.3} {:>7.2}x {:>9.2}\n",
                    p,
                    g,
                    a.time_s * 1e3,
                    b.time_s * 1e3,
                    gain,
                    a.wall_s + b.wall_s
                ));
            }
        }
        s.push_str("# the seeds' effects (simulated vs paper)\n");
        for c in &self.comparisons {
            s.push_str(&format!(
                "  {:<72} sim {:>5.2}x  paper {:>5.2}x\n",
                c.name, c.simulated, c.paper
            ));
        }
        s.push_str(&format!("# whole sweep: {:.1} s of CPU\n", self.wall_s));
        s
    }

    /// Time vs GPUs, one line per pattern and mode (log-log).
    ///
    /// ```no_run
    /// let s = zccl_sim::sweep::sweep(&Default::default()).unwrap();
    /// assert!(s.to_svg().starts_with("<svg"));
    /// ```
    pub fn to_svg(&self) -> String {
        let mut series = Vec::new();
        for p in [
            Pattern::RingAttention,
            Pattern::TokenRing,
            Pattern::Ulysses,
            Pattern::AllScan,
            Pattern::AllGather,
        ] {
            for m in [Mode::Static, Mode::Router] {
                let pts: Vec<(f64, f64)> = self
                    .config
                    .gpus
                    .iter()
                    .filter_map(|&g| {
                        self.points
                            .iter()
                            .find(|x| x.pattern == p && x.gpus == g && x.mode == m)
                            .map(|x| (g as f64, x.time_s * 1e3))
                    })
                    .collect();
                let mode = match m {
                    Mode::Static => "static",
                    Mode::Router => "router",
                };
                series.push(crate::svg::Series {
                    name: format!("{} ({mode})", p.name()),
                    dashed: m == Mode::Static,
                    points: pts,
                });
            }
        }
        crate::svg::plot(
            "zccl sim: SP patterns, static NIC affinity vs router (8 GPUs, 8x400G NICs per host, uneven lengths)",
            "GPUs",
            "completion time (ms)",
            &series,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_lengths_make_some_hosts_send_more() {
        let cfg = SweepConfig::default();
        let t = cfg.tokens(128);
        let (lo, hi) = (t.iter().min().unwrap(), t.iter().max().unwrap());
        assert!(*hi as f64 > 1.5 * *lo as f64, "{lo} {hi}");
        let even = SweepConfig {
            uneven: false,
            ..cfg
        };
        assert!(even.tokens(128).iter().all(|&x| x == 4096));
    }

    #[test]
    fn the_router_helps_ring_attention_and_not_all_to_all() {
        let cfg = SweepConfig::default();
        let gain = |p| {
            let s = run_point(&cfg, p, 128, Mode::Static).unwrap().time_s;
            let r = run_point(&cfg, p, 128, Mode::Router).unwrap().time_s;
            s / r
        };
        assert!(gain(Pattern::RingAttention) > 1.6);
        let u = gain(Pattern::Ulysses);
        assert!((0.8..1.25).contains(&u), "{u}");
    }
}
