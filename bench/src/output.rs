//! `--json FILE` and `--csv FILE`: one record per row and half (pure text;
//! the runner writes the files).
//!
//! Fields: `op`, `nranks`, `size` (B), `count` (elements), `type`, `redop`,
//! `root`, `in_place` (bool), `time_us`, `algbw` and `busbw` (GB/s, 10⁹ B/s),
//! `wrong` (`null` / empty without `-c`), `bytes_sent` (payload bytes all
//! ranks sent to other ranks for the half: warm-up, barrier, timed and check
//! iterations; counted by the bench itself, [`crate::count`]).

use serde::Serialize;

use crate::ops::Op;
use crate::report::{Half, Row};

/// One measurement: a row's out-of-place or in-place half.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The operation.
    pub op: Op,
    /// Number of ranks.
    pub nranks: usize,
    /// `size (B)`.
    pub size: usize,
    /// `count (elements)`.
    pub count: usize,
    /// nccl-tests' type name.
    #[serde(rename = "type")]
    pub dtype: &'static str,
    /// The reduction, or `none`.
    pub redop: &'static str,
    /// The root, or -1.
    pub root: i64,
    /// Whether this is the in-place half.
    pub in_place: bool,
    /// µs per iteration (the mean over the ranks, or as `-a` says).
    pub time_us: f64,
    /// GB/s.
    pub algbw: f64,
    /// GB/s.
    pub busbw: f64,
    /// Wrong elements (summed over ranks), `None` without `-c`.
    pub wrong: Option<u64>,
    /// Payload bytes all ranks sent to other ranks for this half.
    pub bytes_sent: u64,
}

/// The records of `rows`: out-of-place then in-place for each row.
pub fn records(rows: &[Row]) -> Vec<Record> {
    let rec = |r: &Row, h: &Half, in_place: bool| Record {
        op: r.op,
        nranks: r.nranks,
        size: r.size,
        count: r.count,
        dtype: r.dtype,
        redop: r.redop,
        root: r.root,
        in_place,
        time_us: h.time_us,
        algbw: h.algbw,
        busbw: h.busbw,
        wrong: h.wrong,
        bytes_sent: h.bytes_sent,
    };
    rows.iter()
        .flat_map(|r| [rec(r, &r.out_of_place, false), rec(r, &r.in_place, true)])
        .collect()
}

/// A JSON array of [`Record`]s.
pub fn to_json(rows: &[Row]) -> String {
    serde_json::to_string_pretty(&records(rows)).expect("records serialize") + "\n"
}

/// CSV with a header line.
pub fn to_csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "op,nranks,size,count,type,redop,root,in_place,time_us,algbw,busbw,wrong,bytes_sent\n",
    );
    for r in records(rows) {
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.op,
            r.nranks,
            r.size,
            r.count,
            r.dtype,
            r.redop,
            r.root,
            r.in_place,
            r.time_us,
            r.algbw,
            r.busbw,
            r.wrong.map(|w| w.to_string()).unwrap_or_default(),
            r.bytes_sent
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::layout;

    fn rows() -> Vec<Row> {
        let l = layout(Op::Broadcast, 8, 1 << 20, 4, 0);
        vec![Row::new(
            Op::Broadcast,
            4,
            &l,
            ("double", "none", 2),
            (0.001, Some(0)),
            (0.002, None),
        )]
    }

    #[test]
    fn json_records() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&rows())).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0]["op"], "broadcast");
        assert_eq!(a[0]["type"], "double");
        assert_eq!(a[0]["size"], 1 << 20);
        assert_eq!(a[0]["count"], 1 << 17);
        assert_eq!(a[0]["root"], 2);
        assert_eq!(a[0]["in_place"], false);
        assert_eq!(a[0]["wrong"], 0);
        assert_eq!(a[0]["time_us"], 1000.0);
        assert_eq!(a[0]["algbw"], 1.048576);
        assert_eq!(a[1]["in_place"], true);
        assert!(a[1]["wrong"].is_null());
        assert_eq!(a[0]["bytes_sent"], 0);
    }

    #[test]
    fn csv_lines() {
        let text = to_csv(&rows());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            "broadcast,4,1048576,131072,double,none,2,false,1000,1.048576,1.048576,0,0"
        );
        assert!(lines[2].ends_with(",true,2000,0.524288,0.524288,,0"));
    }
}
