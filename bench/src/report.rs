//! Results and their text, in nccl-tests' shape (pure).
//!
//! A [`Row`] is one size of one (op, type, reduction): the out-of-place and
//! the in-place [`Half`]. [`Half::new`] turns a time into `algbw` and `busbw`
//! with [`zccl_primitives::busbw::bandwidth`]; the text functions lay them
//! out exactly as nccl-tests prints them (`%12li  %12li  %8s  %6s  %6s`, then
//! per half `  %7s  %6.2f  %6.2f  %5g`, `N/A` for `#wrong` without `-c`).

use serde::Serialize;
use zccl_primitives::busbw::bandwidth;

use crate::ops::{Layout, Op};

/// One half (out-of-place or in-place) of a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Half {
    /// Time per iteration in µs: the mean over the ranks, or as `-a` says
    /// (rank 0's, the minimum or the maximum); with `--repeats`, that of
    /// the median window.
    pub time_us: f64,
    /// `S / t` in GB/s (10⁹ B/s).
    pub algbw: f64,
    /// `algbw × factor(n)` in GB/s.
    pub busbw: f64,
    /// Wrong elements summed over ranks and check iterations; `None` without `-c`.
    pub wrong: Option<u64>,
    /// Payload bytes all ranks sent to other ranks for this half (warm-up,
    /// barrier, timed and check iterations; not the result aggregation);
    /// 0 until the runner fills it in.
    pub bytes_sent: u64,
}

impl Half {
    /// The half of `op` moving `bw_bytes` (`S`) in `secs` per iteration over `n` ranks.
    ///
    /// ```
    /// use zccl_bench::{ops::Op, report::Half};
    /// let h = Half::new(Op::AllReduce, 1_000_000_000, 1.0, 8, Some(0));
    /// assert_eq!((h.algbw, h.busbw, h.time_us), (1.0, 1.75, 1e6));
    /// ```
    pub fn new(op: Op, bw_bytes: usize, secs: f64, n: usize, wrong: Option<u64>) -> Self {
        let bw = bandwidth(op.bw_op(), bw_bytes as f64, secs, n);
        Half {
            time_us: secs * 1e6,
            algbw: bw.algbw / 1e9,
            busbw: bw.busbw / 1e9,
            wrong,
            bytes_sent: 0,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The operation.
    pub op: Op,
    /// Number of ranks.
    pub nranks: usize,
    /// `size (B)`.
    pub size: usize,
    /// `count (elements)`.
    pub count: usize,
    /// nccl-tests' type name.
    pub dtype: &'static str,
    /// The reduction, or `none`.
    pub redop: &'static str,
    /// The root, or -1.
    pub root: i64,
    /// Out-of-place.
    pub out_of_place: Half,
    /// In-place.
    pub in_place: Half,
}

impl Row {
    /// A row from its layout, its `(type, redop, root)` columns and the two
    /// halves' (seconds, wrong) measurements.
    pub fn new(
        op: Op,
        n: usize,
        l: &Layout,
        (dtype, redop, root): (&'static str, &'static str, i64),
        oop: (f64, Option<u64>),
        ip: (f64, Option<u64>),
    ) -> Self {
        Row {
            op,
            nranks: n,
            size: l.bytes,
            count: l.count,
            dtype,
            redop,
            root,
            out_of_place: Half::new(op, l.bw_bytes, oop.0, n, oop.1),
            in_place: Half::new(op, l.bw_bytes, ip.0, n, ip.1),
        }
    }
}

/// C's `%g` (6 significant digits, trailing zeros removed).
///
/// ```
/// use zccl_bench::report::fmt_g;
/// assert_eq!(fmt_g(0.0), "0");
/// assert_eq!(fmt_g(12.5), "12.5");
/// assert_eq!(fmt_g(1234567.0), "1.23457e+06");
/// assert_eq!(fmt_g(0.0001234), "0.0001234");
/// ```
pub fn fmt_g(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    const P: i32 = 6;
    let sci = format!("{:.*e}", (P - 1) as usize, x);
    let (mant, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    let strip = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..P).contains(&exp) {
        let m = strip(mant.to_string());
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        strip(format!("{:.*}", (P - 1 - exp) as usize, x))
    }
}

/// nccl-tests' time column: `%7.0f` from 10 ms, `%7.1f` from 100 µs, else `%7.2f`.
///
/// ```
/// assert_eq!(zccl_bench::report::fmt_time(12.345), "  12.35");
/// assert_eq!(zccl_bench::report::fmt_time(123456.0), " 123456");
/// ```
pub fn fmt_time(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{us:7.0}")
    } else if us >= 100.0 {
        format!("{us:7.1}")
    } else {
        format!("{us:7.2}")
    }
}

fn half_text(h: &Half) -> String {
    let wrong = match h.wrong {
        Some(w) => fmt_g(w as f64),
        None => "N/A".into(),
    };
    format!(
        "  {:>7}  {:6.2}  {:6.2}  {:>5}",
        fmt_time(h.time_us),
        h.algbw,
        h.busbw,
        wrong
    )
}

/// One table line (no newline).
pub fn row_text(r: &Row) -> String {
    format!(
        "{:>12}  {:>12}  {:>8}  {:>6}  {:>6}{}{}",
        r.size,
        r.count,
        r.dtype,
        r.redop,
        r.root,
        half_text(&r.out_of_place),
        half_text(&r.in_place)
    )
}

/// The column heads (four lines, each ending in a newline).
pub fn table_head() -> String {
    let mut s = String::from("#\n");
    s += &format!(
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}           out-of-place                       in-place\n",
        "", "", "", "", ""
    );
    s += &format!(
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6} {:>6}  {:>7}  {:>6}  {:>6} {:>6}\n",
        "size",
        "count",
        "type",
        "redop",
        "root",
        "time",
        "algbw",
        "busbw",
        "#wrong",
        "time",
        "algbw",
        "busbw",
        "#wrong"
    );
    s += &format!(
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6}  {:>5}  {:>7}  {:>6}  {:>6}  {:>5}\n",
        "(B)",
        "(elements)",
        "",
        "",
        "",
        "(us)",
        "(GB/s)",
        "(GB/s)",
        "",
        "(us)",
        "(GB/s)",
        "(GB/s)",
        ""
    );
    s.lines().map(|l| l.trim_end().to_string() + "\n").collect()
}

/// Sum of `#wrong` over every checked half; `None` when nothing was checked.
pub fn total_wrong(rows: &[Row]) -> Option<u64> {
    let mut any = false;
    let mut sum = 0u64;
    for h in rows.iter().flat_map(|r| [&r.out_of_place, &r.in_place]) {
        if let Some(w) = h.wrong {
            any = true;
            sum += w;
        }
    }
    any.then_some(sum)
}

/// The mean busbw over every half of every row (nccl-tests' footer figure).
pub fn avg_busbw(rows: &[Row]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter()
        .map(|r| r.out_of_place.busbw + r.in_place.busbw)
        .sum::<f64>()
        / (2 * rows.len()) as f64
}

/// The footer: out-of-bounds count (`#wrong` summed), average bus
/// bandwidth, and (zccl's addition) the payload bytes all ranks sent during
/// the run, when known: `# Bytes sent by all ranks : N`.
pub fn footer(op: Op, rows: &[Row], bytes_sent: Option<u64>) -> String {
    let wrong = match total_wrong(rows) {
        Some(0) => "0 OK".to_string(),
        Some(w) => format!("{w} FAILED"),
        None => "N/A (not checked, -c 0)".to_string(),
    };
    let bytes = bytes_sent
        .map(|b| format!("# {BYTES_SENT_LABEL} : {b}\n"))
        .unwrap_or_default();
    format!(
        "# {:<20} : {wrong}\n# {:<20} : {}\n{bytes}#\n# Collective test concluded: {op}\n",
        "Out of bounds values",
        "Avg bus bandwidth",
        fmt_g(avg_busbw(rows))
    )
}

/// The footer label of the run's byte count (`# Bytes sent by all ranks : N`).
pub const BYTES_SENT_LABEL: &str = "Bytes sent by all ranks";

/// The byte count of a footer line `# Bytes sent by all ranks : N`, if `line` is one.
///
/// ```
/// use zccl_bench::report::parse_bytes_sent;
/// assert_eq!(parse_bytes_sent("# Bytes sent by all ranks : 123"), Some(123));
/// assert_eq!(parse_bytes_sent("# Avg bus bandwidth    : 1.5"), None);
/// ```
pub fn parse_bytes_sent(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix(BYTES_SENT_LABEL)?.trim_start();
    rest.strip_prefix(':')?.trim().parse().ok()
}

/// What the preamble says about the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Preamble {
    /// The operation.
    pub op: Op,
    /// Number of ranks.
    pub nranks: usize,
    /// `-b`, `-e`.
    pub minbytes: usize,
    /// `-e`.
    pub maxbytes: usize,
    /// `2(factor)` or `1048576(bytes)`.
    pub step: String,
    /// `-w`, `-n`, `-c`, `-z`.
    pub warmup: u32,
    /// `-n`.
    pub iters: u32,
    /// `-c`.
    pub checks: u32,
    /// `-z`.
    pub blocking: bool,
    /// Extra lines about the op (offset, state shape), without `# `.
    pub notes: Vec<String>,
    /// One `(pid, host, transport)` per rank, in rank order.
    pub ranks: Vec<(u32, String, String)>,
}

/// The lines before the table: version, parameters, one line per rank.
pub fn preamble(p: &Preamble) -> String {
    let mut s = format!(
        "# zccl-bench version {}\n# Collective test starting: {}\n",
        env!("CARGO_PKG_VERSION"),
        p.op
    );
    s += &format!(
        "# nRanks {} minBytes {} maxBytes {} step: {} warmup iters: {} iters: {} validation: {} blocking: {}\n",
        p.nranks,
        p.minbytes,
        p.maxbytes,
        p.step,
        p.warmup,
        p.iters,
        p.checks,
        u8::from(p.blocking)
    );
    for n in &p.notes {
        s += &format!("# {n}\n");
    }
    s += "#\n# Using devices\n";
    for (r, (pid, host, transport)) in p.ranks.iter().enumerate() {
        s += &format!(
            "#  Rank {r:>2} Group  0 Pid {pid:>6} on {host:>10} device  - host memory{}\n",
            if transport.is_empty() {
                String::new()
            } else {
                format!(" ({transport})")
            }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::layout;

    #[test]
    fn busbw_acceptance_n8_1gb_1s() {
        // S = 1 GB, t = 1 s, n = 8, through the report path.
        let gbs = |op| Half::new(op, 1_000_000_000, 1.0, 8, None).busbw;
        assert_eq!(gbs(Op::AllReduce), 1.75);
        assert_eq!(gbs(Op::AllGather), 0.875);
        assert_eq!(gbs(Op::ReduceScatter), 0.875);
        assert_eq!(gbs(Op::Alltoall), 0.875);
        assert_eq!(gbs(Op::Sendrecv), 1.0);
        assert_eq!(gbs(Op::Broadcast), 1.0);
        assert_eq!(gbs(Op::RingShift), 1.0);
        assert_eq!(gbs(Op::TokenRing), 1.0);
        assert_eq!(gbs(Op::AllScan), 1.0);
        // And through a layout: 1 GB requested as 1e9 bytes of floats.
        for op in [Op::AllGather, Op::ReduceScatter, Op::Alltoall] {
            let l = layout(op, 4, 1_000_000_000, 8, 0);
            assert_eq!(l.bw_bytes, 1_000_000_000);
            let r = Row::new(op, 8, &l, ("float", "sum", -1), (1.0, None), (1.0, None));
            assert_eq!((r.out_of_place.algbw, r.out_of_place.busbw), (1.0, 0.875));
        }
    }

    #[test]
    fn g_format() {
        for (x, s) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (100000.0, "100000"),
            (999999.0, "999999"),
            (1e6, "1e+06"),
            (9999995.0, "1e+07"),
            (0.00012345678, "0.000123457"),
            (0.00001, "1e-05"),
            (2.71234567, "2.71235"),
            (-2.5, "-2.5"),
            (12.0, "12"),
        ] {
            assert_eq!(fmt_g(x), s, "{x}");
        }
    }

    fn sample_rows() -> Vec<Row> {
        let l1 = layout(Op::AllReduce, 4, 1024, 2, 0);
        let l2 = layout(Op::AllReduce, 4, 4 << 20, 2, 0);
        vec![
            Row::new(
                Op::AllReduce,
                2,
                &l1,
                ("float", "sum", -1),
                (12.5e-6, Some(0)),
                (11.25e-6, Some(0)),
            ),
            Row::new(
                Op::AllReduce,
                2,
                &l2,
                ("float", "sum", -1),
                (2048e-6, Some(0)),
                (12_500e-6, Some(3)),
            ),
        ]
    }

    #[test]
    fn golden_table() {
        let rows = sample_rows();
        let mut text = preamble(&Preamble {
            op: Op::AllReduce,
            nranks: 2,
            minbytes: 1024,
            maxbytes: 4 << 20,
            step: "4096(factor)".into(),
            warmup: 1,
            iters: 20,
            checks: 1,
            blocking: false,
            notes: vec![],
            ranks: vec![
                (4242, "node7".into(), "shm".into()),
                (4243, "node7".into(), String::new()),
            ],
        })
        .replace(env!("CARGO_PKG_VERSION"), "X");
        text += &table_head();
        for r in &rows {
            text += &row_text(r);
            text += "\n";
        }
        text += &footer(Op::AllReduce, &rows, Some(1234));
        let golden = "\
# zccl-bench version X
# Collective test starting: all_reduce
# nRanks 2 minBytes 1024 maxBytes 4194304 step: 4096(factor) warmup iters: 1 iters: 20 validation: 1 blocking: 0
#
# Using devices
#  Rank  0 Group  0 Pid   4242 on      node7 device  - host memory (shm)
#  Rank  1 Group  0 Pid   4243 on      node7 device  - host memory
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
        1024           256     float     sum      -1    12.50    0.08    0.08      0    11.25    0.09    0.09      0
     4194304       1048576     float     sum      -1   2048.0    2.05    2.05      0    12500    0.34    0.34      3
# Out of bounds values : 3 FAILED
# Avg bus bandwidth    : 0.639122
# Bytes sent by all ranks : 1234
#
# Collective test concluded: all_reduce
";
        assert_eq!(text, golden);
    }

    #[test]
    fn unchecked_rows_say_na() {
        let mut rows = sample_rows();
        for r in &mut rows {
            r.out_of_place.wrong = None;
            r.in_place.wrong = None;
        }
        assert!(row_text(&rows[0]).ends_with("    N/A"));
        let f = footer(Op::AllReduce, &rows, None);
        assert!(f.contains("N/A (not checked, -c 0)"));
        assert!(!f.contains("Bytes sent"));
        assert_eq!(total_wrong(&rows), None);
        assert_eq!(avg_busbw(&[]), 0.0);
    }
}
