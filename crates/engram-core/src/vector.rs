//! Validation and preparation of vectors before they reach an index.

use crate::distance::Metric;
use crate::error::{CoreError, Result};

/// Checks the dimension and that every component is finite.
pub fn validate(vector: &[f32], dim: usize) -> Result<()> {
    if vector.len() != dim {
        return Err(CoreError::DimensionMismatch {
            expected: dim,
            actual: vector.len(),
        });
    }
    if let Some(index) = vector.iter().position(|x| !x.is_finite()) {
        return Err(CoreError::NonFiniteComponent { index });
    }
    Ok(())
}

/// Scales `vector` to unit L2 norm in place.
pub fn normalize_in_place(vector: &mut [f32]) -> Result<()> {
    let norm = vector
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(CoreError::ZeroVector);
    }
    let inv = (1.0 / norm) as f32;
    vector.iter_mut().for_each(|x| *x *= inv);
    Ok(())
}

/// Validates a vector and brings it into the form the metric stores and
/// queries: unit length for cosine, unchanged for L2.
pub fn prepare(metric: Metric, mut vector: Vec<f32>, dim: usize) -> Result<Vec<f32>> {
    validate(&vector, dim)?;
    if metric == Metric::Cosine {
        normalize_in_place(&mut vector)?;
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_dimension_and_non_finite() {
        assert_eq!(
            validate(&[1.0, 2.0], 3),
            Err(CoreError::DimensionMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            validate(&[1.0, f32::NAN, 2.0], 3),
            Err(CoreError::NonFiniteComponent { index: 1 })
        );
        assert_eq!(
            validate(&[f32::INFINITY], 1),
            Err(CoreError::NonFiniteComponent { index: 0 })
        );
    }

    #[test]
    fn prepare_normalises_for_cosine_only() {
        let v = prepare(Metric::Cosine, vec![3.0, 4.0], 2).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(
            prepare(Metric::L2, vec![3.0, 4.0], 2).unwrap(),
            vec![3.0, 4.0]
        );
        assert_eq!(
            prepare(Metric::Cosine, vec![0.0, 0.0], 2),
            Err(CoreError::ZeroVector)
        );
    }
}
