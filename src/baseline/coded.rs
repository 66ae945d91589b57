//! Non-negative numbers of per-key state in 16 bits: a float with a 6-bit
//! exponent and a 10-bit mantissa (0, then 2^-41 to about 4.3e9, within
//! 0.05% of the value), for the hour-of-day profile whose 72 values are a
//! key's largest fixed part. Stored values are rounded to this grid at the
//! one place the state is updated, so live, replayed and restored state
//! agree bit for bit.
//!
//! The profile is a set of slow moving averages: an update smaller than
//! half a grid step would be lost every time under round-to-nearest, and
//! the average would stall up to a few per cent from where it should be.
//! Updates are therefore rounded up or down with the probability that
//! keeps them unbiased, the "random" draw being a fixed hash of where the
//! value is written (the window and the array): the same input gives the
//! same bits on every platform.

/// Codes with a 0 exponent field are evenly spaced by this (2^-41) below
/// the first normal code.
const SUBNORMAL_STEP: f64 = 1.0 / (1u64 << 41) as f64;
/// Smallest value with a non-zero exponent field (2^-31).
const SMALLEST_NORMAL: f64 = 1.0 / (1u64 << 31) as f64;
const MANTISSA_BITS: u32 = 10;
/// The f32 exponent bias less the code's (32).
const EXPONENT_SHIFT: u32 = 127 - 32;

/// The value of `code`, exactly (every code is an `f32`).
pub fn decode(code: u16) -> f32 {
    let exponent = u32::from(code >> MANTISSA_BITS);
    let mantissa = u32::from(code) & ((1 << MANTISSA_BITS) - 1);
    if exponent == 0 {
        // Exact: a 10-bit integer times a power of two.
        (f64::from(mantissa) * SUBNORMAL_STEP) as f32
    } else {
        f32::from_bits(((exponent + EXPONENT_SHIFT) << 23) | (mantissa << (23 - MANTISSA_BITS)))
    }
}

/// The value of `code` as the `f64` the arithmetic uses.
pub fn value(code: u16) -> f64 {
    f64::from(decode(code))
}

/// `value` on the grid: the code below it, or the one above it with
/// probability equal to how far above the lower code the value lies, `draw`
/// being the uniform 32-bit draw that decides. Zero, negative and NaN give
/// 0; values past the largest code give the largest code. A value on the
/// grid is kept as it is whatever the draw.
pub fn encode(value: f64, draw: u32) -> u16 {
    if value.is_nan() || value <= 0.0 {
        return 0;
    }
    let (below, fraction_bits) = if value < SMALLEST_NORMAL {
        let steps = value / SUBNORMAL_STEP;
        let whole = steps.floor();
        (whole as u64, ((steps - whole) * 4_294_967_296.0) as u64)
    } else {
        let bits = value.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023 + 32;
        if exponent > 63 {
            return u16::MAX;
        }
        let mantissa = bits & ((1u64 << 52) - 1);
        let kept = mantissa >> (52 - MANTISSA_BITS);
        // The 42 dropped bits, as a 32-bit fraction of a step.
        let dropped = (mantissa & ((1u64 << (52 - MANTISSA_BITS)) - 1)) >> (52 - MANTISSA_BITS - 32);
        (((exponent as u64) << MANTISSA_BITS) | kept, dropped)
    };
    let up = u64::from(fraction_bits > u64::from(draw));
    (below + up).min(u64::from(u16::MAX)) as u16
}

/// The round-to-nearest draw (ties go down), for values taken in from
/// outside (snapshots written with `f32` values).
pub const NEAREST: u32 = 1 << 31;

/// The draw for a value written while closing window `window` into
/// `array` (a small number naming which value it is): a fixed mix of the
/// two (SplitMix64's finaliser), the same on every platform.
pub fn draw(window: i64, array: u64) -> u32 {
    let mut mixed = (window as u64) ^ array.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (mixed ^ (mixed >> 31)) as u32
}

/// Serialises a coded array as the `f32` values it holds, so snapshots
/// keep the layout they had when the values were `f32`; reading one
/// rounds each value to the nearest code (a value written by this layout
/// reads back to the same code).
pub mod as_f32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(codes: &[u16; N], serializer: S) -> Result<S::Ok, S::Error> {
        codes.map(super::decode).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u16; 24], D::Error> {
        let values = <[f32; 24]>::deserialize(deserializer)?;
        Ok(values.map(|value| super::encode(f64::from(value), super::NEAREST)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_to_itself_whatever_the_draw() {
        for code in 0..=u16::MAX {
            let value = value(code);
            for draw in [0, 1, NEAREST, u32::MAX] {
                assert_eq!(encode(value, draw), code, "code {code} value {value} draw {draw}");
            }
        }
    }

    #[test]
    fn codes_are_ordered_like_their_values_and_within_a_thousandth() {
        for code in 1..u16::MAX {
            assert!(value(code + 1) > value(code), "{code}");
        }
        for value_in in [1e-9, 3.7e-5, 0.013, 0.5, 0.9999, 1.0, 2.5, 117.3, 4_000.1, 3.3e6, 1.9e9] {
            let coded = value(encode(value_in, NEAREST));
            assert!((coded - value_in).abs() <= value_in * 1e-3, "{value_in} -> {coded}");
        }
        assert_eq!(encode(0.0, 0), 0);
        assert_eq!(encode(-1.0, 0), 0);
        assert_eq!(encode(f64::NAN, 0), 0);
        assert_eq!(encode(1e12, 0), u16::MAX);
    }

    #[test]
    fn rounding_by_draws_is_unbiased_where_nearest_would_stall() {
        // A moving average at 1.0 fed 1.2 with a small weight: each step is
        // far below half a grid step (2^-10 here), so rounding to nearest
        // never moves it; drawn rounding follows the exact average.
        let alpha = 0.002;
        let (mut nearest, mut drawn, mut exact) = (encode(1.0, NEAREST), encode(1.0, NEAREST), 1.0f64);
        for window in 0..3_000i64 {
            nearest = encode((1.0 - alpha) * value(nearest) + alpha * 1.2, NEAREST);
            drawn = encode((1.0 - alpha) * value(drawn) + alpha * 1.2, draw(window, 0));
            exact = (1.0 - alpha) * exact + alpha * 1.2;
        }
        assert_eq!(value(nearest), 1.0, "round-to-nearest stalls");
        assert!((value(drawn) - exact).abs() < 0.01, "{} vs {exact}", value(drawn));
    }
}
