//! Copy speed at the distance that traps x86's `rep movsb` (see
//! `zccl_transports::copy`): for each size, `memcpy` (`copy_from_slice`)
//! and zccl's `copy` with the destination 16 bytes ahead of the source
//! modulo 4 KiB (what a page-aligned buffer and a `malloc`'d one give) and
//! at distance 0, in interleaved rounds; medians in GB/s. From
//! `zccl_transports::copy::stream_min` up (a quarter of the last-level
//! cache), zccl's copy streams its stores past the caches: the same
//! buffers are copied each repetition, so there a size that fits in the
//! caches favours `memcpy`, and a larger one streaming.
//!
//! `cargo bench -p zccl-bench --bench copy` (`-- --quick`: fewer rounds).

use std::time::Instant;

use zccl_transports::copy::copy;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A page-aligned range of `len` bytes `off` bytes into a fresh buffer.
fn at(buf: &[u8], off: usize, len: usize) -> std::ops::Range<usize> {
    let start = (4096 - (buf.as_ptr() as usize & 4095)) % 4096 + off;
    start..start + len
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 9 };
    println!(
        "{:>10} {:>14} {:>14} {:>14} {:>14}",
        "bytes", "memcpy +16", "zccl copy +16", "memcpy +0", "zccl copy +0"
    );
    for size in [
        4usize << 10,
        64 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
        16 << 20,
        64 << 20,
    ] {
        let src_buf = vec![1u8; size + 8192];
        let mut dst_buf = vec![0u8; size + 8192];
        let s = at(&src_buf, 0, size);
        let reps = ((256usize << 20) / size).max(4);
        let mut cells: [Vec<f64>; 4] = Default::default();
        for _ in 0..rounds {
            for (i, cell) in cells.iter_mut().enumerate() {
                let d = at(&dst_buf, if i < 2 { 16 } else { 0 }, size);
                let (src, dst) = (&src_buf[s.clone()], &mut dst_buf[d]);
                let t = Instant::now();
                for _ in 0..reps {
                    if i % 2 == 0 {
                        dst.copy_from_slice(std::hint::black_box(src));
                    } else {
                        copy(dst, std::hint::black_box(src));
                    }
                    std::hint::black_box(&dst);
                }
                cell.push((size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        let m: Vec<f64> = cells.into_iter().map(median).collect();
        println!(
            "{:>10} {:>14.1} {:>14.1} {:>14.1} {:>14.1}",
            size, m[0], m[1], m[2], m[3]
        );
    }
}
