//! Distance metrics and the kernels that compute them.
//!
//! Kernels are written over fixed-width lanes so that LLVM vectorises them;
//! on x86-64 a copy compiled with AVX2+FMA is chosen at run time (never with
//! `target-cpu=native`, so shipped binaries run on any x86-64).

use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::OnceLock;

use crate::error::CoreError;

/// How two vectors are compared. Smaller distance means more similar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `1 - cos(a, b)`; vectors are L2-normalised when stored and queried, so
    /// this is `1 - dot(a, b)` and lies in `[0, 2]`.
    Cosine,
    /// Squared Euclidean distance.
    L2,
}

impl Metric {
    /// Distance between two prepared vectors (normalised for cosine).
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => (1.0 - dot(a, b)).max(0.0),
            Metric::L2 => l2_squared(a, b),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
        }
    }
}

impl FromStr for Metric {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            other => Err(CoreError::UnknownMetric(other.to_string())),
        }
    }
}

type Kernel = fn(&[f32], &[f32]) -> f32;

struct Kernels {
    dot: Kernel,
    l2_squared: Kernel,
}

fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernels {
                dot: x86::dot_avx2,
                l2_squared: x86::l2_squared_avx2,
            };
        }
        Kernels {
            dot: dot_lanes::<false>,
            l2_squared: l2_squared_lanes::<false>,
        }
    })
}

/// Dot product of two equally long slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (kernels().dot)(a, b)
}

/// Squared Euclidean distance of two equally long slices.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (kernels().l2_squared)(a, b)
}

const LANES: usize = 16;

#[inline(always)]
fn dot_lanes<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..LANES {
            acc[i] = if FMA {
                ca[i].mul_add(cb[i], acc[i])
            } else {
                acc[i] + ca[i] * cb[i]
            };
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in rest_a.iter().zip(rest_b) {
        sum += x * y;
    }
    sum
}

#[inline(always)]
fn l2_squared_lanes<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..LANES {
            let d = ca[i] - cb[i];
            acc[i] = if FMA {
                d.mul_add(d, acc[i])
            } else {
                acc[i] + d * d
            };
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in rest_a.iter().zip(rest_b) {
        sum += (x - y) * (x - y);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
        super::dot_lanes::<true>(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_squared_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
        super::l2_squared_lanes::<true>(a, b)
    }

    pub(super) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: only installed by `kernels()` after detecting avx2 and fma.
        unsafe { dot_avx2_impl(a, b) }
    }

    pub(super) fn l2_squared_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: only installed by `kernels()` after detecting avx2 and fma.
        unsafe { l2_squared_avx2_impl(a, b) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    proptest! {
        #[test]
        fn kernels_match_naive(pairs in prop::collection::vec((-10f32..10.0, -10f32..10.0), 0..300)) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let expected_dot = naive_dot(&a, &b);
            let expected_l2: f64 = a.iter().zip(&b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
            let tolerance = 1e-3 * (1.0 + a.len() as f64 * 10.0);
            prop_assert!((dot(&a, &b) as f64 - expected_dot).abs() < tolerance);
            prop_assert!((l2_squared(&a, &b) as f64 - expected_l2).abs() < tolerance);
            prop_assert!((dot_lanes::<false>(&a, &b) as f64 - expected_dot).abs() < tolerance);
        }
    }

    #[test]
    fn cosine_distance_of_identical_normalised_vectors_is_zero() {
        let v = [0.6f32, 0.8];
        assert!(Metric::Cosine.distance(&v, &v).abs() < 1e-6);
        assert!((Metric::Cosine.distance(&v, &[-0.6, -0.8]) - 2.0).abs() < 1e-6);
        assert_eq!(Metric::L2.distance(&[1.0, 2.0], &[4.0, 6.0]), 25.0);
    }

    #[test]
    fn metric_parses_and_rejects() {
        assert_eq!("cosine".parse::<Metric>(), Ok(Metric::Cosine));
        assert_eq!("l2".parse::<Metric>(), Ok(Metric::L2));
        assert!("dot".parse::<Metric>().is_err());
    }
}
