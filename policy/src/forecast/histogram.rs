//! Gap histograms over log-spaced bins, with the integrals the forecast needs.

/// Number of histogram bins.
pub const BINS: usize = 56;
/// Upper edge of the first bin (ms).
const FIRST_EDGE_MS: f64 = 500.0;
/// Ratio between consecutive bin edges.
const RATIO: f64 = 1.25;

/// Log-spaced bin edges in ms: `edges[0] = 0`, `edges[k] = 500 · 1.25^(k-1)`;
/// the last bin is closed at `edges[BINS]` (about 1.2 days; longer gaps
/// count in the last bin).
#[derive(Debug, Clone)]
pub struct Edges {
    ms: [f64; BINS + 1],
}

impl Default for Edges {
    fn default() -> Self {
        let mut ms = [0.0; BINS + 1];
        for (k, e) in ms.iter_mut().enumerate().skip(1) {
            *e = FIRST_EDGE_MS * RATIO.powi(k as i32 - 1);
        }
        Self { ms }
    }
}

impl Edges {
    /// The bin holding `x_ms` (the last bin for anything beyond the edges).
    pub fn bin(&self, x_ms: f64) -> usize {
        if x_ms < FIRST_EDGE_MS {
            return 0;
        }
        let k = 1 + ((x_ms / FIRST_EDGE_MS).ln() / RATIO.ln()).floor() as usize;
        k.min(BINS - 1)
    }

    /// Upper end of the support.
    pub fn max_ms(&self) -> f64 {
        self.ms[BINS]
    }
}

/// `e^{-(edge_k - edge_j)/t}` for all bin edges `j ≤ k`: the discount
/// factors of an exponential eviction clock of mean `t`, computed once per
/// ranking instead of once per agent and bin.
#[derive(Debug, Clone)]
pub struct Discount {
    t: f64,
    rel: Vec<f64>,
}

impl Discount {
    /// The table for an eviction clock of mean `mean_ms` (at least 1 ms).
    pub fn new(edges: &Edges, mean_ms: u64) -> Self {
        let t = mean_ms.max(1) as f64;
        let n = BINS + 1;
        let step: Vec<f64> = (0..BINS)
            .map(|k| (-(edges.ms[k + 1] - edges.ms[k]) / t).exp())
            .collect();
        let mut rel = vec![0.0; n * n];
        for j in 0..n {
            let mut v = 1.0;
            rel[j * n + j] = 1.0;
            for k in j..BINS {
                v *= step[k];
                rel[j * n + k + 1] = v;
            }
        }
        Self { t, rel }
    }

    /// Mean of the eviction clock (ms).
    pub fn mean_ms(&self) -> f64 {
        self.t
    }

    fn rel(&self, j: usize, k: usize) -> f64 {
        self.rel[j * (BINS + 1) + k]
    }
}

/// Gap counts over the log-spaced bins, plus the weight of waits that never
/// ended in a call (agents that went silent until their lease expired).
#[derive(Debug, Clone)]
pub struct GapHistogram {
    counts: [f32; BINS],
    /// Σ counts (finite gaps only).
    total: f32,
    /// Waits that ended without a call: mass at an infinite gap.
    never: f32,
}

impl Default for GapHistogram {
    fn default() -> Self {
        Self {
            counts: [0.0; BINS],
            total: 0.0,
            never: 0.0,
        }
    }
}

impl GapHistogram {
    /// Adds one observed gap with weight `w`.
    pub fn record(&mut self, edges: &Edges, gap_ms: u64, w: f32) {
        let k = edges.bin(gap_ms as f64);
        self.counts[k] += w;
        self.total += w;
    }

    /// Adds one wait that never ended in a call, with weight `w`.
    pub fn record_never(&mut self, w: f32) {
        self.never += w;
    }

    /// Multiplies every count by `f` (forgetting old behaviour).
    pub fn decay(&mut self, f: f32) {
        for c in &mut self.counts {
            *c *= f;
        }
        self.total *= f;
        self.never *= f;
    }

    /// Total weight of finite gaps recorded.
    pub fn total(&self) -> f64 {
        f64::from(self.total)
    }

    /// Weight of waits that never ended in a call.
    pub fn never(&self) -> f64 {
        f64::from(self.never)
    }

    /// Everything recorded: finite gaps and waits that never ended.
    pub fn mass(&self) -> f64 {
        f64::from(self.total) + f64::from(self.never)
    }

    /// Exponentially discounted hits and occupancy from `w` on, with an
    /// eviction clock of mean `d.mean_ms()`: `(∫_w^∞ f(x) e^{-(x-w)/t} dx,
    /// ∫_w^∞ S(x) e^{-(x-w)/t} dx)`, unnormalised, over the finite gaps only
    /// (see [`GapHistogram::never`]). One `exp` per call: the rest comes from
    /// the table in `d`.
    pub fn discounted(&self, edges: &Edges, w: f64, d: &Discount) -> (f64, f64) {
        if self.total <= 0.0 || w >= edges.ms[BINS] {
            return (0.0, 0.0);
        }
        let t = d.t;
        let kw = edges.bin(w);
        let mut above =
            f64::from(self.total) - self.counts[..kw].iter().map(|&c| f64::from(c)).sum::<f64>();
        // e^{-(edge_{kw+1} - w)/t}: the discount at the end of w's bin.
        let first = (-(edges.ms[kw + 1] - w) / t).exp();
        let (mut hits, mut occ) = (0.0, 0.0);
        let mut ea = 1.0;
        for k in kw..BINS {
            let (lo, hi) = (edges.ms[k], edges.ms[k + 1]);
            let c = f64::from(self.counts[k]);
            let s_lo = above.max(0.0);
            above -= c;
            let slope = -c / (hi - lo);
            let x0 = w.max(lo);
            let s0 = s_lo + slope * (x0 - lo);
            let (a, b) = (x0 - w, hi - w);
            let eb = first * d.rel(kw + 1, k + 1);
            hits += -slope * t * (ea - eb);
            occ += s0 * t * (ea - eb) + slope * (-t * (b - a) * eb + t * t * (ea - eb));
            ea = eb;
            if ea < 1e-12 {
                break;
            }
        }
        (hits, occ)
    }

    /// Count of gaps longer than `x_ms` (`S` unnormalised, linear within a bin).
    pub fn survival(&self, edges: &Edges, x_ms: f64) -> f64 {
        if x_ms >= edges.ms[BINS] {
            return 0.0;
        }
        let k = edges.bin(x_ms);
        let below: f32 = self.counts[..k].iter().sum();
        let (lo, hi) = (edges.ms[k], edges.ms[k + 1]);
        let within = f64::from(self.counts[k]) * (x_ms - lo) / (hi - lo);
        (f64::from(self.total) - f64::from(below) - within).max(0.0)
    }

    /// Which third of this distribution `gap_ms` falls in (0, 1 or 2).
    pub fn tercile(&self, edges: &Edges, gap_ms: u64) -> usize {
        let k = edges.bin(gap_ms as f64);
        let below: f32 = self.counts[..k].iter().sum::<f32>() + 0.5 * self.counts[k];
        let q = below / self.total.max(1e-9);
        if q < 1.0 / 3.0 {
            0
        } else if q < 2.0 / 3.0 {
            1
        } else {
            2
        }
    }
}
