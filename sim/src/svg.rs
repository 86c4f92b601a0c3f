//! A small hand-written SVG line plot, log-log axes (powers of two on x,
//! decades on y), one polyline per series: what `zccl sim sweep --svg`
//! draws. No dependency: the format is a page of text.
//!
//! ```
//! use zccl_sim::svg::{plot, Series};
//! let s = plot("t", "GPUs", "ms", &[Series { name: "a".into(), dashed: false, points: vec![(16.0, 1.0), (128.0, 10.0)] }]);
//! assert!(s.starts_with("<svg") && s.contains("<polyline"));
//! ```

/// One line.
///
/// ```
/// let s = zccl_sim::svg::Series { name: "a".into(), dashed: true, points: vec![(1.0, 1.0)] };
/// assert!(s.dashed);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// Dashed line (the baseline of a pair).
    pub dashed: bool,
    /// `(x, y)` points, both positive.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws `series` on log-log axes; pairs of series share a colour (the
/// first dashed, the second solid).
///
/// ```
/// use zccl_sim::svg::{plot, Series};
/// let s = plot("t", "x", "y", &[]);
/// assert!(s.ends_with("</svg>\n"));
/// ```
pub fn plot(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let (w, h) = (900.0, 560.0);
    let (l, r, t, b) = (80.0, 260.0, 50.0, 60.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(x, y)| x > 0.0 && y > 0.0)
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (1.0f64, 2.0f64, 1.0f64, 10.0f64);
    if !all.is_empty() {
        x0 = all
            .iter()
            .map(|p| p.0)
            .fold(f64::INFINITY, f64::min)
            .log2()
            .floor();
        x1 = all
            .iter()
            .map(|p| p.0)
            .fold(0.0, f64::max)
            .log2()
            .ceil()
            .max(x0 + 1.0);
        y0 = all
            .iter()
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor();
        y1 = all
            .iter()
            .map(|p| p.1)
            .fold(0.0, f64::max)
            .log10()
            .ceil()
            .max(y0 + 1.0);
        x0 = x0.exp2();
        x1 = x1.exp2();
        y0 = 10f64.powf(y0);
        y1 = 10f64.powf(y1);
    }
    let px = |x: f64| l + (x.log2() - x0.log2()) / (x1.log2() - x0.log2()) * (w - l - r);
    let py = |y: f64| h - b - (y.log10() - y0.log10()) / (y1.log10() - y0.log10()) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"25\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        (w - r + l) / 2.0,
        esc(title)
    );
    // Axes, ticks and grid.
    let mut x = x0;
    while x <= x1 * 1.0001 {
        let xp = px(x);
        s.push_str(&format!(
            "<line x1=\"{xp:.1}\" y1=\"{t}\" x2=\"{xp:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\n<text x=\"{xp:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            h - b,
            h - b + 18.0,
            x as u64
        ));
        x *= 2.0;
    }
    let mut y = y0;
    while y <= y1 * 1.0001 {
        let yp = py(y);
        s.push_str(&format!(
            "<line x1=\"{l}\" y1=\"{yp:.1}\" x2=\"{}\" y2=\"{yp:.1}\" stroke=\"#ddd\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            w - r,
            l - 6.0,
            yp + 4.0,
            if y >= 1.0 { format!("{y:.0}") } else { format!("{y}") }
        ));
        y *= 10.0;
    }
    s.push_str(&format!(
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(20,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        w - l - r,
        h - t - b,
        (w - r + l) / 2.0,
        h - 15.0,
        esc(xlabel),
        (h - b + t) / 2.0,
        esc(ylabel)
    ));
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[(i / 2) % COLORS.len()];
        let dash = if se.dashed {
            " stroke-dasharray=\"6,4\""
        } else {
            ""
        };
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|&&(x, y)| x > 0.0 && y > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        s.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n",
            pts.join(" ")
        ));
        for p in &pts {
            let (a, c) = p.split_once(',').unwrap_or(("0", "0"));
            s.push_str(&format!(
                "<circle cx=\"{a}\" cy=\"{c}\" r=\"3\" fill=\"{color}\"/>\n"
            ));
        }
        let ly = t + 10.0 + i as f64 * 20.0;
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n<text x=\"{}\" y=\"{}\">{}</text>\n",
            w - r + 15.0,
            w - r + 45.0,
            w - r + 52.0,
            ly + 4.0,
            esc(&se.name)
        ));
    }
    s.push_str("</svg>\n");
    s
}
