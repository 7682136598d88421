//! A sealed segment's manifest: what the segment is and the size and CRC32
//! of each of its immutable files, verified before the segment is served.
//!
//! `manifest.json` holds one line of JSON and a second line with the CRC32
//! (hex) of the first, so a damaged manifest is refused too.

use fs_err as fs;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;

use engram_core::Metric;

use crate::error::{IndexError, Result};

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentManifest {
    pub format: u32,
    pub rows: usize,
    pub dim: usize,
    pub metric: Metric,
    pub max_degree: u32,
    pub build_list_size: u32,
    pub alpha: f32,
    pub pq_bytes: usize,
    /// The version of the shared codebook that encoded the rows; none when
    /// the segment trained its own (and for segments from before codebooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codebook: Option<u64>,
    pub files: Vec<FileEntry>,
}

pub const FORMAT: u32 = 1;

/// CRC32 of a whole file, streamed.
/// Files whose bytes were checksummed as they arrived: name to (size,
/// CRC32) as written.
pub type ArrivedFiles = std::collections::HashMap<String, (u64, u32)>;

pub fn file_crc32(path: &Path) -> Result<(u64, u32)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hasher.finalize()))
}

impl SegmentManifest {
    /// Checksums `names` in `dir` into the manifest's file list.
    pub fn checksum_files(&mut self, dir: &Path, names: &[String]) -> Result<()> {
        self.files = names
            .iter()
            .map(|name| {
                let (bytes, crc32) = file_crc32(&dir.join(name))?;
                Ok(FileEntry {
                    name: name.clone(),
                    bytes,
                    crc32,
                })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Writes the manifest durably (temporary file, fsync, rename, fsync dir).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let body = serde_json::to_string(self).map_err(|e| IndexError::DiskAnn(e.to_string()))?;
        let text = format!("{body}\n{:08x}\n", crc32fast::hash(body.as_bytes()));
        let tmp = dir.join("manifest.json.tmp");
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, dir.join(MANIFEST_FILE))?;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// Reads the manifest and verifies it and every file it lists.
    pub fn load_verified(dir: &Path) -> Result<SegmentManifest> {
        Self::load_verified_arrived(dir, &ArrivedFiles::new())
    }

    /// [`Self::load_verified`], except that a file `arrived` names with
    /// exactly the size and CRC32 the manifest records is not read again:
    /// its bytes were checksummed as they were written (a shipped or
    /// downloaded file), so only its size on disk is checked.
    pub fn load_verified_arrived(dir: &Path, arrived: &ArrivedFiles) -> Result<SegmentManifest> {
        let path = dir.join(MANIFEST_FILE);
        let manifest = Self::parse_verified(&path, fs::read(&path)?)?;
        for entry in &manifest.files {
            let file = dir.join(&entry.name);
            let known = arrived.get(&entry.name) == Some(&(entry.bytes, entry.crc32));
            let (bytes, crc32) = if known {
                (fs::metadata(&file)?.len(), entry.crc32)
            } else {
                file_crc32(&file)?
            };
            if bytes != entry.bytes || crc32 != entry.crc32 {
                return Err(IndexError::Corrupted {
                    file,
                    reason: format!(
                        "{bytes} bytes with crc32 {crc32:08x}, the manifest records {} bytes with crc32 {:08x}",
                        entry.bytes, entry.crc32
                    ),
                });
            }
        }
        Ok(manifest)
    }

    /// Parses and verifies the manifest's own bytes (`path` names it in
    /// errors); the files it lists are not read. Public for the fuzz target.
    pub fn parse_verified(path: &Path, bytes: Vec<u8>) -> Result<SegmentManifest> {
        let corrupted = |reason: &str| IndexError::Corrupted {
            file: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let text = String::from_utf8(bytes).map_err(|_| corrupted("manifest is not UTF-8"))?;
        let mut lines = text.lines();
        let (Some(body), Some(crc)) = (lines.next(), lines.next()) else {
            return Err(corrupted("manifest is truncated"));
        };
        if u32::from_str_radix(crc.trim(), 16).ok() != Some(crc32fast::hash(body.as_bytes())) {
            return Err(corrupted("manifest checksum mismatch"));
        }
        let manifest: SegmentManifest = serde_json::from_str(body)
            .map_err(|e| corrupted(&format!("manifest unreadable: {e}")))?;
        if manifest.format != FORMAT {
            return Err(corrupted(&format!(
                "unknown segment format {}",
                manifest.format
            )));
        }
        // Each name is joined to the segment directory when it is read or
        // downloaded: one plain name or the manifest is refused.
        if let Some(entry) = manifest
            .files
            .iter()
            .find(|f| !engram_core::plain_file_name(&f.name))
        {
            return Err(corrupted(&format!(
                "manifest lists {:?}, which is not a plain file name",
                entry.name
            )));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest naming a file outside its directory is refused even
    /// with a valid checksum: its names are joined to the directory.
    #[test]
    fn names_that_are_not_plain_are_refused() {
        for name in ["../escape", "a/b", "..", ""] {
            let manifest = SegmentManifest {
                format: FORMAT,
                rows: 1,
                dim: 1,
                metric: Metric::L2,
                max_degree: 1,
                build_list_size: 1,
                alpha: 1.2,
                pq_bytes: 0,
                codebook: None,
                files: vec![FileEntry {
                    name: name.into(),
                    bytes: 0,
                    crc32: 0,
                }],
            };
            let body = serde_json::to_string(&manifest).unwrap();
            let text = format!("{body}\n{:08x}\n", crc32fast::hash(body.as_bytes()));
            let err = SegmentManifest::parse_verified(Path::new("m"), text.into_bytes());
            assert!(
                matches!(err, Err(IndexError::Corrupted { .. })),
                "{name:?}: {err:?}"
            );
        }
    }
}
