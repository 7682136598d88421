//! The seeded generator of the evaluation and the chaos runs: engram-core's
//! (a head's training draws from it too), under the path they name.

pub use engram_core::rng::SplitMix64;
