//! What the benches share: one seeded random source, so that every run of
//! a bench measures the same input, with the few draws their generated
//! inputs need. Included by each bench with `mod support;`.

// Each bench uses some of the draws; the others would warn as unused.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded, portable stream: ChaCha8 gives the same numbers for a seed on
/// every machine and `rand` version, which `StdRng` does not promise.
pub struct BenchRng(ChaCha8Rng);

impl BenchRng {
    pub fn seeded(seed: u64) -> BenchRng {
        BenchRng(ChaCha8Rng::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.random()
    }

    /// Uniform in `0..bound`; `bound` must be positive.
    pub fn below(&mut self, bound: usize) -> usize {
        self.0.random_range(0..bound)
    }

    /// In `0..bound`, skewed towards small values by raising a uniform draw
    /// to `exponent`: a few keys or clients make most of the calls, as in
    /// real API traffic.
    pub fn skewed_below(&mut self, bound: usize, exponent: i32) -> usize {
        let uniform: f64 = self.0.random();
        ((uniform.powi(exponent) * bound as f64) as usize).min(bound - 1)
    }
}
