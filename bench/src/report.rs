//! Figures and the table they are printed in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One line of the table: a figure of hutch next to its peer's, and the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The scenario.
    pub scenario: String,
    /// What is measured.
    pub metric: String,
    /// hutch's figure.
    pub hutch: f64,
    /// The peer's figure, when there is a peer.
    pub peer: Option<f64>,
    /// The peer's name.
    pub peer_name: String,
    /// The unit of both figures.
    pub unit: String,
    /// hutch / peer.
    pub ratio: Option<f64>,
    /// The target, as text.
    pub target: String,
    /// Whether the target is met.
    pub pass: bool,
}

impl Row {
    /// A row of `scenario` comparing hutch's `hutch` milliseconds with a peer's.
    pub fn ms_against(
        scenario: &str,
        metric: &str,
        (hutch, peer, peer_name): (f64, f64, &str),
        target: &str,
        pass: bool,
    ) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            hutch,
            peer: Some(peer),
            peer_name: peer_name.into(),
            unit: "ms".into(),
            ratio: Some(hutch / peer),
            target: target.into(),
            pass,
        }
    }
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`-th percentile (0..=1) of `samples`.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Prints the rows as one table.
pub fn print_table(rows: &[Row]) {
    let header = ["scenario", "metric", "hutch", "peer", "ratio", "target", ""];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.metric.clone(),
                format!("{} {}", fmt(r.hutch), r.unit),
                r.peer
                    .map(|p| format!("{} {} ({})", fmt(p), r.unit, r.peer_name))
                    .unwrap_or_else(|| "-".into()),
                r.ratio
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                r.target.clone(),
                if r.pass { "pass" } else { "MISS" }.into(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for c in &cells {
        for (i, x) in c.iter().enumerate() {
            widths[i] = widths[i].max(x.len());
        }
    }
    let line = |c: &[String]| {
        let parts: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(i, x)| format!("{x:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for c in &cells {
        line(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
