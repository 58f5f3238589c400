//! The replay's outputs: a text table, JSON, and an SVG plot.

use std::fmt::Write as _;

use serde::Serialize;

/// One capacity's results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Capacity as a fraction of unique blocks.
    pub fraction: f64,
    /// Capacity in blocks (all workers together).
    pub blocks: usize,
    /// Hit rates in percent; `None` when that policy was not run.
    pub lru: Option<f64>,
    /// kvtier's value policy.
    pub kvtier: Option<f64>,
    /// Belady's offline optimum.
    pub belady: Option<f64>,
}

impl Row {
    /// Share of the LRU→Belady gap that kvtier closes, in percent.
    pub fn gap_closed(&self) -> Option<f64> {
        let (l, k, b) = (self.lru?, self.kvtier?, self.belady?);
        (b - l > 1e-9).then(|| 100.0 * (k - l) / (b - l))
    }
}

/// Everything one replay run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was replayed.
    pub trace: String,
    /// Requests replayed.
    pub requests: usize,
    /// Σ len(hash_ids).
    pub blocks: u64,
    /// Distinct blocks.
    pub unique_blocks: usize,
    /// Hit rate with an infinite cache (percent).
    pub ideal: f64,
    /// Session start stagger (s), for session traces.
    pub stagger_s: f64,
    /// Number of workers (caches) requests were routed over.
    pub workers: usize,
    /// How kvtier learned of agents' ends: `harness` (EndAgent at the last
    /// answer) or `lease <ms>` (no end signal, lease expiry only).
    pub end_signal: String,
    /// One row per capacity.
    pub rows: Vec<Row>,
    /// Wall time of the run (s).
    pub seconds: f64,
}

/// A plotted line: name, colour, and which column of a row it draws.
type Series = (&'static str, &'static str, fn(&Row) -> Option<f64>);

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

impl Report {
    /// A markdown table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} requests, {} blocks, {} unique, ideal {:.2}%, W={}, agents' ends: {}",
            self.trace,
            self.requests,
            self.blocks,
            self.unique_blocks,
            self.ideal,
            self.workers,
            self.end_signal
        );
        let _ = writeln!(s, "| C | C blocks | LRU | kvtier | Belady | gap closed |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let closed = r
                .gap_closed()
                .map_or_else(|| "-".into(), |g| format!("{g:.1}%"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.fraction,
                r.blocks,
                cell(r.lru),
                cell(r.kvtier),
                cell(r.belady),
                closed
            );
        }
        s
    }

    /// Hit rate vs capacity (log scale) for the three policies.
    pub fn svg(&self) -> String {
        let (w, h) = (640.0, 400.0);
        let (l, r, t, b) = (60.0, 150.0, 40.0, 50.0);
        let xs: Vec<f64> = self
            .rows
            .iter()
            .map(|r| r.fraction.max(1e-6).log10())
            .collect();
        let (x0, x1) = xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let (x0, x1) = if x1 - x0 < 1e-9 {
            (x0 - 0.5, x1 + 0.5)
        } else {
            (x0, x1)
        };
        let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
        let py = |y: f64| t + (100.0 - y) / 100.0 * (h - t - b);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="13">{}</text>"#,
            (l + w - r) / 2.0,
            escape(&format!(
                "{}: hit rate vs capacity, W={}, S={}s",
                self.trace.split_whitespace().next().unwrap_or("trace"),
                self.workers,
                self.stagger_s
            ))
        );
        for pct in (0..=100).step_by(20) {
            let y = py(pct as f64);
            let _ = writeln!(
                s,
                "<line x1=\"{l}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{pct}%</text>",
                w - r,
                l - 6.0,
                y + 4.0
            );
        }
        for (row, &x) in self.rows.iter().zip(&xs) {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}%</text>",
                px(x),
                h - b + 18.0,
                row.fraction * 100.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">cache capacity (share of unique blocks, log scale)</text>"#,
            (l + w - r) / 2.0,
            h - 10.0
        );
        let series: [Series; 3] = [
            ("LRU", "#d62728", |r| r.lru),
            ("kvtier", "#1f77b4", |r| r.kvtier),
            ("Belady (offline)", "#2ca02c", |r| r.belady),
        ];
        for (k, (name, color, get)) in series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = self
                .rows
                .iter()
                .zip(&xs)
                .filter_map(|(row, &x)| get(row).map(|y| (px(x), py(y))))
                .collect();
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
                );
            }
            let ly = t + 20.0 + 20.0 * k as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
                w - r + 10.0,
                w - r + 30.0,
                w - r + 35.0,
                ly + 4.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
