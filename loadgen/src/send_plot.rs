//! The plot files of `send --plot DIR`: one `<phase>.hgrm` per measured
//! phase (HdrHistogram's percentile distribution text, for its plotter)
//! and `send.svg` (the latency percentile curves and the throughput over
//! time), drawn by hand: no plotting dependency.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use super::send_stats::{CoreStats, Phase};

/// A histogram in HdrHistogram's percentile distribution text format
/// ("Value Percentile TotalCount 1/(1-Percentile)"), values in
/// milliseconds, as read by HdrHistogram's plotter.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - q))
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "{:>12.3} {:>14.12} {:>10} {inv}",
                v.value_iterated_to() as f64 / 1000.0,
                q,
                total
            );
        }
    }
    let _ = writeln!(
        t,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        t,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        t,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    t
}

/// The geometry of one panel (both have the same): the image width and
/// panel height, the left and top margins, and the plot area.
struct Frame {
    w: f64,
    h: f64,
    ml: f64,
    mt: f64,
    pw: f64,
    ph: f64,
}

impl Frame {
    fn new() -> Frame {
        let (w, h) = (900.0f64, 340.0f64);
        let (ml, mr, mt, mb) = (70.0, 20.0, 40.0, 45.0);
        Frame {
            w,
            h,
            ml,
            mt,
            pw: w - ml - mr,
            ph: h - mt - mb,
        }
    }
}

/// An SVG with two panels: the transaction latency percentile curve (and
/// eod), x = percentile on a log(1/(1-p)) axis, y = milliseconds; and the
/// messages completed per second over time.
pub fn svg(s: &CoreStats, title: &str) -> String {
    let f = Frame::new();
    let mut t = String::new();
    let _ = writeln!(
        t,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
        f.w,
        f.h * 2.0
    );
    let _ = writeln!(t, r#"<rect width="100%" height="100%" fill="white"/>"#);
    latency_panel(&mut t, &f, s, title);
    throughput_panel(&mut t, &f, s);
    t.push_str("</svg>\n");
    t
}

/// Panel 1: percentile curves, up to 99.999%.
fn latency_panel(t: &mut String, f: &Frame, s: &CoreStats, title: &str) {
    let (ml, mt, pw, ph) = (f.ml, f.mt, f.pw, f.ph);
    let max_x = 5.0; // up to 99.999%
    let curves = [
        (Phase::Transaction, "#1f77b4"),
        (Phase::Eod, "#ff7f0e"),
        (Phase::Connect, "#2ca02c"),
    ];
    let ymax = curves
        .iter()
        .map(|(p, _)| s.latency[*p as usize].max())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1000.0;
    let _ = writeln!(
        t,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{} — latency by percentile (ms)</text>"#,
        f.w / 2.0,
        xml_escape(title)
    );
    axes(t, ml, mt, pw, ph);
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = ml + pw * i as f64 / max_x;
        let _ = writeln!(
            t,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            mt + ph + 16.0
        );
    }
    y_labels(t, ml, mt, ph, ymax, "");
    for (k, (phase, color)) in curves.iter().enumerate() {
        let hist = &s.latency[*phase as usize];
        if hist.is_empty() {
            continue;
        }
        let pts = percentile_points(hist, f, max_x, ymax);
        let _ = writeln!(
            t,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>"#
        );
        let _ = writeln!(
            t,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#,
            ml + 10.0,
            mt + 15.0 + 15.0 * k as f64,
            phase.name()
        );
    }
}

/// The polyline points of `hist`'s percentile curve in panel 1: x up to
/// `max_x` nines, y up to `ymax` milliseconds.
fn percentile_points(hist: &Histogram<u64>, f: &Frame, max_x: f64, ymax: f64) -> String {
    let mut pts = String::new();
    for v in hist.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let xv = if q >= 1.0 {
            max_x
        } else {
            (-(1.0 - q).log10()).min(max_x)
        };
        let x = f.ml + f.pw * xv / max_x;
        let y = f.mt + f.ph - f.ph * (v.value_iterated_to() as f64 / 1000.0) / ymax;
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    pts
}

/// Panel 2: throughput over time.
fn throughput_panel(t: &mut String, f: &Frame, s: &CoreStats) {
    let (ml, pw, ph) = (f.ml, f.pw, f.ph);
    let top = f.h + f.mt;
    let _ = writeln!(
        t,
        r#"<text x="{}" y="{:.1}" text-anchor="middle" font-size="14">messages per second</text>"#,
        f.w / 2.0,
        f.h + 20.0
    );
    axes(t, ml, top, pw, ph);
    let n = s.per_second.len().max(1);
    let rmax = s.per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
    y_labels(t, ml, top, ph, rmax, "");
    let mut pts = String::new();
    for (i, &c) in s.per_second.iter().enumerate() {
        let x = ml + pw * (i as f64 + 0.5) / n as f64;
        let y = top + ph - ph * c as f64 / rmax;
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        t,
        r##"<polyline fill="none" stroke="#d62728" stroke-width="2" points="{pts}"/>"##
    );
    for i in 0..=4 {
        let x = ml + pw * i as f64 / 4.0;
        let _ = writeln!(
            t,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.0} s</text>"#,
            top + ph + 16.0,
            n as f64 * i as f64 / 4.0
        );
    }
}

fn axes(t: &mut String, x: f64, y: f64, w: f64, h: f64) {
    let _ = writeln!(
        t,
        r#"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="black"/>"#
    );
}

fn y_labels(t: &mut String, x: f64, y: f64, h: f64, max: f64, unit: &str) {
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let yy = y + h - h * i as f64 / 4.0;
        let _ = writeln!(
            t,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}{unit}</text>"#,
            x - 5.0,
            yy + 4.0,
            if max >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        );
        let _ = writeln!(
            t,
            r##"<line x1="{x}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            x + 810.0
        );
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `<phase>.hgrm` for every phase with samples, and `send.svg`.
pub fn write_plot(dir: &Path, s: &CoreStats, title: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for p in Phase::ALL {
        let h = &s.latency[p as usize];
        if h.is_empty() {
            continue;
        }
        std::fs::write(dir.join(format!("{}.hgrm", p.name())), hgrm(h))?;
    }
    std::fs::write(dir.join("send.svg"), svg(s, title))?;
    Ok(())
}
