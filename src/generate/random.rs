//! Seeded randomness for the generator: one portable ChaCha8 stream per
//! purpose, and the few distributions the traffic model needs.
//!
//! The distributions are written out here rather than taken from a crate so
//! that a dependency upgrade can never silently change the bytes a seed
//! produces.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator's random source.
pub type GenRng = ChaCha8Rng;

/// A stream of its own for each (seed, purpose, index), so that what one key
/// draws never shifts what another key draws.
pub fn stream(seed: u64, purpose: u64, index: u64) -> GenRng {
    let mixed = splitmix64(splitmix64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ index);
    GenRng::seed_from_u64(mixed)
}

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
pub fn unit(rng: &mut GenRng) -> f64 {
    rng.random::<f64>()
}

/// Uniform in [low, high).
pub fn uniform(rng: &mut GenRng, low: f64, high: f64) -> f64 {
    low + (high - low) * unit(rng)
}

/// True with probability `probability`.
pub fn chance(rng: &mut GenRng, probability: f64) -> bool {
    unit(rng) < probability
}

/// Standard normal by Box-Muller.
pub fn standard_normal(rng: &mut GenRng) -> f64 {
    // 1 - u keeps the logarithm away from zero.
    let radius = (-2.0 * (1.0 - unit(rng)).ln()).sqrt();
    let angle = std::f64::consts::TAU * unit(rng);
    radius * angle.cos()
}

/// Log-normal with the given median and shape (sigma of the logarithm).
pub fn log_normal(rng: &mut GenRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * standard_normal(rng)).exp()
}

/// Poisson-distributed count with mean `lambda`.
pub fn poisson(rng: &mut GenRng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        // Knuth's product method: exact, and cheap for small means.
        let limit = (-lambda).exp();
        let mut product = unit(rng);
        let mut count = 0u64;
        while product > limit {
            count += 1;
            product *= unit(rng);
        }
        return count;
    }
    // For larger means the normal approximation is indistinguishable in
    // traffic volumes and costs two draws instead of lambda.
    let sample = lambda + lambda.sqrt() * standard_normal(rng);
    sample.round().max(0.0) as u64
}

/// Index in 0..len, uniformly.
pub fn index(rng: &mut GenRng, len: usize) -> usize {
    rng.random_range(0..len)
}

/// Integer in [low, high] inclusive.
pub fn between(rng: &mut GenRng, low: u64, high: u64) -> u64 {
    rng.random_range(low..=high)
}

/// Picks one element of a non-empty slice.
pub fn pick<'a, T>(rng: &mut GenRng, items: &'a [T]) -> &'a T {
    &items[index(rng, items.len())]
}

/// Fisher-Yates shuffle (written out for the same stability reason as the
/// distributions above).
pub fn shuffle<T>(rng: &mut GenRng, items: &mut [T]) {
    for position in (1..items.len()).rev() {
        let other = rng.random_range(0..=position);
        items.swap(position, other);
    }
}

/// Cumulative weights for repeated weighted draws.
#[derive(Debug, Clone)]
pub struct WeightedTable {
    cumulative: Vec<f64>,
}

impl WeightedTable {
    /// `weights` must be non-empty with a positive sum.
    pub fn new(weights: &[f64]) -> WeightedTable {
        let mut total = 0.0;
        let cumulative = weights
            .iter()
            .map(|weight| {
                total += weight.max(0.0);
                total
            })
            .collect();
        WeightedTable { cumulative }
    }

    /// Zipf weights 1/rank^exponent for `len` ranks.
    pub fn zipf(len: usize, exponent: f64) -> WeightedTable {
        let weights: Vec<f64> = (1..=len).map(|rank| 1.0 / (rank as f64).powf(exponent)).collect();
        WeightedTable::new(&weights)
    }

    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// Draws an index with probability proportional to its weight.
    pub fn sample(&self, rng: &mut GenRng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let target = unit(rng) * total;
        let position = self.cumulative.partition_point(|&bound| bound <= target);
        position.min(self.cumulative.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let first: Vec<u64> = (0..4).map(|_| stream(7, 1, 3).random::<u64>()).collect();
        assert!(first.windows(2).all(|pair| pair[0] == pair[1]));
        assert_ne!(stream(7, 1, 3).random::<u64>(), stream(7, 1, 4).random::<u64>());
        assert_ne!(stream(7, 1, 3).random::<u64>(), stream(8, 1, 3).random::<u64>());
    }

    #[test]
    fn poisson_mean_is_close_to_lambda() {
        let mut rng = stream(1, 2, 3);
        for lambda in [0.5, 4.0, 80.0] {
            let total: u64 = (0..20_000).map(|_| poisson(&mut rng, lambda)).sum();
            let mean = total as f64 / 20_000.0;
            assert!(
                (mean - lambda).abs() < lambda * 0.05 + 0.05,
                "lambda {lambda} mean {mean}"
            );
        }
    }

    #[test]
    fn weighted_table_follows_weights() {
        let mut rng = stream(1, 2, 3);
        let table = WeightedTable::new(&[1.0, 0.0, 3.0]);
        let mut counts = [0u32; 3];
        for _ in 0..8000 {
            counts[table.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0, "a zero weight is never drawn");
        let ratio = f64::from(counts[2]) / f64::from(counts[0]);
        assert!((2.6..3.4).contains(&ratio), "{counts:?}");
    }
}
