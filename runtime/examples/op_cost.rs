//! The software cost of one send and one receive, without the transports:
//! a one-rank communicator sends 8 B to itself and receives them, so every
//! step of issuing, matching and completing runs on one thread and no
//! cache line crosses cores. Prints nanoseconds per send/receive pair, for
//! owned buffers (`isend`/`irecv`) and for lent/landing ones
//! (`isend_lent`/`irecv_into`, the primitives' path).
//!
//! `cargo run --release -p zccl-runtime --example op_cost`
use std::time::Instant;
use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
fn main() {
    let root = BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        std::time::Duration::from_secs(20),
    )
    .unwrap();
    let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    let ch = comm.channel(3);
    let n = 500_000;
    for round in 0..3 {
        let t = Instant::now();
        for _ in 0..n {
            let r = ch.irecv::<u8>(0, 8).unwrap();
            ch.isend(0, vec![1u8; 8]).unwrap().wait().unwrap();
            r.wait().unwrap();
        }
        let a = t.elapsed().as_nanos() as f64 / n as f64;
        let mut out = [0u8; 8];
        let data = [1u8; 8];
        let t = Instant::now();
        for _ in 0..n {
            let r = unsafe { ch.irecv_into(0, &mut out) }.unwrap();
            unsafe { ch.isend_lent(0, &data) }.unwrap().wait().unwrap();
            r.wait().unwrap();
        }
        let b = t.elapsed().as_nanos() as f64 / n as f64;
        println!("round {round}: owned {a:.0} ns/pair, lent/into {b:.0} ns/pair");
    }
}
