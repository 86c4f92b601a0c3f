//! Ranks as threads of the test process: a communicator per thread,
//! bootstrapped through a root on loopback (shared by the in-process test
//! files: `mod thread_ranks;`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};

/// The tests' configuration: loopback, a 20 s timeout, one engine
/// thread, then `extra` (`ZCCL_*` names and values) over them.
pub fn config(extra: &[(&str, &str)]) -> Config {
    let mut m: HashMap<String, String> = HashMap::from([
        ("ZCCL_SOCKET_IFNAME".into(), "lo".into()),
        ("ZCCL_TIMEOUT".into(), "20".into()),
        ("ZCCL_NTHREADS".into(), "1".into()),
    ]);
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|k| m.get(k).cloned()).unwrap()
}

/// Runs `f(comm)` on `n` ranks (threads) and returns their results in rank order.
pub fn job<R: Send + 'static>(
    n: u32,
    extra: &[(&str, &str)],
    f: impl Fn(Communicator) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let root = BootstrapRoot::start(
        "127.0.0.1:0".parse().unwrap(),
        UniqueId::random_secret().unwrap(),
        Duration::from_secs(20),
    )
    .unwrap();
    let id = root.unique_id();
    let f = Arc::new(f);
    let cfg = config(extra);
    let threads: Vec<_> = (0..n)
        .map(|r| {
            let (f, cfg) = (f.clone(), cfg.clone());
            std::thread::spawn(move || f(Communicator::init(&id, r, n, cfg).expect("init")))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("rank thread panicked"))
        .collect()
}
