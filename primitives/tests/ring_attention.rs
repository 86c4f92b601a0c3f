//! Ring attention (basic and causal zigzag) from ring_pass + attn_merge, and
//! TokenRing (non-causal and causal zigzag), against full attention; the two
//! TokenRing directions progress independently.

mod common;

use common::sp::{
    check_merged_from, check_rows, full_reference, problem, ring_attention_rank, token_ring_len,
    token_ring_rank, two_directions_concurrent,
};
use zccl_primitives::Fabric;
use zccl_primitives::fabric::tag;
use zccl_primitives::sim::{SimConfig, run_ranks, try_run_ranks};
use zccl_primitives::token_ring::TokenRingChannels;

/// Basic ring (contiguous layout, causal or not): KV circulates; Q stays.
#[test]
fn ring_attention_basic_matches_full_attention() {
    for causal in [false, true] {
        for n in 1..=8 {
            let p = problem(n * 5, 10 + n as u64);
            let reference = full_reference(&p, causal);
            let pp = p.clone();
            let outs = run_ranks(n, move |f| ring_attention_rank(f, &pp, causal, false, 0));
            for (r, o) in outs.iter().enumerate() {
                let ctx = format!("basic causal={causal} n={n} rank {r}");
                check_rows(&reference, &o.pos, &o.out, &o.lse, &ctx);
            }
        }
    }
}

/// Causal zigzag ring (ring-flash-attention schedule): equal work per step.
#[test]
fn ring_attention_zigzag_matches_full_causal_attention() {
    for n in 1..=8 {
        let h = 3;
        let p = problem(2 * n * h, 100 + n as u64);
        let reference = full_reference(&p, true);
        let pp = p.clone();
        let outs = run_ranks(n, move |f| ring_attention_rank(f, &pp, true, true, 0));
        for (r, o) in outs.iter().enumerate() {
            check_rows(
                &reference,
                &o.pos,
                &o.out,
                &o.lse,
                &format!("zigzag n={n} rank {r}"),
            );
            assert_eq!(o.work.len(), n);
            assert!(
                o.work[1..].iter().all(|&w| w == 2 * h * h),
                "unequal per-step work {:?}",
                o.work
            );
        }
    }
}

fn run_token_ring(n: usize, zigzag: bool) {
    let h = 2;
    let s = token_ring_len(n, zigzag, h);
    let p = problem(s, 1000 + n as u64 + zigzag as u64);
    let reference = full_reference(&p, zigzag);
    let pp = p.clone();
    let ch = TokenRingChannels { q: 5, out: 6 };
    let run = try_run_ranks(SimConfig::default(), n, move |f| {
        token_ring_rank(f, &pp, zigzag, h, ch)
    })
    .unwrap();
    for (r, (pos, out, lse, merged)) in run.results.iter().enumerate() {
        let ctx = format!("token_ring zigzag={zigzag} n={n} rank {r}");
        check_rows(&reference, pos, out, lse, &ctx);
        let from = check_merged_from(r, n, merged, &ctx);
        // The fabric agrees: n-1 messages on the out channel reach r, one per other rank.
        let mut srcs: Vec<usize> = run
            .log
            .iter()
            .filter(|m| m.channel == ch.out && m.dst == r)
            .map(|m| m.src)
            .collect();
        srcs.sort();
        assert_eq!(from, srcs, "{ctx}");
    }
    // Q traffic: n-1 shifts per rank; zigzag sends half Q exactly when the receiver wraps.
    for m in run.log.iter().filter(|m| m.channel == ch.q) {
        let step = ((m.tag >> 32) & 0xffff) as usize;
        // The tag, and the TokenRing label in its top byte.
        let low = m.tag & ((1 << zccl_primitives::fabric::LABEL_SHIFT) - 1);
        assert_eq!(low, tag(0x30, step as u16, 0));
        assert_eq!(
            zccl_primitives::fabric::label_of(m.tag).1,
            zccl_runtime::label::OpLabel::TOKEN_RING
        );
        let half = zigzag && m.dst + step + 1 >= n;
        let want = if half {
            h
        } else if zigzag {
            2 * h
        } else {
            s / n
        };
        assert_eq!(m.len, want * common::sp::D * 4, "q message {m:?}");
        assert_eq!(
            m.dst,
            if zigzag {
                (m.src + n - 1) % n
            } else {
                (m.src + 1) % n
            }
        );
    }
    assert_eq!(
        run.log.iter().filter(|m| m.channel == ch.q).count(),
        n * (n - 1)
    );
}

#[test]
fn token_ring_non_causal_matches_full_attention() {
    for n in 1..=8 {
        run_token_ring(n, false);
    }
}

#[test]
fn token_ring_causal_zigzag_matches_full_attention() {
    for n in 1..=8 {
        run_token_ring(n, true);
    }
}

/// Holding one TokenRing direction's receiver (never posted until the end)
/// does not stop the other direction: its exchanges complete (waited with a
/// deadline), then the held one is released and delivers intact data.
#[test]
fn token_ring_directions_progress_independently() {
    for n in [2usize, 3, 4, 7] {
        run_ranks(n, |f| {
            let ch = TokenRingChannels { q: 5, out: 6 };
            for hold_q in [true, false] {
                two_directions_concurrent(f, ch, hold_q, 1 << 20, 3);
            }
            f.rank()
        });
    }
}
