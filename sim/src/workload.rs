//! Workloads: who sends what to whom, step by step, built from zccl's own
//! schedules ([`zccl_primitives::schedule`]), not from copies of them.
//!
//! A [`Program`] gives every rank a list of [`Step`]s. A rank posts the
//! sends of a step when the step starts; the step ends when its receives
//! have arrived and (unless [`Step::wait_sends`] is false) its sends were
//! delivered; then the next step starts. Sends are eager: a message that
//! arrives before its step is kept, as the runtime's matching keeps it.
//!
//! ```
//! use zccl_sim::workload::ring_shift;
//! let p = ring_shift(4, |_| 1000);
//! assert_eq!(p.steps[0].len(), 3);                    // n-1 steps
//! assert_eq!(p.steps[0][0].sends[0].to, 1);           // to r+1
//! assert_eq!(p.steps[0][0].recvs, vec![(3, 0)]);      // from r-1
//! ```

use serde::Serialize;
use zccl_primitives::schedule::scan::{ScanDirection, chain_role, row_blocks};
use zccl_primitives::schedule::{pairwise, ring, shift, token_ring};

use crate::SimError;

/// One send of a step.
///
/// ```
/// let s = zccl_sim::workload::SendOp { to: 1, bytes: 64, key: 0 };
/// assert_eq!(s.to, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SendOp {
    /// Destination rank.
    pub to: usize,
    /// Payload bytes.
    pub bytes: u64,
    /// Identifies the message between its two ranks (the receive names it).
    pub key: u64,
}

/// One step of one rank.
///
/// ```
/// let s = zccl_sim::workload::Step::default();
/// assert!(s.sends.is_empty() && s.recvs.is_empty() && !s.wait_sends);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Step {
    /// Sends posted when the step starts.
    pub sends: Vec<SendOp>,
    /// Receives, `(source, key)`, the step waits for.
    pub recvs: Vec<(usize, u64)>,
    /// Whether the step also waits for its sends to be delivered.
    pub wait_sends: bool,
}

/// Every rank's steps.
///
/// ```
/// let p = zccl_sim::workload::ring_all_gather(4, 8);
/// assert_eq!(p.steps.len(), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Program {
    /// Name, for reports.
    pub name: String,
    /// `steps[rank]`.
    pub steps: Vec<Vec<Step>>,
}

impl Program {
    /// Checks that every receive has exactly one matching send and every
    /// send a receive.
    ///
    /// ```
    /// assert!(zccl_sim::workload::ring_shift(5, |r| r as u64).check().is_ok());
    /// ```
    pub fn check(&self) -> Result<(), SimError> {
        let mut sends = std::collections::HashMap::new();
        for (r, steps) in self.steps.iter().enumerate() {
            for s in steps {
                for x in &s.sends {
                    if x.to >= self.steps.len() {
                        return Err(SimError::BadProgram(format!(
                            "rank {r} sends to rank {}, outside {} ranks",
                            x.to,
                            self.steps.len()
                        )));
                    }
                    if sends.insert((r, x.to, x.key), 0u32).is_some() {
                        return Err(SimError::BadProgram(format!(
                            "rank {r} sends key {} to {} twice",
                            x.key, x.to
                        )));
                    }
                }
            }
        }
        for (r, steps) in self.steps.iter().enumerate() {
            for s in steps {
                for &(from, key) in &s.recvs {
                    match sends.get_mut(&(from, r, key)) {
                        Some(n) => *n += 1,
                        None => {
                            return Err(SimError::BadProgram(format!(
                                "rank {r} waits for key {key} from {from}, which never sends it"
                            )));
                        }
                    }
                }
            }
        }
        if let Some(((s, d, k), _)) = sends.iter().find(|(_, n)| **n != 1) {
            return Err(SimError::BadProgram(format!(
                "send {s}->{d} key {k} is received {} times",
                sends[&(*s, *d, *k)]
            )));
        }
        Ok(())
    }

    /// Total payload bytes of every send.
    ///
    /// ```
    /// assert_eq!(zccl_sim::workload::ring_shift(4, |_| 10).total_bytes(), 4 * 3 * 10);
    /// ```
    pub fn total_bytes(&self) -> u64 {
        self.steps
            .iter()
            .flatten()
            .flat_map(|s| &s.sends)
            .map(|x| x.bytes)
            .sum()
    }
}

/// Steps `from..from + k` of every rank of `program`, for programs whose
/// every message is received at the step index it is sent at (ring shift,
/// TokenRing, ring all-gather): a sample of a long program, whose time,
/// scaled by the share of steps it holds, estimates the whole.
///
/// ```
/// use zccl_sim::workload::{token_ring, window};
/// let p = window(&token_ring(8, |_| 10, |_| 10), 3, 2).unwrap();
/// assert_eq!(p.steps[0].len(), 2);
/// assert!(window(&token_ring(8, |_| 10, |_| 10), 8, 2).is_err());
/// ```
pub fn window(program: &Program, from: usize, k: usize) -> Result<Program, SimError> {
    let p = Program {
        name: format!("{}[{from}..{}]", program.name, from + k),
        steps: program
            .steps
            .iter()
            .map(|s| s.iter().skip(from).take(k).cloned().collect())
            .collect(),
    };
    if p.steps.iter().any(|s| s.len() != k) {
        return Err(SimError::BadProgram(format!(
            "steps {from}..{} are not in the program",
            from + k
        )));
    }
    p.check()?;
    Ok(p)
}

/// Ring attention's KV rotation: `n-1` ring shifts by one
/// ([`shift::peers`]); at step `s` rank `r` forwards the block that
/// started on [`shift::origin_at`]`(r, n, 1, s)`, of `block(origin)` bytes.
///
/// ```
/// use zccl_sim::workload::ring_shift;
/// // Rank 0 sends its own block first, then rank 3's, then rank 2's.
/// let p = ring_shift(4, |origin| 100 + origin as u64);
/// let sizes: Vec<u64> = p.steps[0].iter().map(|s| s.sends[0].bytes).collect();
/// assert_eq!(sizes, vec![100, 103, 102]);
/// ```
pub fn ring_shift(n: usize, block: impl Fn(usize) -> u64) -> Program {
    let steps = (0..n)
        .map(|r| {
            let (to, from) = shift::peers(r, n, 1);
            (0..n.saturating_sub(1))
                .map(|s| Step {
                    sends: vec![SendOp {
                        to,
                        bytes: block(shift::origin_at(r, n, 1, s)),
                        key: s as u64,
                    }],
                    recvs: vec![(from, s as u64)],
                    wait_sends: true,
                })
                .collect()
        })
        .collect();
    Program {
        name: "ring_shift".into(),
        steps,
    }
}

/// Independent transfers `(src, dst, bytes)` among `n` ranks, all posted
/// at once (the `zccl bench route` scenarios). A rank may send and receive
/// several; each waits for all of its own.
///
/// ```
/// use zccl_sim::workload::point_to_point;
/// let p = point_to_point(8, &[(0, 4, 100), (1, 5, 100)]);
/// assert!(p.check().is_ok());
/// assert_eq!(p.total_bytes(), 200);
/// ```
pub fn point_to_point(n: usize, transfers: &[(usize, usize, u64)]) -> Program {
    let mut steps: Vec<Vec<Step>> = vec![
        vec![Step {
            wait_sends: true,
            ..Step::default()
        }];
        n
    ];
    for (i, &(src, dst, bytes)) in transfers.iter().enumerate() {
        steps[src][0].sends.push(SendOp {
            to: dst,
            bytes,
            key: i as u64,
        });
        steps[dst][0].recvs.push((src, i as u64));
    }
    Program {
        name: "point_to_point".into(),
        steps,
    }
}

/// Ring shifts by the given offsets ([`shift::peers`]), `bytes` each:
/// `steps[i]` lists the offsets posted together at step `i`. `[[1]]` is
/// one ring shift, `[[1], [-1]]` a shift forward then one back, `[[1,
/// -1]]` TokenRing's bidirectional step (both in flight at once).
///
/// ```
/// use zccl_sim::workload::shifts;
/// let p = shifts(4, &[&[1, -1]], 10);
/// assert!(p.check().is_ok());
/// let to: Vec<usize> = p.steps[0][0].sends.iter().map(|s| s.to).collect();
/// assert_eq!(to, vec![1, 3]);
/// ```
pub fn shifts(n: usize, steps: &[&[isize]], bytes: u64) -> Program {
    let prog = (0..n)
        .map(|r| {
            steps
                .iter()
                .enumerate()
                .map(|(i, offs)| {
                    let mut step = Step {
                        wait_sends: true,
                        ..Step::default()
                    };
                    for (j, &k) in offs.iter().enumerate() {
                        let (to, from) = shift::peers(r, n, k);
                        let key = (i * 16 + j) as u64;
                        step.sends.push(SendOp { to, bytes, key });
                        step.recvs.push((from, key));
                    }
                    step
                })
                .collect()
        })
        .collect();
    Program {
        name: "shifts".into(),
        steps: prog,
    }
}

/// TokenRing ([`token_ring::plan`], Q offset +1): at each step the current
/// Q (`q(origin)` bytes) goes to `r+1` while the partial result computed
/// at the previous step (`out(owner)` bytes) goes straight back to its Q's
/// owner; both are in flight together.
///
/// ```
/// use zccl_sim::workload::token_ring;
/// let p = token_ring(4, |_| 10, |_| 5);
/// assert!(p.check().is_ok());
/// // Per rank: 3 Q sends and 3 partial results.
/// assert_eq!(p.total_bytes(), 4 * (3 * 10 + 3 * 5));
/// ```
pub fn token_ring(n: usize, q: impl Fn(usize) -> u64, out: impl Fn(usize) -> u64) -> Program {
    let steps = (0..n)
        .map(|r| {
            token_ring::plan(r, n, 1)
                .into_iter()
                .map(|st| {
                    let mut step = Step {
                        wait_sends: true,
                        ..Step::default()
                    };
                    let k = st.step as u64 * 2;
                    if let Some(x) = st.q_shift {
                        step.sends.push(SendOp {
                            to: x.send_to,
                            bytes: q(x.sent_origin),
                            key: k,
                        });
                        step.recvs.push((x.recv_from, k));
                    }
                    if let Some(o) = st.out_return {
                        step.sends.push(SendOp {
                            to: o.send_to,
                            bytes: out(o.send_to),
                            key: k + 1,
                        });
                        step.recvs.push((o.recv_from, k + 1));
                    }
                    step
                })
                .collect()
        })
        .collect();
    Program {
        name: "token_ring".into(),
        steps,
    }
}

/// Ulysses' all-to-all inside groups of `group` consecutive ranks (the
/// Ulysses degree; groups run at once): rank `r` sends `bytes(r, j)` to
/// every other rank `j` of its group, all posted together in pairwise
/// order ([`pairwise::peers`]), as `zccl_primitives::alltoall` posts them.
///
/// ```
/// use zccl_sim::workload::all_to_all;
/// let p = all_to_all(8, 4, |_, _| 1).unwrap();
/// assert_eq!(p.total_bytes(), 8 * 3);
/// assert_eq!(p.steps[5][0].sends[0].to, 6);   // pairwise step 1: r+1 in its group
/// assert!(all_to_all(8, 3, |_, _| 1).is_err());
/// ```
pub fn all_to_all(
    n: usize,
    group: usize,
    bytes: impl Fn(usize, usize) -> u64,
) -> Result<Program, SimError> {
    if group == 0 || !n.is_multiple_of(group) {
        return Err(SimError::BadProgram(format!(
            "{n} ranks do not split into Ulysses groups of {group}"
        )));
    }
    let steps = (0..n)
        .map(|r| {
            let base = r / group * group;
            let me = r - base;
            let mut step = Step {
                wait_sends: true,
                ..Step::default()
            };
            for s in 1..group {
                let (to, from) = pairwise::peers(me, group, s);
                step.sends.push(SendOp {
                    to: base + to,
                    bytes: bytes(r, base + to),
                    key: 0,
                });
                step.recvs.push((base + from, 0));
            }
            vec![step]
        })
        .collect();
    Ok(Program {
        name: "ulysses_all_to_all".into(),
        steps,
    })
}

/// ZeCO's All-Scan: the forward chain ([`chain_role`]) with the state of
/// `state_bytes` cut into `blocks` row blocks of `rows` rows
/// ([`row_blocks`]); a rank forwards block `k` as soon as it has received
/// it, without waiting for the send (as `zccl_primitives::scan` does).
///
/// ```
/// use zccl_sim::workload::all_scan;
/// let p = all_scan(4, 1 << 20, 128, 4).unwrap();
/// assert!(p.check().is_ok());
/// assert_eq!(p.total_bytes(), 3 << 20);        // every rank but the last sends its state
/// ```
pub fn all_scan(
    n: usize,
    state_bytes: u64,
    rows: usize,
    blocks: usize,
) -> Result<Program, SimError> {
    let blk = row_blocks(rows, blocks).map_err(|e| SimError::BadProgram(e.to_string()))?;
    let size = |k: usize| state_bytes * blk[k].len() as u64 / rows as u64;
    let steps = (0..n)
        .map(|r| {
            let role = chain_role(r, n, ScanDirection::Forward);
            (0..=blocks)
                .map(|j| {
                    let mut step = Step::default();
                    if j >= 1
                        && let Some(to) = role.send_to
                    {
                        step.sends.push(SendOp {
                            to,
                            bytes: size(j - 1),
                            key: (j - 1) as u64,
                        });
                    }
                    if j < blocks
                        && let Some(from) = role.recv_from
                    {
                        step.recvs.push((from, j as u64));
                    }
                    step
                })
                .collect()
        })
        .collect();
    Ok(Program {
        name: "all_scan".into(),
        steps,
    })
}

/// Ring all-gather of one block per rank ([`ring::all_gather_steps`]):
/// LASP-2's exchange of states, the baseline of All-Scan.
///
/// ```
/// use zccl_sim::workload::ring_all_gather;
/// let p = ring_all_gather(4, 100);
/// assert!(p.check().is_ok());
/// assert_eq!(p.total_bytes(), 4 * 3 * 100);
/// ```
pub fn ring_all_gather(n: usize, block: u64) -> Program {
    let steps = (0..n)
        .map(|r| {
            ring::all_gather_steps(r, n)
                .into_iter()
                .map(|st| Step {
                    sends: vec![SendOp {
                        to: st.send_to,
                        bytes: block,
                        key: st.step as u64,
                    }],
                    recvs: vec![(st.recv_from, st.step as u64)],
                    wait_sends: true,
                })
                .collect()
        })
        .collect();
    Program {
        name: "ring_all_gather".into(),
        steps,
    }
}

/// Per-host token weights for uneven sequence lengths (the Zeppelin
/// setting): variable-length sequences packed host by host, so that some
/// hosts hold more tokens. Deterministic (a fixed-seed Pareto draw with
/// shape 1.5, clipped at 4× and normalised to mean 1); `hosts` weights.
///
/// ```
/// let w = zccl_sim::workload::host_weights(16);
/// assert_eq!(w.len(), 16);
/// assert!((w.iter().sum::<f64>() / 16.0 - 1.0).abs() < 1e-9);
/// assert!(w.iter().cloned().fold(0.0, f64::max) > 1.5);   // some hosts send more
/// ```
pub fn host_weights(hosts: usize) -> Vec<f64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut w: Vec<f64> = (0..hosts)
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let u = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            (1.0 - u).powf(-1.0 / 1.5).min(4.0)
        })
        .collect();
    if hosts == 1 {
        w[0] = 1.0;
    }
    let mean = w.iter().sum::<f64>() / hosts.max(1) as f64;
    for v in &mut w {
        *v /= mean;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_matches_its_sends_and_receives() {
        for n in [2, 3, 8, 16] {
            ring_shift(n, |o| o as u64 + 1).check().unwrap();
            token_ring(n, |o| o as u64 + 1, |o| o as u64 + 2)
                .check()
                .unwrap();
            all_to_all(n, if n % 2 == 0 { 2 } else { n }, |a, b| (a * 7 + b) as u64)
                .unwrap()
                .check()
                .unwrap();
            all_scan(n, 1000, 10, 3).unwrap().check().unwrap();
            ring_all_gather(n, 10).check().unwrap();
            shifts(n, &[&[1], &[-1]], 5).check().unwrap();
            shifts(n, &[&[1, -1]], 5).check().unwrap();
        }
    }

    #[test]
    fn ring_shift_moves_every_block_once_per_hop() {
        let n = 6;
        let p = ring_shift(n, |o| 1 << o);
        // Each block crosses n-1 hops: total = (n-1) * sum of blocks.
        assert_eq!(p.total_bytes(), (n as u64 - 1) * ((1 << n) - 1));
    }
}
