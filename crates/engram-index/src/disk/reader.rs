//! The sector reader behind sealed segments.
//!
//! Sealed segments read 4 KiB sectors with O_DIRECT through io_uring, as
//! DiskANN's Linux reader does, but through [`UringReader`]: DiskANN's reader
//! (0.61) only checks completions for negative errors, so a short read (a
//! file truncated under a running server) would hand the search a buffer
//! holding stale bytes. Ours refuses any completion shorter than requested.
//!
//! Both io_uring and O_DIRECT can be missing: tmpfs refuses O_DIRECT on some
//! kernels, container seccomp profiles often block `io_uring_setup`.
//! [`AutoReaderFactory`] probes once and falls back to positional reads
//! (`pread`), which need no alignment and work on any file system.
//!
//! A segment the node's cache budget serves from memory reads its sectors
//! from a [`SectorImage`] instead: the whole file, loaded once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

use diskann::{ANNError, ANNResult};
use diskann_disk::search::provider::aligned_file_reader::traits::{
    AlignedFileReader, AlignedReaderFactory,
};
use diskann_disk::search::provider::aligned_file_reader::{A512, AlignedRead};
use io_uring::IoUring;

/// Reads in flight per submission; beam searches ask for at most a few
/// dozen sectors at a time.
const RING_ENTRIES: usize = 128;

/// Which reader a segment ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    /// io_uring with O_DIRECT: bypasses the page cache.
    IoUring,
    /// `pread` through the page cache.
    Pread,
    /// Copies from the whole file held in RAM.
    Memory,
}

/// A sector file held in RAM: the bytes searches read instead of the disk.
#[derive(Clone)]
pub struct SectorImage(Arc<Vec<u8>>);

impl SectorImage {
    /// Reads the whole file at `path`.
    pub fn load(path: &str) -> std::io::Result<SectorImage> {
        Ok(SectorImage(Arc::new(std::fs::read(path)?)))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn crc32(&self) -> u32 {
        crc32fast::hash(&self.0)
    }

    /// Fills `buffer` from `offset`; a read past the end fails as a short
    /// read would on disk.
    fn read_into(&self, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "short read at offset {offset}: {} bytes wanted from a {}-byte image",
                    buffer.len(),
                    self.0.len()
                ),
            )),
        }
    }
}

/// Builds one reader per search thread; decides once, at construction,
/// whether io_uring + O_DIRECT work on this file.
pub struct AutoReaderFactory {
    path: String,
    kind: ReaderKind,
    image: Option<SectorImage>,
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
        AutoReaderFactory {
            path,
            kind,
            image: None,
        }
    }

    /// Readers that copy from `image`, the file at `path` held in RAM.
    pub fn in_memory(path: String, image: SectorImage) -> Self {
        AutoReaderFactory {
            path,
            kind: ReaderKind::Memory,
            image: Some(image),
        }
    }

    pub fn kind(&self) -> ReaderKind {
        self.kind
    }
}

/// Whether the direct reader (O_DIRECT open + io_uring ring) can be
/// created for `path` and can read its first sector.
pub fn direct_io_probe(path: &str) -> Result<(), String> {
    let path = path.to_string();
    let attempt = std::panic::catch_unwind(move || -> Result<(), String> {
        let mut reader = UringReader::open(&path).map_err(|e| e.to_string())?;
        let mut buffer = AlignedSector([0u8; 4096]);
        let read = AlignedRead::<u8, A512>::new(0, &mut buffer.0).map_err(|e| e.to_string())?;
        reader.read(&mut [read]).map_err(|e| e.to_string())
    });
    attempt.unwrap_or_else(|_| Err("the direct reader panicked".into()))
}

#[repr(C, align(4096))]
struct AlignedSector([u8; 4096]);

/// O_DIRECT reads through one io_uring per search thread, each completion
/// checked for its full length.
pub struct UringReader {
    ring: IoUring,
    /// Keeps the registered descriptor open.
    _file: File,
}

impl UringReader {
    pub fn open(path: &str) -> std::io::Result<UringReader> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let ring = IoUring::new(RING_ENTRIES as u32)?;
        ring.submitter()
            .register_files(std::slice::from_ref(&file.as_raw_fd()))?;
        Ok(UringReader { ring, _file: file })
    }

    fn read_batch(&mut self, batch: &mut [AlignedRead<u8, A512>]) -> ANNResult<()> {
        for (n, request) in batch.iter_mut().enumerate() {
            let offset = request.offset();
            let buffer = request.aligned_buf_mut();
            let entry = io_uring::opcode::Read::new(
                io_uring::types::Fixed(0),
                buffer.as_mut_ptr(),
                buffer.len() as u32,
            )
            .offset(offset)
            .build()
            .user_data(n as u64);
            // SAFETY: the buffer outlives the submission: this function
            // waits below for every entry it pushed before returning.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| ANNError::new(std::io::Error::other("io_uring queue full")))?;
        }
        // Every pushed entry is waited for, even after a failure: the kernel
        // writes into these buffers until its completion arrives.
        let mut pending = batch.len();
        let mut failure: Option<std::io::Error> = None;
        while pending > 0 {
            if let Err(e) = self.ring.submit_and_wait(pending) {
                let transient = e.kind() == std::io::ErrorKind::Interrupted
                    || matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY));
                if transient {
                    std::thread::yield_now();
                    continue;
                }
                // Entries left in the submission queue would be sent later
                // with buffers that no longer exist: stop instead (a bug or
                // a broken kernel, never bad input).
                panic!("io_uring submit failed with reads possibly in flight: {e}");
            }
            for completion in self.ring.completion() {
                pending -= 1;
                let request = &batch[completion.user_data() as usize];
                let wanted = request.aligned_buf().len();
                let got = completion.result();
                if failure.is_some() {
                    continue;
                }
                if got < 0 {
                    failure = Some(std::io::Error::from_raw_os_error(-got));
                } else if got as usize != wanted {
                    failure = Some(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "short read at offset {}: {got} of {wanted} bytes (file truncated?)",
                            request.offset()
                        ),
                    ));
                }
            }
        }
        match failure {
            Some(e) => Err(ANNError::new(e)),
            None => Ok(()),
        }
    }
}

impl AlignedFileReader for UringReader {
    type Alignment = A512;

    fn read(&mut self, read_requests: &mut [AlignedRead<u8, A512>]) -> ANNResult<()> {
        for batch in read_requests.chunks_mut(RING_ENTRIES) {
            self.read_batch(batch)?;
        }
        Ok(())
    }
}

pub enum AutoReader {
    Direct(Box<UringReader>),
    Pread(File),
    Memory(SectorImage),
}

impl AlignedReaderFactory for AutoReaderFactory {
    type AlignedReaderType = AutoReader;

    fn build(&self) -> ANNResult<AutoReader> {
        match self.kind {
            ReaderKind::IoUring => Ok(AutoReader::Direct(Box::new(
                UringReader::open(&self.path).map_err(ANNError::new)?,
            ))),
            ReaderKind::Pread => File::open(&self.path)
                .map(AutoReader::Pread)
                .map_err(ANNError::new),
            ReaderKind::Memory => match &self.image {
                Some(image) => Ok(AutoReader::Memory(image.clone())),
                None => Err(ANNError::new(std::io::Error::other(
                    "a memory reader needs the sector image",
                ))),
            },
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
            AutoReader::Memory(image) => {
                for request in read_requests.iter_mut() {
                    let offset = request.offset();
                    image
                        .read_into(offset, request.aligned_buf_mut())
                        .map_err(ANNError::new)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_at(
        reader: &mut impl AlignedFileReader<Alignment = A512>,
        offset: u64,
    ) -> ANNResult<u8> {
        let mut buffer = AlignedSector([0u8; 4096]);
        let read = AlignedRead::<u8, A512>::new(offset, &mut buffer.0)?;
        reader.read(&mut [read])?;
        Ok(buffer.0[0])
    }

    #[test]
    fn both_readers_refuse_a_sector_past_the_end_of_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index_disk.index");
        let mut bytes = vec![1u8; 4096];
        bytes.extend(vec![2u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let path = path.display().to_string();

        let factory = AutoReaderFactory::new(path.clone(), true, direct_io_probe);
        let mut pread = factory.build().unwrap();
        assert_eq!(read_at(&mut pread, 4096).unwrap(), 2);

        // This machine's test directory supports O_DIRECT and io_uring; if
        // it did not, the probe says why and this test fails loudly.
        direct_io_probe(&path).expect("direct reads work where the tests run");
        let mut direct = AutoReaderFactory::new(path.clone(), false, direct_io_probe)
            .build()
            .unwrap();
        assert!(matches!(direct, AutoReader::Direct(_)));
        assert_eq!(read_at(&mut direct, 4096).unwrap(), 2);

        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert_eq!(read_at(&mut direct, 0).unwrap(), 1);
        let error = read_at(&mut direct, 4096).unwrap_err().to_string();
        assert!(error.contains("short read"), "{error}");
        assert!(read_at(&mut pread, 4096).is_err());
    }

    #[test]
    fn the_memory_reader_serves_the_file_and_refuses_reads_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index_disk.index");
        let mut bytes = vec![1u8; 4096];
        bytes.extend(vec![2u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let path = path.display().to_string();
        let image = SectorImage::load(&path).unwrap();
        assert_eq!(image.len(), 8192);
        let factory = AutoReaderFactory::in_memory(path.clone(), image);
        assert_eq!(factory.kind(), ReaderKind::Memory);
        let mut reader = factory.build().unwrap();
        assert_eq!(read_at(&mut reader, 4096).unwrap(), 2);
        // The file on disk no longer matters once loaded.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_at(&mut reader, 0).unwrap(), 1);
        let error = read_at(&mut reader, 8192).unwrap_err().to_string();
        assert!(error.contains("short read"), "{error}");
    }
}
