//! Fault injection for the chaos harness: "the disk is full".
//!
//! When the environment variable [`DISK_FULL_ENV`] names a file, every
//! durable write of this process (WAL appends, Raft journal appends,
//! checksummed files) fails with `StorageFull` while that file exists. A
//! test creates and removes the file to cut and restore a running
//! process's disk writes; without the variable this is one load of a
//! `OnceLock` per write. It exists so that the harness exercises the real
//! error paths (nothing acknowledged, nothing half-written, recovery once
//! the disk has room) instead of a mock.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable naming the flag file.
pub const DISK_FULL_ENV: &str = "ENGRAM_FAULT_DISK_FULL";

fn flag() -> Option<&'static PathBuf> {
    static FLAG: OnceLock<Option<PathBuf>> = OnceLock::new();
    FLAG.get_or_init(|| std::env::var_os(DISK_FULL_ENV).map(PathBuf::from))
        .as_ref()
}

/// `Err(StorageFull)` while the injected "disk full" fault is on.
pub fn check_disk_writable() -> std::io::Result<()> {
    match flag() {
        Some(path) if path.exists() => Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "injected fault: no space left on device ({} exists)",
                path.display()
            ),
        )),
        _ => Ok(()),
    }
}
