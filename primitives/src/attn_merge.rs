//! Merging partial attention results with the FlashAttention-2 log-sum-exp rule.
//!
//! A partial result over a key set `J` is, per query row, the normalised
//! output `out_J` (`d` values) and `lse_J = log Σ_{j∈J} exp(σ q·k_j)` (natural
//! log, scaled scores). For disjoint `J1`, `J2`:
//!
//! ```text
//! lse = m + ln(exp(lse1 - m) + exp(lse2 - m)),   m = max(lse1, lse2)
//! out = exp(lse1 - lse)·out1 + exp(lse2 - lse)·out2
//! ```
//!
//! Numerics: inputs and outputs are `f32`; each row is computed in `f64` and
//! rounded to `f32` once. The formula is symmetric, so `merge(a, b)` and
//! `merge(b, a)` are bit-identical.
//!
//! `−∞` is safe: `(out = 0, lse = −∞)` is the identity (a row with no visible
//! keys), and merging two such rows gives `(0, −∞)`, never NaN. Inputs are
//! expected to have finite or `−∞` lse; a NaN or `+∞` lse gives NaN outputs
//! for that row.

use crate::error::{Result, invalid};

fn rows_and_dim(out: &[f32], lse: &[f32], what: &str) -> Result<usize> {
    let rows = lse.len();
    if rows == 0 {
        if out.is_empty() {
            return Ok(0);
        }
        return Err(invalid(format!(
            "{what}: {} output values for 0 rows",
            out.len()
        )));
    }
    if !out.len().is_multiple_of(rows) {
        return Err(invalid(format!(
            "{what}: {} output values do not split into {rows} rows",
            out.len()
        )));
    }
    Ok(out.len() / rows)
}

/// Merges `(out2, lse2)` into the accumulator `(out, lse)` in place. Rows are
/// `lse.len()`; the head dimension is `out.len() / rows`.
///
/// ```
/// use zccl_primitives::attn_merge::attn_merge_into;
/// let (mut o, mut l) = (vec![1.0f32, 2.0], vec![0.0f32]);
/// attn_merge_into(&mut o, &mut l, &[3.0, 4.0], &[0.0]).unwrap();
/// assert_eq!(o, [2.0, 3.0]); // equal weights
/// assert!((l[0] - 2f32.ln()).abs() < 1e-7);
/// // The identity leaves the accumulator unchanged.
/// attn_merge_into(&mut o, &mut l, &[0.0, 0.0], &[f32::NEG_INFINITY]).unwrap();
/// assert_eq!(o, [2.0, 3.0]);
/// ```
pub fn attn_merge_into(out: &mut [f32], lse: &mut [f32], out2: &[f32], lse2: &[f32]) -> Result<()> {
    let d = rows_and_dim(out, lse, "attn_merge")?;
    if lse2.len() != lse.len() || out2.len() != out.len() {
        return Err(invalid(format!(
            "attn_merge: shapes differ ({} rows x {} values vs {} rows x {} values)",
            lse.len(),
            out.len(),
            lse2.len(),
            out2.len()
        )));
    }
    for i in 0..lse.len() {
        let (l1, l2) = (lse[i] as f64, lse2[i] as f64);
        let m = nan_max(l1, l2);
        let row = i * d..(i + 1) * d;
        if m == f64::NEG_INFINITY {
            out[row].fill(0.0);
            lse[i] = f32::NEG_INFINITY;
            continue;
        }
        let l = m + ((l1 - m).exp() + (l2 - m).exp()).ln();
        let (w1, w2) = ((l1 - l).exp(), (l2 - l).exp());
        for (o, &o2) in out[row].iter_mut().zip(&out2[i * d..(i + 1) * d]) {
            *o = (w1 * *o as f64 + w2 * o2 as f64) as f32;
        }
        lse[i] = l as f32;
    }
    Ok(())
}

/// Merges two partial results into a new one (see [`attn_merge_into`]).
///
/// ```
/// use zccl_primitives::attn_merge::attn_merge;
/// let ninf = f32::NEG_INFINITY;
/// let (o, l) = attn_merge(&[0.0], &[ninf], &[0.0], &[ninf]).unwrap();
/// assert_eq!((o[0], l[0]), (0.0, ninf)); // fully masked row: no NaN
/// ```
pub fn attn_merge(
    out1: &[f32],
    lse1: &[f32],
    out2: &[f32],
    lse2: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mut o, mut l) = (
        zccl_transports::copy::to_vec(out1),
        zccl_transports::copy::to_vec(lse1),
    );
    attn_merge_into(&mut o, &mut l, out2, lse2)?;
    Ok((o, l))
}

/// N-way merge: `lse = logsumexp_i lse_i`, `out = Σ_i exp(lse_i - lse)·out_i`,
/// computed per row in `f64`; rows with every `lse_i = −∞` give `(0, −∞)`.
/// With no parts there is nothing to size the output by, so it is an error.
///
/// ```
/// use zccl_primitives::attn_merge::attn_merge_n;
/// let (o, l) = attn_merge_n(&[(&[1.0], &[0.0]), (&[4.0], &[0.0]), (&[7.0], &[0.0])]).unwrap();
/// assert!((o[0] - 4.0).abs() < 1e-6 && (l[0] - 3f32.ln()).abs() < 1e-6);
/// ```
pub fn attn_merge_n(parts: &[(&[f32], &[f32])]) -> Result<(Vec<f32>, Vec<f32>)> {
    let Some(&(o0, l0)) = parts.first() else {
        return Err(invalid("attn_merge_n: no parts"));
    };
    let d = rows_and_dim(o0, l0, "attn_merge_n")?;
    for (o, l) in parts {
        if o.len() != o0.len() || l.len() != l0.len() {
            return Err(invalid("attn_merge_n: parts have different shapes"));
        }
    }
    let rows = l0.len();
    let mut out = vec![0.0f32; rows * d];
    let mut lse = vec![f32::NEG_INFINITY; rows];
    let mut acc = vec![0.0f64; d];
    for i in 0..rows {
        let m = parts
            .iter()
            .map(|(_, l)| l[i] as f64)
            .fold(f64::NEG_INFINITY, nan_max);
        if m == f64::NEG_INFINITY {
            continue;
        }
        let l = m + parts
            .iter()
            .map(|(_, l)| (l[i] as f64 - m).exp())
            .sum::<f64>()
            .ln();
        acc.fill(0.0);
        for (o, li) in parts {
            let w = (li[i] as f64 - l).exp();
            for (a, &x) in acc.iter_mut().zip(&o[i * d..(i + 1) * d]) {
                *a += w * x as f64;
            }
        }
        for (o, a) in out[i * d..(i + 1) * d].iter_mut().zip(&acc) {
            *o = *a as f32;
        }
        lse[i] = l as f32;
    }
    Ok((out, lse))
}

/// The larger of `a` and `b`, NaN if either is (`f64::max` returns the
/// other one: a NaN lse beside a fully masked row's `−∞` then made the row
/// look empty, zeros instead of the NaN the module's docs promise).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_lse_gives_nan_even_beside_a_fully_masked_row() {
        let ninf = f32::NEG_INFINITY;
        for (a, b) in [
            ((5.0, f32::NAN), (0.0, ninf)),
            ((0.0, ninf), (5.0, f32::NAN)),
        ] {
            let (o, l) = attn_merge(&[a.0], &[a.1], &[b.0], &[b.1]).unwrap();
            assert!(o[0].is_nan() && l[0].is_nan(), "{a:?} {b:?}: {o:?} {l:?}");
            let (o, l) = attn_merge_n(&[(&[a.0], &[a.1]), (&[b.0], &[b.1])]).unwrap();
            assert!(o[0].is_nan() && l[0].is_nan(), "n {a:?} {b:?}: {o:?} {l:?}");
        }
        // Fully masked on both sides stays (0, -inf), never NaN.
        let (o, l) = attn_merge(&[1.0], &[ninf], &[2.0], &[ninf]).unwrap();
        assert_eq!((o[0], l[0]), (0.0, ninf));
    }
}
