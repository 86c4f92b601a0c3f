//! One rank of `zccl bench route` (the hidden `--worker` mode): the harness
//! starts one per rank inside its host's namespace, with the launcher
//! variables, `ZCCL_ROUTER` and `ZCCL_TOPO_FILE` set.
//!
//! 1. Join the job ([`Communicator::from_env`]) and pass a barrier.
//! 2. Warm up: the scenario's transfers with at most [`WARM_BYTES`] each,
//!    verified like the real ones (connections, buffers and the router's
//!    paths are exercised before anything is timed).
//! 3. The timed exchange: receivers post their receives and build the
//!    expected bytes, senders build their payloads, all before a barrier;
//!    after it, each sender notes the time and its host's NIC counters,
//!    prints `ROUTE-START`, sends, waits for the send and for the receiver's
//!    verdict (sent once every byte was checked), notes the time and the
//!    counters again and prints `ROUTE-DONE`.
//! 4. A last barrier (ranks that relay for others stay until everything
//!    arrived), then `ROUTE-RESULT` with this rank's [`RankReport`].
//!
//! Payloads travel on channel 1; barriers and verdicts on channel 0, so that
//! a posted receive of the payload never holds up a barrier.
//!
//! Test hook: with `ZCCL_BENCH_CORRUPT=1` ([`crate::runner::CORRUPT_ENV`])
//! every receiver flips one bit of the timed payload it got before checking
//! it, so the run must report wrong data.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use zccl_runtime::{Channel, Communicator, Op};

use super::pattern::{fill, first_difference};
use super::protocol::{
    DONE, RankReport, RecvReport, START, SendReport, VERDICT_LEN, decode_verdict, encode_verdict,
    event_line, result_line,
};
use super::scenario::{Scenario, Shape, Transfer};
use crate::runner::{CORRUPT_ENV, corrupt_requested};

/// What every exchange of this rank uses.
struct Rank {
    ctl: Channel,
    data: Channel,
    me: u32,
    n: u32,
    nics: usize,
}

/// Largest transfer of the warm-up.
pub const WARM_BYTES: u64 = 4 << 20;

/// Runs this rank; errors end the process with a message (exit code 1).
pub fn run(shape: Shape, scenario: Scenario, bytes: u64) -> Result<()> {
    let comm = Communicator::from_env().context("cannot join the job")?;
    let (me, n) = (comm.rank(), comm.size());
    ensure!(
        n as usize == shape.world(),
        "the job has {n} ranks, the scenario {} ({} hosts x {} ranks)",
        shape.world(),
        shape.hosts,
        shape.ranks
    );
    let rank = Rank {
        ctl: comm.channel(0),
        data: comm.channel(1),
        me,
        n,
        nics: shape.nics,
    };
    let corrupt = corrupt_requested(std::env::var(CORRUPT_ENV).ok().as_deref());
    barrier(&rank.ctl, me, n).context("first barrier")?;
    let transfers = scenario.transfers(&shape, bytes);
    let warm: Vec<Transfer> = transfers
        .iter()
        .map(|t| Transfer {
            bytes: t.bytes.min(WARM_BYTES),
            ..*t
        })
        .collect();
    let w = exchange(&rank, &warm, false, false).context("warm-up")?;
    if let Some(bad) = w.recvs.iter().find(|r| !r.verified) {
        bail!(
            "warm-up: wrong data from rank {} (first wrong byte at offset {})",
            bad.from,
            bad.first_bad.unwrap_or(0)
        );
    }
    let report = exchange(&rank, &transfers, true, corrupt).context("timed exchange")?;
    barrier(&rank.ctl, me, n).context("last barrier")?;
    say(&result_line(&report));
    drop(comm);
    Ok(())
}

/// Prints one line on stdout at once.
pub(super) fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// Every rank sends one byte to and receives one byte from every other.
pub(super) fn barrier(ctl: &Channel, me: u32, n: u32) -> Result<()> {
    let mut ops = Vec::with_capacity(2 * n as usize);
    for p in (0..n).filter(|&p| p != me) {
        ops.push(Op::send(p, vec![0u8]));
        ops.push(Op::recv::<u8>(p, 1));
    }
    ctl.batch(ops)?.wait()?;
    Ok(())
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// This host's NIC transmit counters (`nic0` ...), empty if unreadable.
fn nic_tx(nics: usize) -> Vec<u64> {
    (0..nics)
        .map(|k| {
            let f = format!("/sys/class/net/nic{k}/statistics/tx_bytes");
            std::fs::read_to_string(f).ok()?.trim().parse().ok()
        })
        .collect::<Option<Vec<u64>>>()
        .unwrap_or_default()
}

/// One exchange of `transfers`; `announce`: print `ROUTE-START`/`ROUTE-DONE`
/// (the timed one); `corrupt`: the test hook.
fn exchange(
    rank: &Rank,
    transfers: &[Transfer],
    announce: bool,
    corrupt: bool,
) -> Result<RankReport> {
    let Rank {
        ctl,
        data,
        me,
        n,
        nics,
    } = rank;
    let (me, n, nics) = (*me, *n, *nics);
    let sends: Vec<Transfer> = transfers.iter().filter(|t| t.from == me).copied().collect();
    let recvs: Vec<Transfer> = transfers.iter().filter(|t| t.to == me).copied().collect();
    let len = |t: &Transfer| usize::try_from(t.bytes).context("payload too large");
    // Everything that is not the transfer happens before the barrier.
    let payloads = sends
        .iter()
        .map(|t| Ok(fill(me, len(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let expected = recvs
        .iter()
        .map(|t| Ok(fill(t.from, len(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let posted = recvs
        .iter()
        .map(|t| Ok(data.irecv::<u8>(t.from, len(t)?)?))
        .collect::<Result<Vec<_>>>()?;
    barrier(ctl, me, n)?;

    let start_ns = now_ns();
    let before = nic_tx(nics);
    if announce && !sends.is_empty() {
        say(&event_line(START, me, start_ns));
    }
    let handles = sends
        .iter()
        .zip(payloads)
        .map(|(t, p)| Ok(data.isend(t.to, p)?))
        .collect::<Result<Vec<_>>>()?;

    let mut report = RankReport {
        rank: me,
        sends: Vec::new(),
        recvs: Vec::new(),
    };
    let mut verdicts = Vec::new();
    for ((t, h), want) in recvs.iter().zip(posted).zip(&expected) {
        let got = h
            .wait()
            .with_context(|| format!("receiving {} B from rank {}", t.bytes, t.from))?;
        let bad = if corrupt && !got.is_empty() {
            let mut v = got.to_vec();
            v[got.len() / 2] ^= 1;
            first_difference(&v, want)
        } else {
            first_difference(&got, want)
        }
        .map(|k| k as u64);
        verdicts.push(ctl.isend(t.from, encode_verdict(bad))?);
        report.recvs.push(RecvReport {
            from: t.from,
            bytes: t.bytes,
            verified: bad.is_none(),
            first_bad: bad,
        });
    }
    for (t, h) in sends.iter().zip(handles) {
        h.wait()
            .with_context(|| format!("sending {} B to rank {}", t.bytes, t.to))?;
        let v = ctl
            .recv::<u8>(t.to, VERDICT_LEN)
            .with_context(|| format!("waiting for rank {}'s verdict", t.to))?;
        let end_ns = now_ns();
        let (verified, first_bad) =
            decode_verdict(&v).with_context(|| format!("malformed verdict from rank {}", t.to))?;
        report.sends.push(SendReport {
            to: t.to,
            bytes: t.bytes,
            start_ns,
            end_ns,
            verified,
            first_bad,
            nic_tx_before: before.clone(),
            nic_tx_after: nic_tx(nics),
        });
    }
    if announce && !sends.is_empty() {
        say(&event_line(DONE, me, now_ns()));
    }
    for v in verdicts {
        v.wait()?;
    }
    Ok(report)
}
