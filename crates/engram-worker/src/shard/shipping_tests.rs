//! Segment shipping (`shipping.rs`) on real shard files: a copy rebuilt
//! from a snapshot's files, its delete bitmaps and growing rows holds what
//! its source held, and a damaged file is refused.

use super::tests::{contents, open_l2_4d as open, rows, small_params, upsert};
use super::*;
use engram_core::merge_policy::CompactOptions;
use engram_index::ArrivedFiles;

/// Copies `snapshot`'s segment files as a receiver stages them (with the
/// delete bitmap beside), returning the staged directories in order.
fn stage(snapshot: &ShippingSnapshot, root: &Path) -> Vec<(PathBuf, ArrivedFiles)> {
    snapshot
        .segments
        .iter()
        .map(|segment| {
            let dir = root.join(&segment.key);
            fs::create_dir_all(&dir).unwrap();
            for (file, size) in &segment.files {
                fs::copy(segment.dir.join(file), dir.join(file)).unwrap();
                assert_eq!(fs::metadata(dir.join(file)).unwrap().len(), *size);
            }
            SealedSegment::write_delete_bitmap(&dir, &segment.deleted).unwrap();
            (dir, ArrivedFiles::new())
        })
        .collect()
}

/// What a stream records for every file of `dir` as it now stands: its
/// size and the CRC32 of its bytes.
fn arrived(dir: &Path) -> ArrivedFiles {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            (
                name,
                engram_index::disk::manifest::file_crc32(&path).unwrap(),
            )
        })
        .collect()
}

/// A source with two sealed segments, rows replaced and deleted in both
/// and a growing tail.
fn source(dir: &Path, params: &IndexParams) -> Shard {
    let data = rows(130, 4);
    let shard = open(dir, params);
    for id in 0..110u64 {
        shard
            .write(vec![upsert(id, "a", &data[id as usize])])
            .unwrap();
    }
    assert_eq!(shard.sealed_segments(), 2);
    // Deletes and replacements after the seals live only in memory and
    // the WAL: the snapshot carries them in its bitmaps.
    shard.delete_ids(&[3, 7, 60, 61]).unwrap();
    shard
        .write(vec![
            upsert(5, "b", &data[120]),
            upsert(70, "b", &data[121]),
        ])
        .unwrap();
    shard
}

#[test]
fn a_copy_rebuilt_from_shipped_segments_holds_what_its_source_holds() {
    let dir = tempfile::tempdir().unwrap();
    let params = small_params(50);
    let shard = source(&dir.path().join("source"), &params);
    let snapshot = shard.snapshot_for_shipping(1).unwrap();
    assert_eq!(snapshot.segments.len(), 2);
    assert_eq!(snapshot.position, shard.position());
    assert!(snapshot.file_bytes() > 0);
    // A merge after the snapshot removes the segments' directories; the
    // snapshot's links still read.
    shard.compact(CompactOptions::maintenance(0.0)).unwrap();
    let staged = stage(&snapshot, &dir.path().join("staged"));

    // The first segment's files as a stream records them (not read again
    // at the attach), the second's without records (read and verified).
    let mut staged = staged;
    staged[0].1 = arrived(&staged[0].0);
    let copy = open(&dir.path().join("copy"), &params);
    let rows_attached = copy.attach_shipped(&staged).unwrap();
    assert_eq!(copy.position(), None, "unknown until the transfer ends");
    copy.write_at(snapshot.growing.clone(), Stamp::Unordered)
        .unwrap();
    copy.set_position(snapshot.position.unwrap()).unwrap();
    assert_eq!(contents(&copy), contents(&shard));
    // 100 sealed rows less 4 deleted and 2 replaced by growing rows (5, 70).
    assert_eq!(rows_attached, 94);
    assert_eq!(rows_attached + snapshot.growing.len(), copy.len());
    assert_eq!(copy.sealed_segments(), 2);
    // And so it stays once reopened.
    let expected = contents(&copy);
    let position = copy.position();
    drop(copy);
    let copy = open(&dir.path().join("copy"), &params);
    assert_eq!(contents(&copy), expected);
    assert_eq!(copy.position(), position);
    // Dropping the snapshot removes its links.
    let linked = snapshot.segments[0].dir.clone();
    drop(snapshot);
    assert!(!linked.exists());
}

#[test]
fn a_damaged_shipped_file_is_refused_and_the_copy_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let params = small_params(50);
    let shard = source(&dir.path().join("source"), &params);
    let snapshot = shard.snapshot_for_shipping(1).unwrap();
    let staged = stage(&snapshot, &dir.path().join("staged"));
    // One bit flipped in the second segment's graph file.
    let mut staged = staged;
    let graph = staged[1].0.join("index_disk.index");
    let mut bytes = fs::read(&graph).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&graph, bytes).unwrap();
    // Damaged on the way: the CRC32 taken on arrival is of the damaged
    // bytes, which the segment's manifest does not record.
    for (dir, files) in &mut staged {
        *files = arrived(dir);
    }

    let copy = open(&dir.path().join("copy"), &params);
    let refused = copy.attach_shipped(&staged);
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(copy.len(), 0);
    assert_eq!(copy.sealed_segments(), 0);
    drop(copy);
    let copy = open(&dir.path().join("copy"), &params);
    assert_eq!(copy.len(), 0);
    assert_eq!(copy.sealed_segments(), 0);
}

#[test]
fn shipped_segments_go_to_an_empty_copy_only() {
    let dir = tempfile::tempdir().unwrap();
    let params = small_params(50);
    let shard = source(&dir.path().join("source"), &params);
    let snapshot = shard.snapshot_for_shipping(1).unwrap();
    let staged = stage(&snapshot, &dir.path().join("staged"));
    let copy = open(&dir.path().join("copy"), &params);
    copy.write(vec![upsert(1_000, "x", &rows(1, 4)[0])])
        .unwrap();
    assert!(matches!(
        copy.attach_shipped(&staged),
        Err(WorkerError::Invalid(_))
    ));
}
