//! The sector reader behind sealed segments.
//!
//! DiskANN's Linux reader opens the index with O_DIRECT and reads through
//! io_uring. Both can be missing: tmpfs refuses O_DIRECT, container seccomp
//! profiles often block `io_uring_setup`. [`AutoReaderFactory`] tries that
//! reader first and falls back to positional reads (`pread`), which need no
//! alignment and work on any file system.

use std::fs::File;
use std::os::unix::fs::FileExt;

use diskann::{ANNError, ANNResult};
use diskann_disk::search::provider::aligned_file_reader::traits::{
    AlignedFileReader, AlignedReaderFactory,
};
use diskann_disk::search::provider::aligned_file_reader::{
    A512, AlignedRead, LinuxAlignedFileReader,
};

/// Which reader a segment ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    /// io_uring with O_DIRECT: bypasses the page cache.
    IoUring,
    /// `pread` through the page cache.
    Pread,
}

/// Builds one reader per search thread; decides once, at construction,
/// whether io_uring + O_DIRECT work on this file.
pub struct AutoReaderFactory {
    path: String,
    kind: ReaderKind,
}

impl AutoReaderFactory {
    /// Runs `probe` on `path`: if it succeeds, DiskANN's direct reader is
    /// used; otherwise `pread`. `force_pread` skips the probe. Production
    /// code passes [`direct_io_probe`]; tests inject failures.
    pub fn new(path: String, force_pread: bool, probe: fn(&str) -> Result<(), String>) -> Self {
        let kind = if force_pread {
            ReaderKind::Pread
        } else {
            match probe(&path) {
                Ok(()) => ReaderKind::IoUring,
                Err(reason) => {
                    tracing::info!(file = %path, %reason, "io_uring or O_DIRECT unavailable; sealed segment reads use pread");
                    ReaderKind::Pread
                }
            }
        };
        AutoReaderFactory { path, kind }
    }

    pub fn kind(&self) -> ReaderKind {
        self.kind
    }
}

/// Whether DiskANN's direct reader (O_DIRECT open + io_uring ring) can be
/// created for `path` and can read its first sector.
pub fn direct_io_probe(path: &str) -> Result<(), String> {
    let path = path.to_string();
    let attempt = std::panic::catch_unwind(move || -> Result<(), String> {
        let mut reader = LinuxAlignedFileReader::new(&path).map_err(|e| e.to_string())?;
        let mut buffer = AlignedSector([0u8; 4096]);
        let read = AlignedRead::<u8, A512>::new(0, &mut buffer.0).map_err(|e| e.to_string())?;
        reader.read(&mut [read]).map_err(|e| e.to_string())
    });
    attempt.unwrap_or_else(|_| Err("the direct reader panicked".into()))
}

#[repr(C, align(4096))]
struct AlignedSector([u8; 4096]);

pub enum AutoReader {
    Direct(Box<LinuxAlignedFileReader>),
    Pread(File),
}

impl AlignedReaderFactory for AutoReaderFactory {
    type AlignedReaderType = AutoReader;

    fn build(&self) -> ANNResult<AutoReader> {
        match self.kind {
            ReaderKind::IoUring => Ok(AutoReader::Direct(Box::new(LinuxAlignedFileReader::new(
                &self.path,
            )?))),
            ReaderKind::Pread => File::open(&self.path)
                .map(AutoReader::Pread)
                .map_err(ANNError::new),
        }
    }
}

impl AlignedFileReader for AutoReader {
    /// Requests are 512-byte aligned so the direct reader can serve them;
    /// `pread` simply does not need it.
    type Alignment = A512;

    fn read(&mut self, read_requests: &mut [AlignedRead<u8, A512>]) -> ANNResult<()> {
        match self {
            AutoReader::Direct(reader) => reader.read(read_requests),
            AutoReader::Pread(file) => {
                for request in read_requests.iter_mut() {
                    let offset = request.offset();
                    file.read_exact_at(request.aligned_buf_mut(), offset)
                        .map_err(ANNError::new)?;
                }
                Ok(())
            }
        }
    }
}
