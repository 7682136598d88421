//! A place in object storage named by a URI (`s3://bucket/prefix`,
//! `gs://`, `az://`, `file:///abs/dir` or a plain local path), opened
//! through `object_store` with the `[storage]` settings; and whole files
//! moved to and from it with their size and CRC32 checked, so that a file
//! damaged in storage or in transit is refused, never installed.
//!
//! Ingestion reads its Parquet sources through this, bulk ingestion uploads
//! the sealed segments it builds, and workers download them.

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use engram_core::config::StorageConfig;
use fs_err as fs;

use crate::confine::{Admitted, StorageAccess};
use crate::error::{Result, StoreError};

/// Files up to this size are uploaded in one request; larger ones in parts.
const SINGLE_PUT_BYTES: u64 = 32 << 20;
/// Part size of multipart uploads (S3 needs at least 5 MiB).
const PART_BYTES: usize = 16 << 20;

/// An opened store and a path prefix in it.
#[derive(Clone)]
pub struct ObjectLocation {
    pub store: Arc<dyn ObjectStore>,
    /// The path below the bucket (or below `/` for local paths).
    pub path: String,
    /// The URI as given, for messages.
    pub uri: String,
}

impl std::fmt::Debug for ObjectLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}

/// One file to move, with what it must be on arrival.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckedFile {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// Refuses unless every file's name is one plain file name.
fn plain_names(uri: &str, files: &[CheckedFile]) -> Result<()> {
    match files
        .iter()
        .find(|f| !engram_core::plain_file_name(&f.name))
    {
        None => Ok(()),
        Some(f) => Err(StoreError::Refused(crate::confine::Refused {
            uri: uri.to_string(),
            reason: format!("{:?} is not a plain file name", f.name),
        })),
    }
}

fn bad(uri: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        uri: uri.to_string(),
        reason: reason.to_string(),
    }
}

impl ObjectLocation {
    /// Opens the store a request's `uri` names if `access` admits it: a
    /// local path through a store rooted at its root (nothing read through
    /// it can leave the root), anything else as [`ObjectLocation::parse`].
    pub fn open(
        uri: &str,
        storage: &StorageConfig,
        access: &StorageAccess,
    ) -> Result<ObjectLocation> {
        match access.admit(uri)? {
            Admitted::Remote => ObjectLocation::parse(uri, storage),
            Admitted::Local { root, relative } => {
                let store = crate::ConfinedLocalStore::new(&root)
                    .map_err(|e| bad(uri, format!("not a usable local path: {e}")))?;
                Ok(ObjectLocation {
                    store: Arc::new(store),
                    path: relative,
                    uri: uri.to_string(),
                })
            }
        }
    }

    /// Opens the store `uri` names; credentials and endpoints come from
    /// `storage` and the usual environment variables (`AWS_*`, ...). Not
    /// confined: for URIs of the node's own config (`segments_uri`) and of
    /// an operator's command line; a request's go through
    /// [`ObjectLocation::open`].
    pub fn parse(uri: &str, storage: &StorageConfig) -> Result<ObjectLocation> {
        let (scheme, rest) = match uri.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("file", uri),
        };
        let (store, path): (Arc<dyn ObjectStore>, String) = match scheme {
            "file" => {
                let local = std::path::absolute(rest)
                    .map_err(|e| bad(uri, format!("not a usable local path: {e}")))?;
                // Refused here, as the caller's mistake, rather than as a
                // storage failure when the first file is written.
                let too_long = local.as_os_str().len() > 4096
                    || local.components().any(|c| c.as_os_str().len() > 255);
                if too_long {
                    return Err(bad(
                        uri,
                        "not a usable local path: a name is longer than 255 bytes or the path longer than 4096",
                    ));
                }
                (
                    Arc::new(LocalFileSystem::new()),
                    local.to_string_lossy().to_string(),
                )
            }
            "s3" | "gs" | "az" => {
                let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad(uri, "no bucket"));
                }
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" => {
                        let s3 = &storage.s3;
                        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                        // `allow_http = true` in the config allows it; left
                        // false, `AWS_ALLOW_HTTP` (read by from_env) decides.
                        if s3.allow_http {
                            builder = builder.with_allow_http(true);
                        }
                        if let Some(endpoint) = &s3.endpoint {
                            builder = builder.with_endpoint(endpoint);
                        }
                        if let Some(region) = &s3.region {
                            builder = builder.with_region(region);
                        }
                        if let Some(key) = &s3.access_key_id {
                            builder = builder.with_access_key_id(key);
                        }
                        if let Some(secret) = &s3.secret_access_key {
                            builder = builder.with_secret_access_key(secret);
                        }
                        Arc::new(builder.build().map_err(|e| bad(uri, e))?)
                    }
                    "gs" => Arc::new(
                        GoogleCloudStorageBuilder::from_env()
                            .with_bucket_name(bucket)
                            .build()
                            .map_err(|e| bad(uri, e))?,
                    ),
                    _ => Arc::new(
                        MicrosoftAzureBuilder::from_env()
                            .with_container_name(bucket)
                            .build()
                            .map_err(|e| bad(uri, e))?,
                    ),
                };
                (store, path.to_string())
            }
            other => {
                return Err(bad(
                    uri,
                    format!("unknown scheme `{other}`; use s3://, gs://, az://, file:// or a path"),
                ));
            }
        };
        Ok(ObjectLocation {
            store,
            path,
            uri: uri.to_string(),
        })
    }

    /// The object path of `key` (slash-separated) below this location.
    pub fn object(&self, key: &str) -> ObjectPath {
        let joined = format!("{}/{}", self.path.trim_matches('/'), key.trim_matches('/'));
        ObjectPath::from(joined.trim_matches('/'))
    }

    /// This location's URI with `key` appended, for messages and records.
    pub fn uri_of(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.uri.trim_end_matches('/'),
            key.trim_matches('/')
        )
    }

    /// Uploads `files` from `dir` to `<key>/<name>`, checking each file
    /// against its size and CRC32 as it is read (a file changed on disk
    /// since it was checksummed is not uploaded).
    pub async fn upload(&self, key: &str, dir: &Path, files: &[CheckedFile]) -> Result<()> {
        plain_names(&self.uri_of(key), files)?;
        for file in files {
            let object = self.object(&format!("{key}/{}", file.name));
            let local = dir.join(&file.name);
            let mut reader = std::io::BufReader::new(fs::File::open(&local)?);
            let mut crc = crc32fast::Hasher::new();
            let mut sent = 0u64;
            if file.bytes <= SINGLE_PUT_BYTES {
                let mut bytes = Vec::with_capacity(file.bytes as usize);
                reader.read_to_end(&mut bytes)?;
                crc.update(&bytes);
                sent = bytes.len() as u64;
                check(&local.display().to_string(), file, sent, crc.finalize())?;
                self.store
                    .put(&object, PutPayload::from(bytes))
                    .await
                    .map_err(|e| bad(&self.uri_of(key), e))?;
                continue;
            }
            let upload = self
                .store
                .put_multipart(&object)
                .await
                .map_err(|e| bad(&self.uri_of(key), e))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buffer = vec![0u8; PART_BYTES];
            loop {
                let n = reader.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                crc.update(&buffer[..n]);
                sent += n as u64;
                parts
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| bad(&self.uri_of(key), e))?;
                parts.write(&buffer[..n]);
            }
            if let Err(e) = check(&local.display().to_string(), file, sent, crc.finalize()) {
                let _ = parts.abort().await;
                return Err(e);
            }
            parts
                .finish()
                .await
                .map_err(|e| bad(&self.uri_of(key), e))?;
        }
        Ok(())
    }

    /// Whether the object `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.object(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(bad(&self.uri_of(key), e)),
        }
    }

    /// Every object below `prefix`: its key below this location and when it
    /// was last written (seconds since the Unix epoch).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, i64)>> {
        let base = self.object("");
        let mut listed = self.store.list(Some(&self.object(prefix)));
        let mut objects = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| bad(&self.uri_of(prefix), e))?;
            let full = meta.location.as_ref();
            let key = full
                .strip_prefix(base.as_ref())
                .unwrap_or(full)
                .trim_start_matches('/')
                .to_string();
            objects.push((key, meta.last_modified.timestamp()));
        }
        Ok(objects)
    }

    /// Deletes the object `key` (nothing to do when it is gone already).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.object(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(bad(&self.uri_of(key), e)),
        }
    }

    /// Downloads `<key>/<name>` of every file into `dest` (created), each
    /// checked against its size and CRC32 and fsynced; a mismatch is
    /// refused as corruption naming the object.
    pub async fn download(&self, key: &str, files: &[CheckedFile], dest: &Path) -> Result<()> {
        // The names come from a peer or a record: each must be one plain
        // file name, checked before anything is created.
        plain_names(&self.uri_of(key), files)?;
        fs::create_dir_all(dest)?;
        for file in files {
            let object = self.object(&format!("{key}/{}", file.name));
            let uri = self.uri_of(&format!("{key}/{}", file.name));
            let got = self.store.get(&object).await.map_err(|e| bad(&uri, e))?;
            let mut stream = got.into_stream();
            let local = dest.join(&file.name);
            let mut out = std::io::BufWriter::new(fs::File::create(&local)?);
            let mut crc = crc32fast::Hasher::new();
            let mut received = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| bad(&uri, e))?;
                crc.update(&chunk);
                received += chunk.len() as u64;
                out.write_all(&chunk)?;
            }
            check(&uri, file, received, crc.finalize())?;
            out.into_inner()
                .map_err(|e| StoreError::Io(e.into_error()))?
                .sync_all()?;
        }
        crate::checksummed::sync_dir(dest)
    }
}

fn check(what: &str, file: &CheckedFile, bytes: u64, crc32: u32) -> Result<()> {
    if bytes != file.bytes || crc32 != file.crc32 {
        return Err(StoreError::corrupted(
            what,
            0,
            format!(
                "{bytes} bytes with CRC32 {crc32:08x}, expected {} bytes with CRC32 {:08x}",
                file.bytes, file.crc32
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn checked(dir: &Path, name: &str, content: &[u8]) -> CheckedFile {
        std::fs::write(dir.join(name), content).unwrap();
        CheckedFile {
            name: name.into(),
            bytes: content.len() as u64,
            crc32: crc32fast::hash(content),
        }
    }

    /// A name holding a separator or `..` writes nothing anywhere: the
    /// whole tree is the same before and after.
    #[tokio::test]
    async fn names_that_are_not_plain_write_nothing() {
        let root = tempfile::tempdir().unwrap();
        let remote = root.path().join("remote");
        std::fs::create_dir_all(remote.join("seg/1")).unwrap();
        std::fs::write(remote.join("seg/1/ok.bin"), b"x").unwrap();
        let location =
            ObjectLocation::parse(remote.to_str().unwrap(), &StorageConfig::default()).unwrap();
        let tree = |dir: &Path| -> Vec<PathBuf> {
            let mut all: Vec<PathBuf> = walk(dir);
            all.sort();
            all
        };
        let before = tree(root.path());
        for name in ["../escape.bin", "a/b.bin", "..", "/abs.bin", ""] {
            let files = vec![
                CheckedFile {
                    name: "ok.bin".into(),
                    bytes: 1,
                    crc32: crc32fast::hash(b"x"),
                },
                CheckedFile {
                    name: name.into(),
                    bytes: 1,
                    crc32: crc32fast::hash(b"x"),
                },
            ];
            let dest = root.path().join("dest/inner");
            let err = location.download("seg/1", &files, &dest).await.unwrap_err();
            assert!(matches!(err, StoreError::Refused(_)), "{name}: {err}");
            let err = location
                .upload("seg/2", &remote.join("seg/1"), &files)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Refused(_)), "{name}: {err}");
        }
        assert_eq!(tree(root.path()), before);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
        out
    }

    #[tokio::test]
    async fn files_round_trip_and_damage_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (local, remote) = (root.path().join("local"), root.path().join("remote"));
        std::fs::create_dir_all(&local).unwrap();
        std::fs::create_dir_all(&remote).unwrap();
        let files = vec![
            checked(&local, "a.bin", b"hello"),
            checked(&local, "b.bin", &vec![7u8; 100_000]),
        ];
        let location =
            ObjectLocation::parse(remote.to_str().unwrap(), &StorageConfig::default()).unwrap();
        location.upload("seg/1", &local, &files).await.unwrap();
        assert!(remote.join("seg/1/b.bin").exists());
        let back = root.path().join("back");
        location.download("seg/1", &files, &back).await.unwrap();
        assert_eq!(
            std::fs::read(back.join("b.bin")).unwrap(),
            vec![7u8; 100_000]
        );

        // A byte flipped in storage: refused, naming the object.
        let mut bytes = std::fs::read(remote.join("seg/1/a.bin")).unwrap();
        bytes[0] ^= 1;
        std::fs::write(remote.join("seg/1/a.bin"), bytes).unwrap();
        let err = location
            .download("seg/1", &files, &root.path().join("again"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("a.bin"), "{err}");
        // A local file that no longer matches its checksum is not uploaded.
        std::fs::write(local.join("a.bin"), b"HELLO").unwrap();
        assert!(location.upload("seg/2", &local, &files).await.is_err());
        assert!(!remote.join("seg/2/a.bin").exists());
        // Unknown schemes and missing buckets are refused.
        assert!(ObjectLocation::parse("ftp://x/y", &StorageConfig::default()).is_err());
        assert!(ObjectLocation::parse("s3:///y", &StorageConfig::default()).is_err());
        assert!(ObjectLocation::parse(&"x".repeat(300), &StorageConfig::default()).is_err());
    }
}
