//! Medians and spreads of a handful of samples.

use serde::{Deserialize, Serialize};

/// A summary of samples: the median and the spread around it.
///
/// Percentiles use linear interpolation between the closest ranks, so a
/// median of an even count is the mean of the two middle samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// The median.
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// The 10th percentile.
    pub p10: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The arithmetic mean.
    pub mean: f64,
}

/// The `q`-quantile (0 to 1) of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

impl Summary {
    /// Summarises `samples`; `None` when there are none or one is not a
    /// finite number.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            n: sorted.len(),
            median: quantile(&sorted, 0.5),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            p10: quantile(&sorted, 0.1),
            p90: quantile(&sorted, 0.9),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 5.0, 4.0]).expect("summary");
        assert_eq!(
            (s.n, s.median, s.min, s.max, s.mean),
            (5, 3.0, 1.0, 5.0, 3.0)
        );
        assert!((s.p10 - 1.4).abs() < 1e-9, "{}", s.p10);
        assert!((s.p90 - 4.6).abs() < 1e-9, "{}", s.p90);
    }

    #[test]
    fn even_count_takes_the_mean_of_the_middle_two() {
        let s = Summary::of(&[10.0, 2.0, 4.0, 8.0]).expect("summary");
        assert_eq!(s.median, 6.0);
        assert_eq!((s.min, s.max), (2.0, 10.0));
    }

    #[test]
    fn one_sample_is_its_own_spread() {
        let s = Summary::of(&[1.5]).expect("summary");
        assert_eq!(
            (s.median, s.min, s.max, s.p10, s.p90),
            (1.5, 1.5, 1.5, 1.5, 1.5)
        );
    }

    #[test]
    fn nothing_or_nan_gives_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }
}
