//! Where a request may make the server read or write: local paths only
//! under `[storage] local_roots`, object storage only in `[storage]
//! buckets` when that list is set. A URI is checked before anything is
//! opened: local paths are made absolute, `..` and percent-encoding are
//! refused, and the longest existing ancestor is canonicalised (so a
//! symlink out of a root is seen for where it leads) before the prefix
//! check. An admitted local path is then opened through a store rooted at
//! its root that checks every object it reaches the same way
//! ([`crate::ConfinedLocalStore`]), so nothing read through it (a listing,
//! an `image_uri` of a row, a file linked from outside) leaves the root.
//!
//! Plain file names inside transfers, snapshots and spills are checked by
//! [`engram_core::plain_file_name`].

use std::path::{Component, Path, PathBuf};

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri}: {reason}")]
pub struct Refused {
    pub uri: String,
    pub reason: String,
}

/// Where an admitted URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Below `root` (canonical), at `relative` (slash-separated, without
    /// `..`; may end in a glob).
    Local { root: PathBuf, relative: String },
    /// An object store URI in an allowed bucket.
    Remote,
}

/// The roots and buckets requests are confined to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageAccess {
    /// Canonical local roots.
    roots: Vec<PathBuf>,
    /// Allowed buckets; `None`: any.
    buckets: Option<Vec<String>>,
}

impl StorageAccess {
    /// Creates the roots that do not exist yet (the default ones under the
    /// data directory) and canonicalises them.
    pub fn new(roots: &[PathBuf], buckets: Option<Vec<String>>) -> std::io::Result<StorageAccess> {
        let mut canonical = Vec::with_capacity(roots.len());
        for root in roots {
            fs_err::create_dir_all(root)?;
            canonical.push(fs_err::canonicalize(root)?);
        }
        Ok(StorageAccess {
            roots: canonical,
            buckets,
        })
    }

    /// The canonical roots, for messages.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether a request may use `uri`, and where it points.
    pub fn admit(&self, uri: &str) -> Result<Admitted, Refused> {
        let refuse = |reason: String| Refused {
            uri: uri.to_string(),
            reason,
        };
        let (scheme, rest) = uri.split_once("://").unwrap_or(("file", uri));
        if scheme != "file" {
            let bucket = rest.split('/').next().unwrap_or_default();
            return match &self.buckets {
                Some(allowed) if !allowed.iter().any(|b| b == bucket) => Err(refuse(format!(
                    "bucket `{bucket}` is not in [storage] buckets ({}); add it there or to ENGRAM_STORAGE__BUCKETS",
                    allowed.join(", ")
                ))),
                _ => Ok(Admitted::Remote),
            };
        }
        let outside = || {
            refuse(format!(
                "this server reads and writes local files only under {}; put the files there or add a root to [storage] local_roots (ENGRAM_STORAGE__LOCAL_ROOTS)",
                self.roots_listed()
            ))
        };
        if rest.contains('%') {
            return Err(refuse(
                "percent-encoding is not accepted in local paths; write the path as it is".into(),
            ));
        }
        let path = std::path::absolute(rest)
            .map_err(|e| refuse(format!("not a usable local path: {e}")))?;
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("`..` is not accepted in local paths".into()));
        }
        let resolved = resolve_existing_prefix(&path).ok_or_else(outside)?;
        let root = self
            .roots
            .iter()
            .filter(|root| resolved.starts_with(root))
            .max_by_key(|root| root.as_os_str().len())
            .ok_or_else(outside)?;
        let relative = resolved
            .strip_prefix(root)
            .expect("starts with the root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        Ok(Admitted::Local {
            root: root.clone(),
            relative,
        })
    }

    fn roots_listed(&self) -> String {
        if self.roots.is_empty() {
            return "no directory ([storage] local_roots is empty)".into();
        }
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `path` with its longest existing ancestor canonicalised (symlinks
/// followed) and the rest, which does not exist yet, appended as it is.
/// `None` when nothing of it exists or it cannot be read.
pub(crate) fn resolve_existing_prefix(path: &Path) -> Option<PathBuf> {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(canonical) => {
                return Some(rest.iter().rev().fold(canonical, |p, c| p.join(c)));
            }
            Err(_) => {
                rest.push(existing.file_name()?.to_os_string());
                existing = existing.parent()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(dir: &Path) -> StorageAccess {
        StorageAccess::new(&[dir.join("import"), dir.join("snapshots")], None).unwrap()
    }

    #[test]
    fn local_paths_are_admitted_under_a_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let access = access(dir.path());
        let import = dir.path().join("import");
        std::fs::create_dir_all(import.join("a")).unwrap();
        let root = std::fs::canonicalize(&import).unwrap();
        for (uri, relative) in [
            (import.join("a").display().to_string(), "a"),
            (format!("file://{}", import.join("a").display()), "a"),
            (
                import.join("a/*.parquet").display().to_string(),
                "a/*.parquet",
            ),
            (import.join("new/dir").display().to_string(), "new/dir"),
            (import.display().to_string(), ""),
        ] {
            assert_eq!(
                access.admit(&uri),
                Ok(Admitted::Local {
                    root: root.clone(),
                    relative: relative.into()
                }),
                "{uri}"
            );
        }
        for uri in [
            "/".to_string(),
            "/etc".into(),
            "/etc/passwd".into(),
            "file:///etc".into(),
            dir.path().display().to_string(),
            format!("{}/../x", import.display()),
            format!("{}/%2e%2e/x", import.display()),
            format!("{}-not/x", import.display()),
            "relative/dir".into(),
        ] {
            let refused = access.admit(&uri).unwrap_err();
            assert_eq!(refused.uri, uri);
        }
        let outside = access.admit("/etc").unwrap_err().reason;
        assert!(
            outside.contains(&root.display().to_string()) && outside.contains("local_roots"),
            "the roots are named: {outside}"
        );
    }

    #[test]
    fn a_symlink_is_judged_by_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let access = access(dir.path());
        let import = dir.path().join("import");
        std::os::unix::fs::symlink("/etc", import.join("escape")).unwrap();
        assert!(
            access
                .admit(&import.join("escape").display().to_string())
                .is_err()
        );
        assert!(
            access
                .admit(&import.join("escape/passwd").display().to_string())
                .is_err()
        );
        // A link from outside into a root is fine: it leads inside.
        std::os::unix::fs::symlink(&import, dir.path().join("in")).unwrap();
        assert!(
            access
                .admit(&dir.path().join("in").display().to_string())
                .is_ok()
        );
    }

    #[test]
    fn buckets_are_checked_when_listed() {
        let dir = tempfile::tempdir().unwrap();
        let open = access(dir.path());
        assert_eq!(open.admit("s3://any/x"), Ok(Admitted::Remote));
        let listed = StorageAccess::new(&[], Some(vec!["data".into()])).unwrap();
        assert_eq!(listed.admit("s3://data/x/y"), Ok(Admitted::Remote));
        assert_eq!(listed.admit("gs://data"), Ok(Admitted::Remote));
        let refused = listed.admit("s3://other/x").unwrap_err();
        assert!(refused.reason.contains("`other`"), "{refused}");
        assert!(listed.admit("/tmp").unwrap_err().reason.contains("empty"));
    }
}
