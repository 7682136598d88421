//! Segments over Microsoft's DiskANN crates.
//!
//! - [`sealed::SealedSegment`]: an SSD-resident DiskANN index (graph and full
//!   vectors in 4 KiB sectors, PQ codes in RAM, beam search) plus what the
//!   crates lack: external u64 ids, a persisted delete bitmap, a manifest
//!   with the checksum of every file, compaction by rebuild.
//! - [`reader`]: io_uring + O_DIRECT where the platform allows, a `pread`
//!   reader where it does not (tmpfs, seccomp), chosen automatically.

pub mod growing;
pub mod manifest;
pub mod reader;
pub mod sealed;

use diskann::ANNError;

use crate::error::IndexError;

impl From<ANNError> for IndexError {
    fn from(e: ANNError) -> Self {
        IndexError::DiskAnn(e.to_string())
    }
}
