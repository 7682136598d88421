//! splitmix64: a small seeded generator, so that what is drawn at random
//! (a head's training order and row sample, the evaluation's label noise,
//! the chaos run's choice of faults) replays exactly from a seed.

pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (up to a negligible modulo bias); `n` > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_values_stay_in_range() {
        let (mut a, mut b) = (SplitMix64(7), SplitMix64(7));
        for _ in 0..1_000 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(10) < 10);
            let u = b.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_ne!(SplitMix64(7).next_u64(), SplitMix64(8).next_u64());
    }
}
