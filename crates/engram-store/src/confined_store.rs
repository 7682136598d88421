//! A local object store that cannot be led out of its root.
//!
//! `object_store`'s `LocalFileSystem` keeps paths under its prefix, but it
//! follows symlinks, in listings too: a link inside a local root pointing
//! at `/etc` (or a file linked from elsewhere) would be read as if it were
//! in the root. [`crate::StorageAccess::admit`] judges the URI a request
//! names; this store judges every object reached through it (each listed
//! entry, each get, put, copy and rename) by where it really leads, and
//! refuses one outside the root as `PermissionDenied` before it is opened.

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::confine::resolve_existing_prefix;

/// [`LocalFileSystem`] rooted at `root`, refusing any object whose real
/// path (symlinks followed) is outside `root`.
#[derive(Debug, Clone)]
pub struct ConfinedLocalStore {
    inner: Arc<LocalFileSystem>,
    /// Canonical.
    root: Arc<PathBuf>,
}

impl ConfinedLocalStore {
    /// `root` must be canonical (as [`crate::StorageAccess`] keeps them).
    pub fn new(root: &std::path::Path) -> object_store::Result<ConfinedLocalStore> {
        Ok(ConfinedLocalStore {
            inner: Arc::new(LocalFileSystem::new_with_prefix(root)?),
            root: Arc::new(root.to_path_buf()),
        })
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        inside(&self.inner, &self.root, location)
    }
}

fn inside(
    inner: &LocalFileSystem,
    root: &std::path::Path,
    location: &Path,
) -> object_store::Result<()> {
    let file = inner.path_to_filesystem(location)?;
    match resolve_existing_prefix(&file) {
        Some(real) if real.starts_with(root) => Ok(()),
        _ => Err(object_store::Error::PermissionDenied {
            path: location.to_string(),
            source: format!(
                "`{location}` leads outside the local root {} (through a symlink); refused",
                root.display()
            )
            .into(),
        }),
    }
}

impl std::fmt::Display for ConfinedLocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfinedLocalStore({})", self.root.display())
    }
}

/// Each listed object checked; the first one outside ends the listing
/// with its error.
fn checked_listing(
    store: &ConfinedLocalStore,
    listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    let (inner, root) = (store.inner.clone(), store.root.clone());
    listing
        .map(move |entry| {
            let meta = entry?;
            inside(&inner, &root, &meta.location)?;
            Ok(meta)
        })
        .boxed()
}

#[async_trait]
impl ObjectStore for ConfinedLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    /// Deleting a symlink removes the link only, never what it leads to.
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        checked_listing(self, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        checked_listing(self, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let listed = self.inner.list_with_delimiter(prefix).await?;
        for location in listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|o| &o.location))
        {
            self.check(location)?;
        }
        Ok(listed)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn a_symlink_out_of_the_root_is_refused_where_it_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("in")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("in/ok.txt"), b"ok").unwrap();
        std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        let store = ConfinedLocalStore::new(&root).unwrap();
        let ok = store.get(&Path::from("in/ok.txt")).await.unwrap();
        assert_eq!(ok.bytes().await.unwrap().as_ref(), b"ok");
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        assert!(listed[0].is_ok());

        std::os::unix::fs::symlink(&outside, root.join("dir-link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("in/file-link")).unwrap();
        for path in ["dir-link/secret.txt", "in/file-link"] {
            let err = store.get(&Path::from(path)).await.unwrap_err();
            assert!(
                matches!(err, object_store::Error::PermissionDenied { .. }),
                "{path}: {err}"
            );
            let err = store
                .put(&Path::from(path), PutPayload::from_static(b"x"))
                .await
                .unwrap_err();
            assert!(matches!(err, object_store::Error::PermissionDenied { .. }));
        }
        assert_eq!(
            std::fs::read(outside.join("secret.txt")).unwrap(),
            b"secret"
        );
        let listed: Vec<_> = store.list(None).collect().await;
        assert!(
            listed
                .iter()
                .any(|e| matches!(e, Err(object_store::Error::PermissionDenied { .. }))),
            "{listed:?}"
        );
        assert!(store.list_with_delimiter(None).await.is_err());
        // A link that stays inside the root is fine.
        std::os::unix::fs::symlink(root.join("in"), root.join("in-link")).unwrap();
        store.get(&Path::from("in-link/ok.txt")).await.unwrap();
    }
}
