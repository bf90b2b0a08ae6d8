//! Medians and spreads of repeated figures: on a shared machine one run of a step can be off by
//! a fifth, so a figure a target rests on is the median of several runs, shown with its range.

/// The median of `values` (the mean of the middle two for an even count); `None` when empty or
/// when a value is not a number.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The index of the median value (the lower middle one for an even count): which repetition to
/// take as the representative one when a whole run, not a figure, is needed.
pub fn median_index(values: &[f64]) -> Option<usize> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    Some(order[(values.len() - 1) / 2])
}

/// A repeated figure: its median and its range over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// The spread of `values`; `None` when empty or when a value is not a number.
    pub fn of(values: &[f64]) -> Option<Self> {
        let median = median(values)?;
        Some(Self {
            median,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: values.len(),
        })
    }

    /// (max − min) ÷ median: how far apart the repetitions were, as a fraction of the figure.
    pub fn relative_range(&self) -> f64 {
        (self.max - self.min) / self.median.abs().max(1e-12)
    }

    /// `median (min–max)` with `decimals` decimals; the value alone for a single repetition.
    pub fn show(&self, decimals: usize) -> String {
        if self.n <= 1 {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

/// Decimals that give a figure of this size about three significant digits (CPU milliseconds
/// per 1,000 users run from under 1 to over 1,000).
pub fn decimals_for(value: f64) -> usize {
    match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    }
}

/// [`Spread::show`] of `values`, or an empty cell when there are none.
pub fn show(values: &[f64], decimals: usize) -> String {
    Spread::of(values).map_or(String::new(), |s| s.show(decimals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[0.87, 0.73]), Some(0.8));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 100.0]), Some(3.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn median_index_picks_the_middle_repetition() {
        assert_eq!(median_index(&[7990.0, 7139.0, 8400.0]), Some(0));
        assert_eq!(median_index(&[3.0, 1.0, 2.0]), Some(2));
        // Even count: the lower of the middle two.
        assert_eq!(median_index(&[4.0, 1.0]), Some(1));
        assert_eq!(median_index(&[]), None);
    }

    #[test]
    fn spread_and_its_text() {
        let s = Spread::of(&[0.87, 0.73, 0.80]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (0.80, 0.73, 0.87, 3));
        assert_eq!(s.show(2), "0.80 (0.73–0.87)");
        assert!(
            (s.relative_range() - 0.175).abs() < 1e-9,
            "{}",
            s.relative_range()
        );
        assert_eq!(Spread::of(&[8123.4]).unwrap().show(0), "8123");
        assert_eq!(show(&[], 1), "");
        assert_eq!(show(&[2.0, 1.0], 1), "1.5 (1.0–2.0)");
        assert_eq!(
            [1375.0, 28.44, 0.5].map(decimals_for),
            [0, 1, 2],
            "three significant digits"
        );
    }
}
