//! A ring shift under any launcher: every rank sends its rank number to the
//! right and receives its left neighbour's, then prints `OK`.
//!
//! ```sh
//! cargo build -p zccl-runtime --example ring
//! zccl run -n 4 target/debug/examples/ring
//! ```
//!
//! It reads its rank, world size and rendezvous point through
//! `Communicator::from_env()`, so it also runs under `srun`, `mpirun` or
//! `torchrun` (see docs/launching.md), and logs as `ZCCL_DEBUG` says.

use zccl_runtime::{Communicator, logging};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    logging::init_from_env()?;
    let comm = Communicator::from_env()?;
    let (rank, size) = (comm.rank(), comm.size());
    if size == 1 {
        println!("rank 0 of 1: OK (nothing to shift)");
        return Ok(());
    }
    let (right, left) = ((rank + 1) % size, (rank + size - 1) % size);
    // Sends are eager, so every rank may send first without deadlock.
    let sent = comm.isend(right, vec![rank as f32; 4])?;
    let got = comm.irecv::<f32>(left, 4)?.wait()?.into_vec();
    sent.wait()?;
    if got != vec![left as f32; 4] {
        return Err(format!("rank {rank}: expected {left} from rank {left}, got {got:?}").into());
    }
    println!(
        "rank {rank} of {size}: OK, received {} from rank {left}",
        got[0]
    );
    Ok(())
}
