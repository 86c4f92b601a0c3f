//! A job that cannot start fails on every rank within seconds, each naming
//! the cause: a rank with another world size, two processes claiming one
//! rank, a rank with another job secret (the bootstrap root answers the
//! offender with the reason and fails the others at once, instead of
//! letting them wait out the timeout).

use std::time::{Duration, Instant};

use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};

/// Starts one thread per `(rank, size, id)` and returns each one's error
/// text and how long it took to fail.
fn run(ranks: Vec<(u32, u32, UniqueId)>) -> Vec<(u32, String, Duration)> {
    run_with(ranks, |_| Config::default())
}

/// [`run`], each rank with the configuration `config(rank)` (its timeout
/// set to 30 s).
fn run_with(
    ranks: Vec<(u32, u32, UniqueId)>,
    config: impl Fn(u32) -> Config,
) -> Vec<(u32, String, Duration)> {
    let threads: Vec<_> = ranks
        .into_iter()
        .map(|(rank, size, id)| {
            let config = Config {
                timeout: Duration::from_secs(30),
                ..config(rank)
            };
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let r = Communicator::init(&id, rank, size, config);
                let msg = match r {
                    Ok(_) => "joined".to_string(),
                    Err(e) => e.to_string(),
                };
                (rank, msg, t0.elapsed())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("rank thread"))
        .collect()
}

fn root() -> (BootstrapRoot, UniqueId) {
    let root = BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    let id = root.unique_id();
    (root, id)
}

fn check(results: &[(u32, String, Duration)], cause: &str) {
    for (rank, msg, took) in results {
        assert!(
            msg.contains(cause),
            "rank {rank}: {msg:?} does not name {cause:?}"
        );
        assert!(
            *took < Duration::from_secs(2),
            "rank {rank} took {took:?} to fail: {msg}"
        );
    }
}

#[test]
fn world_size_mismatch_fails_every_rank_at_once() {
    let (_root, id) = root();
    // Ranks 0 and 1 believe in 3 ranks, rank 2 in 4.
    let r = run(vec![(0, 3, id), (1, 3, id), (2, 4, id)]);
    check(&r, "world size mismatch");
    assert!(r.iter().all(|(_, m, _)| m.contains("rank 2")), "{r:?}");
}

#[test]
fn duplicate_rank_fails_every_rank_at_once() {
    let (_root, id) = root();
    let r = run(vec![(0, 3, id), (1, 3, id), (1, 3, id)]);
    check(&r, "rank 1 registered twice");
}

#[test]
fn wrong_secret_fails_every_rank_at_once() {
    let (_root, id) = root();
    let other = UniqueId::new(id.root(), UniqueId::random_secret().unwrap());
    let r = run(vec![(0, 3, id), (1, 3, id), (2, 3, other)]);
    check(&r, "another job secret");
    assert!(r.iter().all(|(_, m, _)| m.contains("rank 2")), "{r:?}");
}

#[test]
fn another_number_of_sockets_per_peer_fails_every_rank_at_once() {
    // Rank 0 makes 1 TCP connection per peer (ZCCL_NSOCKS_PERPEER=1), the
    // others 2: each would wait for connections the other never makes.
    let (_root, id) = root();
    let r = run_with(vec![(0, 3, id), (1, 3, id), (2, 3, id)], |rank| {
        let mut c = Config::default();
        c.tcp.sockets_per_peer = if rank == 0 { 1 } else { 2 };
        c
    });
    check(&r, "ZCCL_NSOCKS_PERPEER must be the same on every rank");
    // Each names a peer that disagrees and both counts.
    for (rank, m, _) in &r {
        let both = if *rank == 0 {
            "makes 2 TCP connection(s) per peer and this rank 1"
        } else {
            "rank 0 makes 1 TCP connection(s) per peer and this rank 2"
        };
        assert!(m.contains(both), "rank {rank}: {m}");
    }
}

#[test]
fn ranks_with_another_router_mode_fail_at_init_naming_it() {
    // Routed or not is decided alike on both sides of a message: a rank
    // with ZCCL_ROUTER=off among ranks with it on would wait for
    // acknowledgements that never come.
    let (_root, id) = root();
    let r = run_with(vec![(0, 3, id), (1, 3, id), (2, 3, id)], |rank| Config {
        router: if rank == 2 {
            zccl_runtime::router::RouterMode::Off
        } else {
            zccl_runtime::router::RouterMode::On
        },
        ..Config::default()
    });
    check(
        &r,
        "ZCCL_ROUTER differs between ranks: ranks 0-1 \"on\", rank 2 \"off\"",
    );
}
