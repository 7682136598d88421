//! Staged segment files checksummed as they arrived (streamed from a
//! primary, or downloaded from object storage and checked there), so that
//! the attach does not read them all a second time to verify them: for a
//! 1M-row 128-d segment that second read is about a third of a move.
//!
//! Kept in memory only: after a restart every staged file is verified by
//! reading it, as before. An entry is dropped as soon as its file may
//! change (a stream appends to it again, a plan removes it), and taken
//! when its segment is attached.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engram_index::ArrivedFiles;

#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    files: Mutex<HashMap<PathBuf, (u64, u32)>>,
}

impl Arrivals {
    /// `path` now holds `bytes` bytes whose CRC32 is `crc32`, computed
    /// from the bytes as they were written.
    pub(crate) fn record(&self, path: PathBuf, bytes: u64, crc32: u32) {
        self.files.lock().insert(path, (bytes, crc32));
    }

    /// `path` is about to change: its record no longer holds.
    pub(crate) fn forget(&self, path: &Path) {
        self.files.lock().remove(path);
    }

    /// Every file under `dir` is about to change or go.
    pub(crate) fn forget_under(&self, dir: &Path) {
        self.files.lock().retain(|path, _| !path.starts_with(dir));
    }

    /// Takes the records of the files directly in `dir`, by file name,
    /// for its attach.
    pub(crate) fn take_dir(&self, dir: &Path) -> ArrivedFiles {
        let mut files = self.files.lock();
        let names: Vec<PathBuf> = files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .cloned()
            .collect();
        names
            .into_iter()
            .filter_map(|path| {
                let record = files.remove(&path)?;
                Some((path.file_name()?.to_string_lossy().to_string(), record))
            })
            .collect()
    }

    /// Records every file of a directory `dir` that `files` lists (name,
    /// bytes, CRC32), all checked as they arrived.
    pub(crate) fn record_dir<'a>(
        &self,
        dir: &Path,
        files: impl IntoIterator<Item = (&'a str, u64, u32)>,
    ) {
        let mut held = self.files.lock();
        for (name, bytes, crc32) in files {
            held.insert(dir.join(name), (bytes, crc32));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_taken_per_directory_and_forgotten_when_files_change() {
        let arrivals = Arrivals::default();
        let a = Path::new("/s/a");
        let b = Path::new("/s/b");
        arrivals.record(a.join("x"), 3, 7);
        arrivals.record(a.join("y"), 4, 8);
        arrivals.record(b.join("x"), 5, 9);
        arrivals.forget(&a.join("y"));
        let taken = arrivals.take_dir(a);
        assert_eq!(taken, ArrivedFiles::from([("x".to_string(), (3, 7))]));
        assert!(arrivals.take_dir(a).is_empty(), "taken once");
        arrivals.forget_under(Path::new("/s"));
        assert!(arrivals.take_dir(b).is_empty());
        arrivals.record_dir(a, [("z", 1, 2)]);
        assert_eq!(
            arrivals.take_dir(a),
            ArrivedFiles::from([("z".to_string(), (1, 2))])
        );
    }
}
