//! What the `engram` and `engramctl` binaries (and the tests) share: a
//! blocking client of the public API, config loading, and a plain-text
//! table printer.

pub mod client;
pub mod config;
pub mod rng;
pub mod table;
