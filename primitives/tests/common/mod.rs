//! Test helpers: a seeded RNG and f64 reference implementations; the
//! collectives' references ([`coll`]), the sequence-parallel cases shared by
//! the simulated and the real-transport tests ([`sp`]), and multi-process
//! jobs ([`procs`]).
#![allow(dead_code)]

pub mod coll;
pub mod procs;
pub mod sp;

/// xorshift64* — tiny, seeded, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec_f32(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi) as f32).collect()
    }
}

/// Attention of `sq` query rows against `sk` keys (row-major `[s, d]`, `[s, dv]`),
/// scores scaled by `scale`, key `j` visible to query `i` iff `visible(i, j)`.
/// Returns (out `[sq, dv]`, lse `[sq]`) in f64; rows with no visible key give (0, -inf).
#[allow(clippy::too_many_arguments)]
pub fn attention_f64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sq: usize,
    sk: usize,
    d: usize,
    dv: usize,
    scale: f64,
    visible: impl Fn(usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(q.len(), sq * d);
    assert_eq!(k.len(), sk * d);
    assert_eq!(v.len(), sk * dv);
    let mut out = vec![0.0; sq * dv];
    let mut lse = vec![f64::NEG_INFINITY; sq];
    for i in 0..sq {
        let scores: Vec<Option<f64>> = (0..sk)
            .map(|j| {
                visible(i, j).then(|| {
                    scale
                        * (0..d)
                            .map(|x| q[i * d + x] as f64 * k[j * d + x] as f64)
                            .sum::<f64>()
                })
            })
            .collect();
        let m = scores
            .iter()
            .flatten()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            continue;
        }
        let z: f64 = scores.iter().flatten().map(|s| (s - m).exp()).sum();
        let l = m + z.ln();
        lse[i] = l;
        for (j, s) in scores.iter().enumerate() {
            if let Some(s) = s {
                let p = (s - l).exp();
                for x in 0..dv {
                    out[i * dv + x] += p * v[j * dv + x] as f64;
                }
            }
        }
    }
    (out, lse)
}

/// The same, rounded to f32 (what an fp32 attention kernel returns).
#[allow(clippy::too_many_arguments)]
pub fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sq: usize,
    sk: usize,
    d: usize,
    dv: usize,
    scale: f64,
    visible: impl Fn(usize, usize) -> bool,
) -> (Vec<f32>, Vec<f32>) {
    let (o, l) = attention_f64(q, k, v, sq, sk, d, dv, scale, visible);
    (
        o.iter().map(|&x| x as f32).collect(),
        l.iter().map(|&x| x as f32).collect(),
    )
}

/// Max |a - b| over finite pairs; -inf must match -inf exactly.
pub fn max_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if y == f64::NEG_INFINITY {
                assert_eq!(x, f32::NEG_INFINITY, "expected -inf");
                0.0
            } else {
                assert!(x.is_finite(), "got {x}, expected {y}");
                (x as f64 - y).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Gather rows `rows` of a row-major `[*, w]` matrix.
pub fn rows_of<T: Copy>(m: &[T], w: usize, rows: impl IntoIterator<Item = usize>) -> Vec<T> {
    rows.into_iter()
        .flat_map(|r| m[r * w..(r + 1) * w].iter().copied())
        .collect()
}

/// Sequential GLA recurrence S_t = diag(a_t) S_{t-1} + k_t^T v_t over `t` tokens
/// from `s0` (`[dk, dv]`); returns every state S_1..S_T (f64).
pub fn gla_states(
    k: &[f32],
    v: &[f32],
    a: &[f32],
    t: usize,
    dk: usize,
    dv: usize,
    s0: &[f64],
) -> Vec<Vec<f64>> {
    let mut s = s0.to_vec();
    let mut all = Vec::with_capacity(t);
    for x in 0..t {
        for i in 0..dk {
            let ai = a[x * dk + i] as f64;
            let ki = k[x * dk + i] as f64;
            for j in 0..dv {
                s[i * dv + j] = ai * s[i * dv + j] + ki * v[x * dv + j] as f64;
            }
        }
        all.push(s.clone());
    }
    all
}

/// Single-device recurrent linear attention O_t = q_t S_t (f64).
pub fn gla_outputs(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    a: &[f32],
    t: usize,
    dk: usize,
    dv: usize,
) -> Vec<f64> {
    let states = gla_states(k, v, a, t, dk, dv, &vec![0.0; dk * dv]);
    let mut o = vec![0.0; t * dv];
    for x in 0..t {
        for j in 0..dv {
            o[x * dv + j] = (0..dk)
                .map(|i| q[x * dk + i] as f64 * states[x][i * dv + j])
                .sum();
        }
    }
    o
}

/// Backward recurrence of the state gradient: G_t = q_t^T do_t + diag(a_{t+1}) G_{t+1},
/// G_{T} = 0 (0-indexed tokens 0..T); returns G_0..G_{T-1} (f64).
pub fn gla_grad_states(
    q: &[f32],
    dout: &[f32],
    a: &[f32],
    t: usize,
    dk: usize,
    dv: usize,
) -> Vec<Vec<f64>> {
    let mut g = vec![vec![0.0; dk * dv]; t];
    for x in (0..t).rev() {
        for i in 0..dk {
            for j in 0..dv {
                let next = if x + 1 < t {
                    a[(x + 1) * dk + i] as f64 * g[x + 1][i * dv + j]
                } else {
                    0.0
                };
                g[x][i * dv + j] = q[x * dk + i] as f64 * dout[x * dv + j] as f64 + next;
            }
        }
    }
    g
}
