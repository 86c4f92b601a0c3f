//! Two hosts (network namespaces) with two NICs each, one rank per host,
//! joined through launcher variables as `srun` or `mpirun` would start them:
//! a `zccl bench sendrecv` between them verifies its data, and its TCP
//! traffic is spread over both NICs of the host (each peer connection has
//! sockets bound to every NIC selected by `ZCCL_SOCKET_IFNAME`). Skips where
//! namespaces cannot be made (needs root).

use std::process::Stdio;
use std::time::{Duration, Instant};
use zccl_testbed::{Spec, Testbed, TestbedError};

#[test]
fn a_job_across_two_hosts_uses_every_nic() {
    let tb = match Testbed::up(&Spec {
        hosts: 2,
        nics: 2,
        ..Spec::default()
    }) {
        Ok(tb) => tb,
        Err(TestbedError::Unavailable(why)) => {
            zccl_testbed::skip(why);
            return;
        }
        Err(e) => panic!("testbed: {e}"),
    };
    let before: Vec<u64> = (0..2).map(|k| tb.tx_bytes(0, k).unwrap()).collect();
    let root = format!("{}:29500", tb.addr(0, 0));
    let secret = "c3".repeat(16);
    let mut ranks: Vec<_> = (0..2)
        .map(|r| {
            tb.command(r, env!("CARGO_BIN_EXE_zccl"))
                .args([
                    "bench",
                    "sendrecv",
                    "-N",
                    "2",
                    "-b",
                    "8M",
                    "-e",
                    "8M",
                    "-n",
                    "5",
                    "-w",
                    "1",
                    "-c",
                    "1",
                    "--no-progress",
                ])
                .env("ZCCL_RANK", r.to_string())
                .env("ZCCL_WORLD_SIZE", "2")
                .env("ZCCL_LOCAL_RANK", "0")
                .env("ZCCL_LOCAL_WORLD_SIZE", "1")
                .env("ZCCL_ROOT_ADDR", &root)
                .env("ZCCL_JOB_SECRET", &secret)
                .env("ZCCL_SOCKET_IFNAME", "nic")
                .env("ZCCL_TIMEOUT", "30")
                .env_remove("ZCCL_METRICS_ADDR")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a rank")
        })
        .collect();
    // Ranks have their own deadlines (ZCCL_TIMEOUT); this one only keeps a
    // wedged rank from hanging the suite.
    let deadline = Instant::now() + Duration::from_secs(90);
    while ranks.iter_mut().any(|c| c.try_wait().unwrap().is_none()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let outs: Vec<_> = ranks
        .into_iter()
        .map(|mut c| {
            let _ = c.kill();
            c.wait_with_output().unwrap()
        })
        .collect();
    for (r, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let table = String::from_utf8_lossy(&outs[0].stdout);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("8388608"))
        .unwrap_or_else(|| panic!("no result row in:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cols[8], cols[12]), ("0", "0"), "#wrong in {row}");
    let sent: Vec<u64> = (0..2)
        .map(|k| tb.tx_bytes(0, k).unwrap() - before[k])
        .collect();
    let total: u64 = sent.iter().sum();
    // 5 iterations + warm-up + check, both halves: well over 100 MB.
    assert!(total > 100 << 20, "host 0 sent only {total} bytes");
    for (k, s) in sent.iter().enumerate() {
        assert!(
            *s * 10 >= total * 3,
            "nic{k} carried {s} of {total} bytes: {sent:?}"
        );
    }
}
