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
//! print nothing) is discarded. The ranks and the launcher write each
//! message line with one `write` call ([`say`]), so lines of ranks sharing
//! stderr never mix mid-line. When a rank fails, the others get a few
//! seconds to notice and exit, then are killed; the exit code is that of
//! the rank that failed first (by the time it ended, as `zccl run` tells it:
//! [`Reaper`]), 128 + signal if it was killed, else 0. With `--hold`,
//! a SIGTERM or SIGINT the launcher receives is forwarded to the ranks as
//! SIGTERM ([`crate::hold`]).
//!
//! The ranks are bound as `mpirun` binds them (`--bind-to auto`, the
//! default: a core each for up to 2 ranks, a package each for more, none
//! when oversubscribed; `--bind-to none` leaves them unbound;
//! [`zccl_runtime::binding`]).
//!
//! `-N` starts at most [`MAX_LOCAL_RANKS`] ranks: every rank connects to
//! every other, with threads per connection, so n local ranks run about
//! 2n² threads in all.

use std::ffi::OsString;
use std::fmt::Display;
use std::io::{self, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zccl_runtime::UniqueId;
use zccl_runtime::binding::{BindTo, bind_command, host_plan};
use zccl_runtime::launcher::{REMOVED_VARS, pick_ports, rank_env};
use zccl_runtime::reaper::{RankExit, Reaper};

/// Variables that say this process is a rank of a launched job.
pub const LAUNCHER_VARS: [&str; 4] = ["ZCCL_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"];

/// How long ranks get to exit on their own after one failed.
pub const GRACE: Duration = Duration::from_secs(5);

/// The most ranks `-N` starts on this host (see the module docs).
pub const MAX_LOCAL_RANKS: u32 = 64;

/// `-N n` as the launcher: at most [`MAX_LOCAL_RANKS`].
///
/// ```
/// use zccl_bench::launch::{check_local_ranks, MAX_LOCAL_RANKS};
/// assert!(check_local_ranks(MAX_LOCAL_RANKS).is_ok());
/// assert!(check_local_ranks(MAX_LOCAL_RANKS + 1).unwrap_err().contains("at most 64"));
/// ```
pub fn check_local_ranks(n: u32) -> Result<(), String> {
    if n > MAX_LOCAL_RANKS {
        return Err(format!(
            "-N/--ranks {n}: at most {MAX_LOCAL_RANKS} ranks can be started on one host \
             (every rank connects to every other: {n} ranks would run about {} threads); \
             for more, start the ranks with zccl run, srun or mpirun",
            2 * u64::from(n) * u64::from(n)
        ));
    }
    Ok(())
}

/// Writes `{prog}: {msg}` and a newline to stderr with one `write` call, so
/// that the lines of ranks sharing one stderr (`-N`) never mix mid-line.
pub fn say(prog: &str, msg: impl Display) {
    let line = format!("{prog}: {msg}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

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
/// exit code (see the module docs). Messages are prefixed `prog:`.
pub fn launch(
    prog: &str,
    n: u32,
    program: &OsString,
    args: &[OsString],
    bind: BindTo,
) -> io::Result<i32> {
    let ports = pick_ports(None)?;
    let secret = UniqueId::random_secret()
        .map_err(|e| io::Error::other(e.to_string()))?
        .to_hex();
    // Dropping the reaper on an error kills the ranks started so far.
    let mut reaper = Reaper::new();
    let plan = host_plan(n, bind);
    for r in 0..n {
        let mut cmd = Command::new(program);
        if let Some(p) = &plan {
            bind_command(&mut cmd, &p[r as usize]);
        }
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
        // Huge pages for the ranks' heaps, as `zccl run` gives them.
        zccl_runtime::launcher::set_rank_tunables(&mut cmd);
        zccl_runtime::reaper::die_with_parent(&mut cmd);
        reaper.spawn(cmd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start rank {r} ({}): {e}", program.to_string_lossy()),
            )
        })?;
    }
    let mut first_failure: Option<RankExit> = None;
    let mut kill_at: Option<Instant> = None;
    let mut forwarded = false;
    loop {
        if !forwarded && crate::hold::stop_requested() {
            // `--hold`: pass SIGTERM/SIGINT on, so the ranks end their hold.
            forwarded = true;
            for r in reaper.running().collect::<Vec<_>>() {
                reaper.signal(r, libc::SIGTERM);
            }
        }
        // In the order the ranks ended: the first failure is the earliest.
        for ended in reaper.wait(Duration::from_millis(20)) {
            if !ended.exit.success() && first_failure.is_none() {
                say(
                    prog,
                    format_args!("rank {} {}: the first rank to fail", ended.rank, ended.exit),
                );
                first_failure = Some(ended.exit);
                kill_at = Some(Instant::now() + GRACE);
            }
        }
        let running: Vec<u32> = reaper.running().collect();
        if running.is_empty() {
            break;
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for r in running {
                say(
                    prog,
                    format_args!("killing rank {r} (still running {GRACE:?} after the failure)"),
                );
                reaper.signal(r, libc::SIGKILL);
            }
            kill_at = None;
        }
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
        let ok = launch("t", 2, &sh, &["-c".into(), "exit 0".into()], BindTo::Auto).unwrap();
        assert_eq!(ok, 0);
        // Rank 1 fails with 3; rank 0 succeeds.
        let script = "if [ \"$ZCCL_RANK\" = 1 ]; then exit 3; fi; exit 0";
        let code = launch("t", 2, &sh, &["-c".into(), script.into()], BindTo::Auto).unwrap();
        assert_eq!(code, 3);
        // Rank 2 fails first (3), rank 0 50 ms later (1): rank 2's code,
        // though rank 0 is the lower rank.
        let script =
            "case $ZCCL_RANK in 2) sleep 0.2; exit 3;; 0) sleep 0.25; exit 1;; esac; sleep 0.4";
        let code = launch("t", 4, &sh, &["-c".into(), script.into()], BindTo::Auto).unwrap();
        assert_eq!(code, 3);
        let missing = launch(
            "t",
            1,
            &OsString::from("/nonexistent/zccl-bench"),
            &[],
            BindTo::Auto,
        );
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("cannot start rank 0")
        );
    }
}
