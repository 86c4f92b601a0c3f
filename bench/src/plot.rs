//! `--plot FILE.svg`: busbw against size on a log2 axis, one line per
//! (type, reduction, out-of-place / in-place), as a small self-contained SVG
//! (pure; no plotting library).

use std::fmt::Write;

use crate::report::Row;
use crate::sweep::human;

const W: f64 = 820.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A step of 1, 2 or 5 × 10^k giving about `ticks` intervals up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = max / ticks;
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let f = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    f * p
}

/// The series of `rows`: label and (size, busbw) points, sizes > 0 only.
pub fn series(rows: &[Row]) -> Vec<(String, Vec<(usize, f64)>)> {
    let mut out: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
    for r in rows.iter().filter(|r| r.size > 0) {
        for (half, busbw) in [
            ("out-of-place", r.out_of_place.busbw),
            ("in-place", r.in_place.busbw),
        ] {
            let label = if r.redop == "none" {
                format!("{} {half}", r.dtype)
            } else {
                format!("{} {} {half}", r.dtype, r.redop)
            };
            match out.iter_mut().find(|(l, _)| *l == label) {
                Some((_, pts)) => pts.push((r.size, busbw)),
                None => out.push((label, vec![(r.size, busbw)])),
            }
        }
    }
    out
}

/// The SVG document for `rows` under `title`.
///
/// ```
/// let svg = zccl_bench::plot::svg("all_reduce, 2 ranks", &[]);
/// assert!(svg.starts_with("<svg") && svg.contains("no data"));
/// ```
pub fn svg(title: &str, rows: &[Row]) -> String {
    let series = series(rows);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        esc(title)
    );
    let pts: Vec<(usize, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if pts.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no data (every size was 0 B)</text>"#,
            W / 2.0,
            H / 2.0
        );
        s += "</svg>\n";
        return s;
    }
    let lx = |size: usize| (size as f64).log2();
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(lx(p.0)), b.max(lx(p.0)))
    });
    x0 = x0.floor();
    x1 = x1.ceil();
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let ymax_data = pts
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let ystep = if ymax_data > 0.0 {
        nice_step(ymax_data, 5.0)
    } else {
        0.2
    };
    let y1 = ((ymax_data / ystep).floor() + 1.0) * ystep;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |size: usize| LEFT + (lx(size) - x0) / (x1 - x0) * pw;
    let py = |v: f64| TOP + ph - (v.clamp(0.0, y1) / y1) * ph;
    // Axes and grid.
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let xstep = ((x1 - x0) / 12.0).ceil().max(1.0);
    let mut k = x0;
    while k <= x1 + 1e-9 {
        let x = LEFT + (k - x0) / (x1 - x0) * pw;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 16.0,
            human(1usize << (k as u32).min(62))
        );
        k += xstep;
    }
    let mut v = 0.0;
    while v <= y1 + ystep * 1e-6 {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            crate::report::fmt_g((v * 1e6).round() / 1e6)
        );
        v += ystep;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">size (B), log2 scale</text>"#,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">busbw (GB/s)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Series.
    for (i, (label, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dash = if label.ends_with("in-place") && !label.ends_with("out-of-place") {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{} B: {y:.3} GB/s</title></circle>"#,
                px(x),
                py(y),
                x
            );
        }
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let lx0 = LEFT + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx0}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx0 + 24.0,
            lx0 + 30.0,
            ly + 4.0,
            esc(label)
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Op, layout};

    fn row(size: usize, redop: &'static str, bw: f64) -> Row {
        let l = layout(Op::AllReduce, 4, size, 2, 0);
        let secs = if bw > 0.0 {
            size as f64 / (bw * 1e9)
        } else {
            1.0
        };
        Row::new(
            Op::AllReduce,
            2,
            &l,
            ("float", redop, -1),
            (secs, Some(0)),
            (secs * 2.0, Some(0)),
        )
    }

    #[test]
    fn series_per_type_op_and_half() {
        let rows = vec![
            row(0, "sum", 0.0),
            row(1024, "sum", 1.0),
            row(4096, "sum", 2.0),
            row(1024, "max", 1.5),
        ];
        let s = series(&rows);
        let labels: Vec<&str> = s.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "float sum out-of-place",
                "float sum in-place",
                "float max out-of-place",
                "float max in-place"
            ]
        );
        assert_eq!(s[0].1.len(), 2); // the 0 B row is not on a log axis
        assert!((s[1].1[1].1 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn document_shape() {
        let rows: Vec<Row> = (10..=20)
            .step_by(2)
            .map(|k| row(1 << k, "sum", k as f64))
            .collect();
        let doc = svg("all_reduce <2 ranks> & more", &rows);
        assert!(doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 2);
        assert_eq!(doc.matches("<circle").count(), 12);
        assert!(doc.contains("&lt;2 ranks&gt; &amp; more"));
        assert!(doc.contains(">1K<") && doc.contains(">1M<"));
        // One row only: the axis still has a width.
        let one = svg("x", &rows[..1]);
        assert!(!one.contains("NaN") && !one.contains("inf"));
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.9, 5.0), 0.2);
        assert_eq!(nice_step(37.0, 5.0), 10.0);
    }
}
