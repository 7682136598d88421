//! The Raft log journal on arbitrary bytes: as found on disk, and cut into
//! well-framed records (length, crc32, payload) so that decoding the log
//! entries behind the checksums is reached. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("raft-log.journal");
    let _ = engram_meta::log_store::decode_journal(path, data);
    // Each record: one length byte, then that many payload bytes.
    let mut framed = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let take = (len as usize).min(tail.len());
        let (payload, after) = tail.split_at(take);
        framed.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        framed.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        framed.extend_from_slice(payload);
        rest = after;
    }
    let _ = engram_meta::log_store::decode_journal(path, &framed);
});
