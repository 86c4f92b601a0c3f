//! What the ranks of `zccl bench route` tell the harness (lines on their
//! stdout) and each other (the receiver's verdict), and how both are encoded
//! (pure).
//!
//! Lines, one per event, each starting with a tag:
//!
//! * `ROUTE-START <rank> <unix ns>`: a sender passed the barrier and is
//!   about to send (the harness times the failure scenario's link-down
//!   from the first one);
//! * `ROUTE-DONE <rank> <unix ns>`: a sender got its receiver's verdict;
//! * `ROUTE-RESULT <json>`: a rank's [`RankReport`], its last line;
//! * `SP-RESULT <json>`: in the SP scenarios ([`super::sp`]), a rank's
//!   [`SpRankReport`] instead, its last line.
//!
//! Anything else on a rank's stdout is kept as text.

use serde::{Deserialize, Serialize};

/// Tag of the line a sender prints when its timed send starts.
pub const START: &str = "ROUTE-START";
/// Tag of the line a sender prints when its transfer is complete and checked.
pub const DONE: &str = "ROUTE-DONE";
/// Tag of a rank's report.
pub const RESULT: &str = "ROUTE-RESULT";
/// Tag of a rank's report in the SP scenarios.
pub const SP_RESULT: &str = "SP-RESULT";

/// One timed step of an SP scenario on one rank: one repetition of one
/// strategy, from the barrier before it to this rank's last byte in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpStep {
    /// The strategy (`one_way`, `two_one_way`, `bidir`, `all_scan`, `all_gather`).
    pub strategy: String,
    /// The repetition, from 0.
    pub rep: u32,
    /// When this rank left the barrier, ns since the Unix epoch.
    pub start_ns: u64,
    /// When this rank had all it receives, ns since the Unix epoch.
    pub end_ns: u64,
    /// Everything this rank received was checked and right.
    pub verified: bool,
    /// The first wrong byte offset (in the concatenation of what this rank
    /// received in the step), if any.
    pub first_bad: Option<u64>,
}

/// What one rank of an SP scenario measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpRankReport {
    /// The rank.
    pub rank: u32,
    /// Its timed steps.
    pub steps: Vec<SpStep>,
}

/// One send of a rank, timed from the barrier to the receiver's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReport {
    /// Receiving rank.
    pub to: u32,
    /// Payload bytes.
    pub bytes: u64,
    /// When the send started, ns since the Unix epoch (`CLOCK_REALTIME`,
    /// which every namespace of the machine shares).
    pub start_ns: u64,
    /// When the receiver's verdict arrived, ns since the Unix epoch.
    pub end_ns: u64,
    /// The receiver's verdict: every byte matched.
    pub verified: bool,
    /// The first wrong offset the receiver found, if any.
    pub first_bad: Option<u64>,
    /// Transmit counters of this host's NICs (`nic0`, `nic1`, ...) at the
    /// start (empty when they cannot be read).
    pub nic_tx_before: Vec<u64>,
    /// The same counters at the end.
    pub nic_tx_after: Vec<u64>,
}

/// One receive of a rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecvReport {
    /// Sending rank.
    pub from: u32,
    /// Payload bytes.
    pub bytes: u64,
    /// Every byte matched the sender's pattern.
    pub verified: bool,
    /// The first wrong offset, if any.
    pub first_bad: Option<u64>,
}

/// What one rank did in the timed exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankReport {
    /// The rank.
    pub rank: u32,
    /// Its sends.
    pub sends: Vec<SendReport>,
    /// Its receives.
    pub recvs: Vec<RecvReport>,
}

/// One line of a rank's stdout, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `ROUTE-START`.
    Start {
        /// The sender.
        rank: u32,
        /// Unix ns.
        at_ns: u64,
    },
    /// `ROUTE-DONE`.
    Done {
        /// The sender.
        rank: u32,
        /// Unix ns.
        at_ns: u64,
    },
    /// `ROUTE-RESULT`.
    Result(RankReport),
    /// `SP-RESULT`.
    Sp(SpRankReport),
    /// Anything else (including a malformed tagged line).
    Other(String),
}

/// The `ROUTE-START` or `ROUTE-DONE` line.
pub fn event_line(tag: &str, rank: u32, at_ns: u64) -> String {
    format!("{tag} {rank} {at_ns}")
}

/// The `ROUTE-RESULT` line.
pub fn result_line(r: &RankReport) -> String {
    format!(
        "{RESULT} {}",
        serde_json::to_string(r).expect("a report serializes")
    )
}

/// The `SP-RESULT` line.
pub fn sp_result_line(r: &SpRankReport) -> String {
    format!(
        "{SP_RESULT} {}",
        serde_json::to_string(r).expect("a report serializes")
    )
}

/// Parses one line of a rank's stdout.
///
/// ```
/// use zccl_bench::route::protocol::{event_line, parse, Line, START};
/// assert_eq!(parse(&event_line(START, 2, 99)), Line::Start { rank: 2, at_ns: 99 });
/// assert_eq!(parse("hello"), Line::Other("hello".into()));
/// ```
pub fn parse(line: &str) -> Line {
    let other = || Line::Other(line.to_string());
    let Some((tag, rest)) = line.trim_end().split_once(' ') else {
        return other();
    };
    let event = || -> Option<(u32, u64)> {
        let (r, t) = rest.split_once(' ')?;
        Some((r.parse().ok()?, t.parse().ok()?))
    };
    match tag {
        START => event().map_or_else(other, |(rank, at_ns)| Line::Start { rank, at_ns }),
        DONE => event().map_or_else(other, |(rank, at_ns)| Line::Done { rank, at_ns }),
        RESULT => serde_json::from_str(rest).map_or_else(|_| other(), Line::Result),
        SP_RESULT => serde_json::from_str(rest).map_or_else(|_| other(), Line::Sp),
        _ => other(),
    }
}

/// Length of the receiver's verdict message.
pub const VERDICT_LEN: usize = 16;

/// The receiver's verdict, as sent back to the sender: a `u64` 1 (all
/// bytes right) or 0, then the first wrong offset (`u64::MAX` for none).
pub fn encode_verdict(first_bad: Option<u64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(VERDICT_LEN);
    v.extend_from_slice(&u64::from(first_bad.is_none()).to_le_bytes());
    v.extend_from_slice(&first_bad.unwrap_or(u64::MAX).to_le_bytes());
    v
}

/// Decodes a verdict: `(verified, first_bad)`; `None` if malformed.
///
/// ```
/// use zccl_bench::route::protocol::{decode_verdict, encode_verdict};
/// assert_eq!(decode_verdict(&encode_verdict(None)), Some((true, None)));
/// assert_eq!(decode_verdict(&encode_verdict(Some(7))), Some((false, Some(7))));
/// assert_eq!(decode_verdict(&[1, 2]), None);
/// ```
pub fn decode_verdict(b: &[u8]) -> Option<(bool, Option<u64>)> {
    if b.len() != VERDICT_LEN {
        return None;
    }
    let ok = u64::from_le_bytes(b[..8].try_into().ok()?);
    let bad = u64::from_le_bytes(b[8..].try_into().ok()?);
    match (ok, bad) {
        (1, u64::MAX) => Some((true, None)),
        (0, bad) if bad != u64::MAX => Some((false, Some(bad))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let r = RankReport {
            rank: 1,
            sends: vec![SendReport {
                to: 5,
                bytes: 64,
                start_ns: 10,
                end_ns: 20,
                verified: true,
                first_bad: None,
                nic_tx_before: vec![1, 2],
                nic_tx_after: vec![3, 4],
            }],
            recvs: vec![RecvReport {
                from: 4,
                bytes: 8,
                verified: false,
                first_bad: Some(3),
            }],
        };
        assert_eq!(parse(&result_line(&r)), Line::Result(r));
        assert_eq!(
            parse(&event_line(DONE, 0, 1_700_000_000_000_000_000)),
            Line::Done {
                rank: 0,
                at_ns: 1_700_000_000_000_000_000
            }
        );
        let sp = SpRankReport {
            rank: 3,
            steps: vec![SpStep {
                strategy: "bidir".into(),
                rep: 2,
                start_ns: 5,
                end_ns: 9,
                verified: true,
                first_bad: None,
            }],
        };
        assert_eq!(parse(&sp_result_line(&sp)), Line::Sp(sp));
        for bad in [
            "ROUTE-START x 1",
            "ROUTE-RESULT {",
            "ROUTE-DONE 1",
            "SP-RESULT {",
            "",
        ] {
            assert_eq!(parse(bad), Line::Other(bad.into()), "{bad:?}");
        }
    }
}
