//! What workers do with sealed segments in object storage, against a real
//! S3-compatible server (moto on loopback): upload a segment's files with
//! the manifest last, find it by its manifest, list what a shard's prefix
//! holds, download it checked file by file (a damaged object is refused),
//! and delete it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{BUCKET, S3};
use engram_store::{CheckedFile, ObjectLocation};

fn location(s3: &S3) -> ObjectLocation {
    ObjectLocation::parse(&format!("s3://{BUCKET}/segments"), &s3.storage()).unwrap()
}

fn checked(dir: &std::path::Path, name: &str, bytes: &[u8]) -> CheckedFile {
    std::fs::write(dir.join(name), bytes).unwrap();
    CheckedFile {
        name: name.into(),
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(bytes),
    }
}

#[test]
fn a_segment_goes_up_is_found_listed_downloaded_checked_and_deleted() {
    let s3 = S3::start();
    let store = location(&s3);
    let dir = tempfile::tempdir().unwrap();
    let graph: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let files = vec![
        checked(dir.path(), "index_disk.index", &graph),
        checked(dir.path(), "manifest.json", b"{\"rows\":1}\n0\n"),
    ];
    let key = "shards/c/0000/00000001-abcdef01";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        assert!(!store.exists(&format!("{key}/manifest.json")).await.unwrap());
        store.upload(key, dir.path(), &files).await.unwrap();
        assert!(store.exists(&format!("{key}/manifest.json")).await.unwrap());

        let mut listed = store.list("shards/c/0000").await.unwrap();
        listed.sort();
        let names: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "shards/c/0000/00000001-abcdef01/index_disk.index",
                "shards/c/0000/00000001-abcdef01/manifest.json"
            ]
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            listed.iter().all(|(_, at)| (now - at).abs() < 300),
            "{listed:?}"
        );

        let copy = tempfile::tempdir().unwrap();
        store
            .download(key, &files, &copy.path().join("staged"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(copy.path().join("staged/index_disk.index")).unwrap(),
            graph
        );
    });

    // One byte changed in storage: the download is refused, nothing staged
    // passes for the segment.
    let mut damaged = graph.clone();
    damaged[1234] ^= 1;
    runtime.block_on(async {
        use object_store::ObjectStoreExt;
        store
            .store
            .put(
                &store.object(&format!("{key}/index_disk.index")),
                object_store::PutPayload::from(damaged),
            )
            .await
            .unwrap();
        let copy = tempfile::tempdir().unwrap();
        let refused = store
            .download(key, &files, &copy.path().join("staged"))
            .await;
        assert!(
            matches!(refused, Err(engram_store::StoreError::Corrupted { .. })),
            "{refused:?}"
        );

        for (object, _) in store.list("shards/c/0000").await.unwrap() {
            store.delete(&object).await.unwrap();
        }
        // Deleting what is gone already is no error.
        store.delete(&format!("{key}/manifest.json")).await.unwrap();
        assert!(store.list("shards/c/0000").await.unwrap().is_empty());
        assert!(!store.exists(&format!("{key}/manifest.json")).await.unwrap());
    });
}
