//! `-N n`: join a job, or be the launcher of one.
//!
//! Under `zccl run`, `srun`, `mpirun` or `torchrun` (any of `ZCCL_RANK`,
//! `RANK`, `SLURM_PROCID`, `OMPI_COMM_WORLD_RANK` is set) every process is a
//! rank and joins the job with `Communicator::from_env()`; `-N`, if given,
//! must equal the job's size. Otherwise the process is the launcher: it
//! starts `n` copies of itself (default 1) with the same arguments and the
//! variables of [`zccl_runtime::launcher::rank_env`] (fresh ports from
//! [`pick_ports`], a fresh job secret), exactly what `zccl run -n n` gives,
//! but without `zccl run`'s `[rank]` output prefixes: rank 0's stdout and
//! every rank's stderr are this process's, the other ranks' stdout (they
//! print nothing) is discarded. When a rank fails, the others get a few
//! seconds to notice and exit, then are killed; the exit code is the first
//! failing rank's (128 + signal if it was killed), else 0. With `--hold`,
//! a SIGTERM or SIGINT the launcher receives is forwarded to the ranks as
//! SIGTERM ([`crate::hold`]).

use std::ffi::OsString;
use std::io;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zccl_runtime::UniqueId;
use zccl_runtime::launcher::{REMOVED_VARS, RankExit, pick_ports, rank_env};

/// Variables that say this process is a rank of a launched job.
pub const LAUNCHER_VARS: [&str; 4] = ["ZCCL_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"];

/// How long ranks get to exit on their own after one failed.
pub const GRACE: Duration = Duration::from_secs(5);

/// What this process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Be one rank of the surrounding job.
    Join,
    /// Start this many ranks.
    Launch(u32),
}

/// The mode, from `-N` and the environment (`get` looks a variable up).
///
/// ```
/// use zccl_bench::launch::{mode, Mode};
/// assert_eq!(mode(Some(4), |_| None), Mode::Launch(4));
/// assert_eq!(mode(None, |_| None), Mode::Launch(1));
/// assert_eq!(mode(Some(4), |k| (k == "SLURM_PROCID").then(|| "0".into())), Mode::Join);
/// ```
pub fn mode(ranks: Option<u32>, get: impl Fn(&str) -> Option<String>) -> Mode {
    if LAUNCHER_VARS
        .iter()
        .any(|k| get(k).is_some_and(|v| !v.is_empty()))
    {
        Mode::Join
    } else {
        Mode::Launch(ranks.unwrap_or(1))
    }
}

/// Starts `n` ranks of `program args...` and waits for them; returns the
/// exit code (see the module docs).
pub fn launch(n: u32, program: &OsString, args: &[OsString]) -> io::Result<i32> {
    let ports = pick_ports(None)?;
    let secret = UniqueId::random_secret()
        .map_err(|e| io::Error::other(e.to_string()))?
        .to_hex();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n as usize);
    for r in 0..n {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(rank_env(r, n, ports, &secret))
            .stdin(Stdio::null())
            .stdout(if r == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit());
        for k in REMOVED_VARS {
            cmd.env_remove(k);
        }
        zccl_runtime::launcher::die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                for c in children.iter_mut().flatten() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start rank {r} ({}): {e}", program.to_string_lossy()),
                ));
            }
        }
    }
    let mut first_failure: Option<RankExit> = None;
    let mut kill_at: Option<Instant> = None;
    let mut forwarded = false;
    loop {
        if !forwarded && crate::hold::stop_requested() {
            // `--hold`: pass SIGTERM/SIGINT on, so the ranks end their hold.
            forwarded = true;
            for c in children.iter().flatten() {
                // SAFETY: kill has no memory-safety preconditions; the pid is
                // our unreaped child's.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        for (r, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            let exit = match c.try_wait() {
                Ok(None) => continue,
                Ok(Some(st)) => RankExit::from_status(st),
                Err(_) => RankExit::Code(1),
            };
            *slot = None;
            if !exit.success() && first_failure.is_none() {
                eprintln!("zccl-bench: rank {r} {exit}: the first rank to fail");
                first_failure = Some(exit);
                kill_at = Some(Instant::now() + GRACE);
            }
        }
        if children.iter().all(Option::is_none) {
            break;
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for (r, c) in children.iter_mut().enumerate() {
                if let Some(c) = c {
                    eprintln!(
                        "zccl-bench: killing rank {r} (still running {GRACE:?} after the failure)"
                    );
                    let _ = c.kill();
                }
            }
            kill_at = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(first_failure.map_or(0, RankExit::exit_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(mode(None, env(&[])), Mode::Launch(1));
        assert_eq!(mode(Some(3), env(&[("PATH", "/bin")])), Mode::Launch(3));
        for k in LAUNCHER_VARS {
            let get = move |x: &str| (x == k).then(|| "1".to_string());
            assert_eq!(mode(Some(3), get), Mode::Join, "{k}");
        }
        // An empty variable is not a launcher.
        assert_eq!(mode(Some(2), env(&[("RANK", "")])), Mode::Launch(2));
    }

    #[test]
    fn exit_codes_follow_the_first_failure() {
        let sh = OsString::from("/bin/sh");
        let ok = launch(2, &sh, &["-c".into(), "exit 0".into()]).unwrap();
        assert_eq!(ok, 0);
        // Rank 1 fails with 3; rank 0 succeeds.
        let script = "if [ \"$ZCCL_RANK\" = 1 ]; then exit 3; fi; exit 0";
        let code = launch(2, &sh, &["-c".into(), script.into()]).unwrap();
        assert_eq!(code, 3);
        let missing = launch(1, &OsString::from("/nonexistent/zccl-bench"), &[]);
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("cannot start rank 0")
        );
    }
}
