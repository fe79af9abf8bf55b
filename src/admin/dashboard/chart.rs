//! A bar chart as inline SVG, drawn on the server: no script, no asset to fetch, readable
//! in any browser (and in a screenshot).

use std::fmt::Write;

/// Hourly buckets `(hour start, bytes)` over the `hours` ending at `now_hour`, as an SVG
/// bar chart with its axis labels. Every number in it comes from the buckets; nothing is
/// taken from a request.
pub fn hourly_bars(buckets: &[(i64, u64)], now_hour: i64, hours: i64) -> String {
    let (w, h, pad_l, pad_b) = (720.0f64, 180.0f64, 64.0f64, 22.0f64);
    let first = now_hour - (hours - 1) * 3600;
    let mut values = vec![0u64; hours.max(1) as usize];
    for (hour, bytes) in buckets {
        let i = (hour - first).div_euclid(3600);
        if (0..hours).contains(&i) {
            values[i as usize] += bytes;
        }
    }
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let bar_w = (w - pad_l) / values.len() as f64;
    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="bytes per hour, last {hours} hours" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        svg,
        r##"<text x="0" y="12" font-size="11" fill="#555">{}</text><text x="0" y="{}" font-size="11" fill="#555">0</text>"##,
        human(max),
        h - pad_b
    );
    for (i, v) in values.iter().enumerate() {
        let bh = (*v as f64 / max as f64) * (h - pad_b - 16.0);
        let x = pad_l + i as f64 * bar_w;
        let y = h - pad_b - bh;
        let _ = write!(
            svg,
            r##"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="#3b6ea8" data-bytes="{v}"><title>{}</title></rect>"##,
            (bar_w - 1.0).max(1.0),
            human(*v)
        );
    }
    for (x, anchor, label) in [(pad_l, "start", first), (w, "end", now_hour)] {
        let t = jiff::Timestamp::from_second(label)
            .map(|t| t.strftime("%m-%d %H:00 UTC").to_string())
            .unwrap_or_default();
        let _ = write!(
            svg,
            r##"<text x="{x:.1}" y="{}" font-size="11" fill="#555" text-anchor="{anchor}">{t}</text>"##,
            h - 6.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Bytes for people: `1.5 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_follow_the_buckets() {
        let now = 1_764_590_400; // an hour start
        let svg = hourly_bars(
            &[(now, 2048), (now - 3600, 1024), (now - 99 * 3600, 5)],
            now,
            48,
        );
        assert_eq!(svg.matches("<rect").count(), 48);
        assert!(svg.contains(r#"data-bytes="2048""#) && svg.contains(r#"data-bytes="1024""#));
        assert!(!svg.contains(r#"data-bytes="5""#), "outside the window");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }
}
