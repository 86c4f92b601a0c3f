//! One timed point-to-point transfer under any launcher: rank `SRC` sends
//! `BYTES` to rank `DST` (defaults 0, size/2 and 64 MiB: from the first
//! host to the second when ranks are laid out host by host), the receiver
//! checks every byte, and the sender prints the time and rate. The other
//! ranks only take part (as the router's proxies, for instance).
//!
//! ```sh
//! cargo build --release -p zccl-runtime --example transfer
//! zccl run -n 2 target/release/examples/transfer 16777216
//! ```
//!
//! Arguments: `[BYTES [SRC [DST [REPS]]]]`.

use std::time::Instant;

use zccl_runtime::{Communicator, logging};

fn pattern(src: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 13) as u8 ^ src as u8)
        .collect()
}

fn barrier(comm: &Communicator) -> Result<(), Box<dyn std::error::Error>> {
    // Everyone reports to rank 0, which answers everyone.
    if comm.rank() == 0 {
        for p in 1..comm.size() {
            comm.recv::<u8>(p, 1)?;
        }
        for p in 1..comm.size() {
            comm.send(p, vec![1u8])?;
        }
    } else {
        comm.send(0, vec![1u8])?;
        comm.recv::<u8>(0, 1)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    logging::init_from_env()?;
    let comm = Communicator::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d) };
    let bytes = arg(0, 64 << 20) as usize;
    let src = arg(1, 0) as u32;
    let dst = arg(2, u64::from(comm.size() / 2)) as u32;
    let reps = arg(3, 1);
    if src == dst || src >= comm.size() || dst >= comm.size() {
        return Err(format!("need two distinct ranks below {}", comm.size()).into());
    }
    let data = pattern(src, bytes);
    for rep in 0..reps {
        let copy = (comm.rank() == src).then(|| data.clone());
        barrier(&comm)?;
        let t0 = Instant::now();
        if let Some(copy) = copy {
            comm.send(dst, copy)?;
            comm.recv::<u8>(dst, 1)?; // the receiver has every byte
            let s = t0.elapsed().as_secs_f64();
            println!(
                "rep {rep}: {bytes} B rank {src} -> rank {dst} in {:.1} ms: {:.3} Gbit/s",
                s * 1e3,
                bytes as f64 * 8.0 / s / 1e9
            );
        } else if comm.rank() == dst {
            let got = comm.recv::<u8>(src, bytes)?;
            comm.send(src, vec![1u8])?;
            let got = got.into_vec();
            // Checked after answering (outside the sender's timing); a
            // mismatch fails this rank, hence the job.
            if got != data {
                let first = got.iter().zip(&data).position(|(a, b)| a != b);
                return Err(format!("rank {dst}: data differs from byte {first:?}").into());
            }
        }
    }
    barrier(&comm)?;
    Ok(())
}
