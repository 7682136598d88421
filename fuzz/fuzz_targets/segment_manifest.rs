//! A sealed segment's manifest on arbitrary bytes: as found on disk, and
//! as a body with a correct checksum line (so the JSON and format checks
//! behind the checksum are reached). Never a panic.
#![no_main]

use engram_index::disk::manifest::SegmentManifest;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("manifest.json");
    let _ = SegmentManifest::parse_verified(path, data.to_vec());
    let body: Vec<u8> = data.iter().copied().filter(|b| *b != b'\n').collect();
    let mut checked = body.clone();
    checked.extend_from_slice(format!("\n{:08x}\n", crc32fast::hash(&body)).as_bytes());
    let _ = SegmentManifest::parse_verified(path, checked);
});
