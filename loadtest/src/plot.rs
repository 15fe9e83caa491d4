//! A hand-written SVG of latency by percentile (the usual HdrHistogram view): the x axis is
//! `log10(1 / (1 - p))`, so 90%, 99%, 99.9%, … are evenly spaced; one panel per distribution.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 860.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 40.0;
const STEPS_PER_DECADE: u32 = 40;

/// Renders one panel per non-empty `(title, histogram in µs)` pair.
pub fn render(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let panels: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let height = 40.0 + PANEL_H * panels.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>
"#,
        WIDTH / 2.0,
        escape(title)
    );
    if panels.is_empty() {
        let _ = writeln!(svg, r#"<text x="{LEFT}" y="60">no samples</text>"#);
    }
    for (i, (name, h)) in panels.iter().enumerate() {
        panel(&mut svg, name, h, 40.0 + PANEL_H * i as f64);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, name: &str, h: &Histogram<u64>, y0: f64) {
    let decades = (h.len() as f64).log10().ceil().clamp(2.0, 6.0) as u32;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let (top, bottom) = (y0 + TOP, y0 + TOP + plot_h);

    let points: Vec<(f64, f64)> = (0..=decades * STEPS_PER_DECADE)
        .map(|k| {
            let x = f64::from(k) / f64::from(STEPS_PER_DECADE);
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    let ymax = nice_ceil(points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001));
    let sx = |x: f64| LEFT + x / f64::from(decades) * plot_w;
    let sy = |y: f64| bottom - y / ymax * plot_h;

    let ms = |us: u64| us as f64 / 1000.0;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold">{} latency (ms): n={} p50={:.3} p99={:.3} p99.9={:.3} max={:.3}</text>"#,
        y0 + 20.0,
        escape(name),
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    );
    // Horizontal grid and y labels.
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = sy(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            fmt_ms(v)
        );
    }
    // Vertical grid at 0%, 90%, 99%, …
    for d in 0..=decades {
        let x = sx(f64::from(d));
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 16.0,
            percentile_label(d)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">ms</text>"##,
        LEFT + plot_w / 2.0,
        bottom + 32.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let mut path = String::new();
    for (i, (x, y)) in points.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            sx(*x),
            sy(*y)
        );
    }
    let _ = writeln!(
        svg,
        r##"<path d="{path}" fill="none" stroke="#1f6fb2" stroke-width="2"/>"##
    );
}

/// `0%`, `90%`, `99%`, `99.9%`, … for decade `d`.
fn percentile_label(d: u32) -> String {
    match d {
        0 => "0%".into(),
        1 => "90%".into(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace("99.%", "99%"),
    }
}

fn fmt_ms(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `v`.
fn nice_ceil(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{histogram, record};

    #[test]
    fn labels_and_scales() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(percentile_label(5), "99.999%");
        assert_eq!(nice_ceil(0.7), 1.0);
        assert_eq!(nice_ceil(1.2), 2.0);
        assert_eq!(nice_ceil(3.0), 5.0);
        assert_eq!(nice_ceil(50.0), 50.0);
        assert_eq!(fmt_ms(0.0), "0");
        assert_eq!(fmt_ms(0.25), "0.250");
        assert_eq!(fmt_ms(250.0), "250");
    }

    #[test]
    fn renders_well_formed_svg() {
        let mut h = histogram();
        for v in 1..5000 {
            record(&mut h, v);
        }
        let empty = histogram();
        let svg = render("a <b> & c", &[("delivery", &h), ("join", &empty)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<path").count(), 1, "empty series are skipped");
        assert!(svg.contains("99.9%"));
    }
}
