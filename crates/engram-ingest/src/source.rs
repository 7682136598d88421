//! Where ingestion reads from: a URI naming a prefix (or a glob) of Parquet
//! files on a local disk, S3 (or an S3-compatible server), Google Cloud
//! Storage or Azure Blob Storage, through `object_store`.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;

use engram_core::config::StorageConfig;
use engram_store::{ObjectLocation, StorageAccess};

use crate::error::{IngestError, Result};

/// One Parquet file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: Path,
    pub size: u64,
}

/// A parsed source URI: a store, a directory prefix in it and, when the
/// last segment has `*` or `?`, a pattern for file names.
pub struct Source {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub pattern: Option<String>,
    /// The URI as given, for messages.
    pub uri: String,
}

fn bad(uri: &str, reason: impl Into<String>) -> IngestError {
    IngestError::Source {
        uri: uri.to_string(),
        reason: reason.into(),
    }
}

fn split_glob(path: &str) -> (String, Option<String>) {
    let path = path.trim_matches('/');
    match path.rsplit_once('/') {
        Some((dir, last)) if last.contains(['*', '?']) => (dir.to_string(), Some(last.to_string())),
        None if path.contains(['*', '?']) => (String::new(), Some(path.to_string())),
        _ => (path.to_string(), None),
    }
}

impl Source {
    /// Parses `uri`: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, `file:///abs/dir` or a local path; the last
    /// segment may be a glob such as `part-*.parquet`.
    /// Not confined: for an operator's own command line (`engram embed`);
    /// a request's URI goes through [`Source::open`].
    pub fn parse(uri: &str, storage: &StorageConfig) -> Result<Source> {
        Source::from_location(uri, ObjectLocation::parse(uri, storage))
    }

    /// [`Source::parse`] for a URI a request named: refused
    /// ([`engram_store::StoreError::Refused`]) unless `access` admits it; a
    /// local source is read through a store rooted at its root.
    pub fn open(uri: &str, storage: &StorageConfig, access: &StorageAccess) -> Result<Source> {
        Source::from_location(uri, ObjectLocation::open(uri, storage, access))
    }

    fn from_location(uri: &str, location: engram_store::Result<ObjectLocation>) -> Result<Source> {
        let location = location.map_err(|e| match e {
            engram_store::StoreError::Remote { reason, .. } => bad(uri, reason),
            refused @ engram_store::StoreError::Refused(_) => IngestError::Store(refused),
            other => bad(uri, other.to_string()),
        })?;
        let (store, path) = (location.store, location.path);
        let (prefix, pattern) = split_glob(&path);
        Ok(Source {
            store,
            prefix: Path::from(prefix),
            pattern,
            uri: uri.to_string(),
        })
    }

    /// The Parquet files under the prefix (matching the pattern), sorted by
    /// path so that every run sees them in the same order. A prefix that is
    /// itself a file is that one file.
    pub async fn files(&self) -> Result<Vec<SourceFile>> {
        if self.pattern.is_none()
            && let Ok(meta) = self.store.head(&self.prefix).await
        {
            return Ok(vec![SourceFile {
                path: meta.location,
                size: meta.size,
            }]);
        }
        let listed: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| bad(&self.uri, e.to_string()))?;
        let mut files: Vec<SourceFile> = listed
            .into_iter()
            .filter(|meta| {
                let name = meta.location.filename().unwrap_or_default();
                match &self.pattern {
                    Some(pattern) => glob_match(pattern, name),
                    None => name.ends_with(".parquet"),
                }
            })
            .map(|meta| SourceFile {
                path: meta.location,
                size: meta.size,
            })
            .collect();
        files.sort_by(|a, b| a.path.as_ref().cmp(b.path.as_ref()));
        Ok(files)
    }
}

/// `*` matches any run of characters, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_uris() {
        assert!(glob_match("part-*.parquet", "part-0001.parquet"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("part-*.parquet", "part-0001.csv"));
        assert!(!glob_match("a?c", "ac"));
        assert_eq!(
            split_glob("b/emb/part-*.parquet"),
            ("b/emb".into(), Some("part-*.parquet".into()))
        );
        assert_eq!(split_glob("/emb/"), ("emb".into(), None));
        let storage = StorageConfig::default();
        assert!(Source::parse("ftp://x/y", &storage).is_err());
        assert!(Source::parse("s3:///y", &storage).is_err());
        let local = Source::parse("/tmp/some/dir/*.parquet", &storage).unwrap();
        assert_eq!(local.prefix.as_ref(), "tmp/some/dir");
        assert_eq!(local.pattern.as_deref(), Some("*.parquet"));
    }

    #[tokio::test]
    async fn lists_local_parquet_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.parquet", "a.parquet", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let source =
            Source::parse(dir.path().to_str().unwrap(), &StorageConfig::default()).unwrap();
        let names: Vec<String> = source
            .files()
            .await
            .unwrap()
            .iter()
            .map(|f| f.path.filename().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a.parquet", "b.parquet"]);
    }
}
