//! The system replay's outputs: one row per configuration, a markdown
//! table, JSON and an SVG bar chart (hit rate and TTFT per configuration).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One configuration's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Short key: a, b, c, d.
    pub key: String,
    /// What it is.
    pub name: String,
    /// Calls answered / sent.
    pub ok: usize,
    /// Calls that failed.
    pub failed: usize,
    /// Block-weighted hit rate from the workers' counters: Σ cached / Σ prompt tokens.
    pub hit_rate: f64,
    /// Of which from the workers' own pools (HBM).
    pub hit_hbm: f64,
    /// Of which onboarded from the cache tier.
    pub hit_tier: f64,
    /// Same from the client's usage.cached_tokens.
    pub client_hit_rate: f64,
    /// hit_rate / ideal.
    pub of_ideal: f64,
    /// TTFT percentiles (ms).
    pub ttft_p50_ms: f64,
    /// p99.
    pub ttft_p99_ms: f64,
    /// Mean TTFT (ms).
    pub ttft_mean_ms: f64,
    /// Prompt tokens computed (workers' counter).
    pub computed_tokens: u64,
    /// Prompt tokens computed, from the x-kvtier-prefill headers the client saw.
    pub client_computed_tokens: u64,
    /// Blocks served from worker pools, from the headers.
    pub client_hbm_blocks: u64,
    /// Blocks onboarded from the tier, from the headers.
    pub client_onboarded_blocks: u64,
    /// Mean wait for a worker's GPU (ms), from the headers.
    pub queue_ms_mean: f64,
    /// Distinct workers that served calls.
    pub workers_used: usize,
    /// Prompt tokens in all (workers' counter).
    pub prompt_tokens: u64,
    /// Bytes written to the cache server (offloads).
    pub tier_in_bytes: u64,
    /// Bytes read from the cache server (onboards).
    pub tier_out_bytes: u64,
    /// Bytes resident per server tier at the end (host, disk).
    pub tier_resident_bytes: Vec<(String, u64)>,
    /// Blocks offloaded (stored) by the workers.
    pub offloaded_blocks: u64,
    /// Blocks evicted from worker pools.
    pub hbm_evicted_blocks: u64,
    /// Blocks the cache server served from its host tier (Get).
    #[serde(default)]
    pub tier_hits_host: u64,
    /// Blocks it served from disk (Get).
    #[serde(default)]
    pub tier_hits_disk: u64,
    /// Blocks its prefetcher moved disk → host.
    #[serde(default)]
    pub prefetched_blocks: u64,
    /// Wall time of the replay (s).
    pub seconds: f64,
}

/// Everything one run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Workload.
    pub workload: String,
    /// Sessions, agents, calls.
    pub sessions: usize,
    /// Agents.
    pub agents: usize,
    /// Calls.
    pub calls: usize,
    /// Σ blocks.
    pub blocks: u64,
    /// Distinct blocks.
    pub unique_blocks: usize,
    /// Ideal hit rate of the replayed calls, in [0, 1].
    pub ideal: f64,
    /// Settings, as `key=value` text.
    pub settings: Vec<(String, String)>,
    /// One row per configuration.
    pub rows: Vec<Row>,
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 20) as f64)
}

impl Report {
    fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    /// A markdown table (and the ratios against baseline (b)).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} sessions, {} agents, {} calls, {} blocks ({} unique); ideal hit rate {}",
            self.workload,
            self.sessions,
            self.agents,
            self.calls,
            self.blocks,
            self.unique_blocks,
            pct(self.ideal)
        );
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "settings: {}", settings.join(" "));
        let _ = writeln!(
            s,
            "| config | ok/failed | hit rate (workers) | hbm + tier | hit rate (client) | of ideal | TTFT p50 ms | TTFT p99 ms | prefill tokens computed | tier in / out MiB | HBM evictions | wall s |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| ({}) {} | {}/{} | {} | {} + {} | {} | {} | {:.1} | {:.1} | {} | {} / {} | {} | {:.1} |",
                r.key,
                r.name,
                r.ok,
                r.failed,
                pct(r.hit_rate),
                pct(r.hit_hbm),
                pct(r.hit_tier),
                pct(r.client_hit_rate),
                pct(r.of_ideal),
                r.ttft_p50_ms,
                r.ttft_p99_ms,
                r.computed_tokens,
                mib(r.tier_in_bytes),
                mib(r.tier_out_bytes),
                r.hbm_evicted_blocks,
                r.seconds
            );
        }
        if self
            .rows
            .iter()
            .any(|r| r.tier_hits_disk > 0 || r.prefetched_blocks > 0)
        {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| config | tier blocks served from host | from disk | host share | prefetched disk → host |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            for r in &self.rows {
                let served = r.tier_hits_host + r.tier_hits_disk;
                let share = if served > 0 {
                    pct(r.tier_hits_host as f64 / served as f64)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    s,
                    "| ({}) | {} | {} | {} | {} |",
                    r.key, r.tier_hits_host, r.tier_hits_disk, share, r.prefetched_blocks
                );
            }
        }
        if let Some(b) = self.row("b") {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| config | hit rate − (b) | TTFT p50 ÷ (b) | TTFT p99 ÷ (b) | computed tokens ÷ (b) |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            let div = |x: f64, y: f64| {
                if y > 0.0 {
                    format!("{:.2}", x / y)
                } else {
                    "-".into()
                }
            };
            for r in &self.rows {
                let _ = writeln!(
                    s,
                    "| ({}) | {:+.2} pt | {} | {} | {} |",
                    r.key,
                    100.0 * (r.hit_rate - b.hit_rate),
                    div(r.ttft_p50_ms, b.ttft_p50_ms),
                    div(r.ttft_p99_ms, b.ttft_p99_ms),
                    div(r.computed_tokens as f64, b.computed_tokens as f64),
                );
            }
        }
        s
    }

    /// Two bar panels: hit rate (with the ideal as a line) and TTFT p50/p99.
    pub fn svg(&self) -> String {
        let (w, h) = (760.0, 380.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="13">{}</text>"#,
            w / 2.0,
            escape(&format!(
                "system replay: {} ({} sessions, {} calls)",
                self.workload.split_whitespace().next().unwrap_or(""),
                self.sessions,
                self.calls
            ))
        );
        let (top, bottom) = (45.0, h - 60.0);
        let n = self.rows.len().max(1) as f64;
        // Panel 1: hit rate.
        let (l1, r1) = (60.0, 340.0);
        let py = |v: f64| bottom - v.clamp(0.0, 1.0) * (bottom - top);
        for p in (0..=100).step_by(20) {
            let y = py(p as f64 / 100.0);
            let _ = writeln!(
                s,
                "<line x1=\"{l1}\" y1=\"{y}\" x2=\"{r1}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{p}%</text>",
                l1 - 5.0,
                y + 4.0
            );
        }
        let slot = (r1 - l1) / n;
        for (i, r) in self.rows.iter().enumerate() {
            let x = l1 + slot * i as f64 + slot * 0.15;
            let bw = slot * 0.7;
            let (yh, yt) = (py(r.hit_hbm), py(r.hit_hbm + r.hit_tier));
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{yh:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#1f77b4\"/>",
                bottom - yh
            );
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{yt:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#ff7f0e\"/>",
                yh - yt
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1}%</text><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">({})</text>",
                x + bw / 2.0,
                yt - 4.0,
                100.0 * r.hit_rate,
                x + bw / 2.0,
                bottom + 16.0,
                r.key
            );
        }
        let yi = py(self.ideal);
        let _ = writeln!(
            s,
            "<line x1=\"{l1}\" y1=\"{yi:.1}\" x2=\"{r1}\" y2=\"{yi:.1}\" stroke=\"#2ca02c\" stroke-dasharray=\"5,3\" stroke-width=\"2\"/><text x=\"{r1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#2ca02c\">dashed: ideal {:.2}%</text>",
            top - 8.0,
            100.0 * self.ideal
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">hit rate (blue: worker HBM, orange: cache tier)</text>",
            (l1 + r1) / 2.0,
            bottom + 36.0
        );
        // Panel 2: TTFT (log scale).
        let (l2, r2) = (440.0, 740.0);
        let vmax = self
            .rows
            .iter()
            .map(|r| r.ttft_p99_ms)
            .fold(1.0f64, f64::max);
        let vmin = self
            .rows
            .iter()
            .map(|r| r.ttft_p50_ms)
            .fold(vmax, f64::min)
            .max(0.1);
        let (lo, hi) = (
            vmin.log10().floor(),
            vmax.log10().ceil().max(vmin.log10().floor() + 1.0),
        );
        let ty = |v: f64| bottom - (v.max(0.1).log10() - lo) / (hi - lo) * (bottom - top);
        let mut d = lo;
        while d <= hi + 1e-9 {
            let y = ty(10f64.powf(d));
            let _ = writeln!(
                s,
                "<line x1=\"{l2}\" y1=\"{y:.1}\" x2=\"{r2}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                l2 - 5.0,
                y + 4.0,
                10f64.powf(d)
            );
            d += 1.0;
        }
        let slot = (r2 - l2) / n;
        for (i, r) in self.rows.iter().enumerate() {
            let x = l2 + slot * i as f64 + slot * 0.1;
            let bw = slot * 0.38;
            for (k, (v, color)) in [(r.ttft_p50_ms, "#9467bd"), (r.ttft_p99_ms, "#d62728")]
                .into_iter()
                .enumerate()
            {
                let xx = x + k as f64 * bw;
                let y = ty(v);
                let _ = writeln!(
                    s,
                    "<rect x=\"{xx:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.0}</text>",
                    (bottom - y).max(0.0),
                    xx + bw / 2.0,
                    y - 3.0
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">({})</text>",
                x + bw,
                bottom + 16.0,
                r.key
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">TTFT ms, log scale (purple: p50, red: p99)</text>",
            (l2 + r2) / 2.0,
            bottom + 36.0
        );
        let names: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("({}) {}", r.key, r.name))
            .collect();
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            w / 2.0,
            h - 6.0,
            escape(&names.join("   "))
        );
        s.push_str("</svg>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The q-quantile (0..=1) of `v` (nearest rank).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}
