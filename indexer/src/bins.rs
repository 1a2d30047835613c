//! Equal-width bins from 0 whose width doubles as larger values arrive.
//!
//! The width is always the smallest power of two 2^e with max < BINS * 2^e, which depends only
//! on the maximum seen, never on the order of the values. Doubling merges bins pairwise
//! (bin i of width 2w holds bins 2i and 2i+1 of width w), so two states built from different
//! parts of a corpus merge into exactly the state of one pass over all of it.

use serde::{Deserialize, Serialize};

/// Something that lives in a bin and can absorb another bin's content.
pub trait BinContent: Default + Clone {
    fn absorb(&mut self, other: Self);
}

impl BinContent for u64 {
    fn absorb(&mut self, other: Self) {
        *self += other;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoublingBins<T> {
    /// log2 of the bin width; None until the first value.
    exponent: Option<i32>,
    bins: Vec<T>,
}

impl<T: BinContent> DoublingBins<T> {
    pub fn new(n_bins: usize) -> Self {
        DoublingBins { exponent: None, bins: vec![T::default(); n_bins] }
    }

    pub fn width(&self) -> f64 {
        self.exponent.map_or(0.0, |e| 2f64.powi(e))
    }

    pub fn bins(&self) -> &[T] {
        &self.bins
    }

    /// The smallest exponent whose bins cover `value` (> 0).
    fn exponent_for(&self, value: f64) -> i32 {
        let n = self.bins.len() as f64;
        let mut e = (value / n).log2().floor() as i32;
        // Exact comparisons fix any rounding of log2.
        while value >= n * 2f64.powi(e) {
            e += 1;
        }
        while e > i32::MIN + 1 && value < n * 2f64.powi(e - 1) {
            e -= 1;
        }
        e
    }

    fn grow_to(&mut self, exponent: i32) {
        let Some(mut current) = self.exponent else {
            self.exponent = Some(exponent);
            return;
        };
        while current < exponent {
            let n = self.bins.len();
            let mut merged = vec![T::default(); n];
            for (i, content) in std::mem::take(&mut self.bins).into_iter().enumerate() {
                merged[i / 2].absorb(content);
            }
            self.bins = merged;
            current += 1;
        }
        self.exponent = Some(current);
    }

    /// The bin for `value` (> 0), widening the bins first if needed.
    pub fn bin_mut(&mut self, value: f32) -> &mut T {
        let value = f64::from(value);
        let needed = self.exponent_for(value);
        if self.exponent.is_none_or(|e| e < needed) {
            self.grow_to(needed);
        }
        let last = self.bins.len() - 1;
        let index = ((value / self.width()).floor() as usize).min(last);
        &mut self.bins[index]
    }

    pub fn merge(&mut self, other: DoublingBins<T>) {
        let Some(other_exponent) = other.exponent else { return };
        let target = self.exponent.map_or(other_exponent, |e| e.max(other_exponent));
        self.grow_to(target);
        let mut other = other;
        other.grow_to(target);
        for (mine, theirs) in self.bins.iter_mut().zip(other.bins) {
            mine.absorb(theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[f32]) -> DoublingBins<u64> {
        let mut bins = DoublingBins::new(16);
        for &v in values {
            *bins.bin_mut(v) += 1;
        }
        bins
    }

    #[test]
    fn width_depends_only_on_the_max() {
        let values = [0.3f32, 7.9, 0.01, 2.5, 15.99, 16.0, 0.7];
        let forward = histogram(&values);
        let mut reversed = values;
        reversed.reverse();
        assert_eq!(forward, histogram(&reversed));
        // max 16 needs 16 * 2^e > 16: width 2.
        assert_eq!(forward.width(), 2.0);
        assert_eq!(forward.bins().iter().sum::<u64>(), values.len() as u64);
        assert_eq!(forward.bins()[8], 1);
    }

    #[test]
    fn merging_equals_one_pass() {
        let values: Vec<f32> = (0..500).map(|i| ((i * 7919) % 1000) as f32 / 37.0 + 0.001).collect();
        let mut left = histogram(&values[..123]);
        left.merge(histogram(&values[123..]));
        assert_eq!(left, histogram(&values));
        let mut empty = DoublingBins::new(16);
        empty.merge(histogram(&values));
        assert_eq!(empty, histogram(&values));
    }
}
