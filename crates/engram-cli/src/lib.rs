//! What the `engram` and `engramctl` binaries share: a blocking client of
//! the public API and a plain-text table printer.

pub mod client;
pub mod table;
