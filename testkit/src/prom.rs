//! Reading Prometheus text exposition the way the tests assert on it: the
//! sum over every series of a metric that carries the given labels.

/// Sum of all samples of `name` whose label set contains every `labels`
/// pair (other labels may be present); 0 when there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    const TEXT: &str = "# HELP hits Hits.\n# TYPE hits counter\n\
        hits{tier=\"host\",op=\"get\"} 3\nhits{tier=\"disk\",op=\"get\"} 4\n\
        hits_total 9\nlive 2\n";

    #[test]
    fn sums_matching_series_only() {
        assert_eq!(metric_sum(TEXT, "hits", &[]), 7.0);
        assert_eq!(metric_sum(TEXT, "hits", &[("tier", "disk")]), 4.0);
        assert_eq!(metric_sum(TEXT, "hits", &[("tier", "t0")]), 0.0);
        assert_eq!(metric_sum(TEXT, "live", &[]), 2.0);
        assert_eq!(metric_sum(TEXT, "missing", &[]), 0.0);
    }
}
