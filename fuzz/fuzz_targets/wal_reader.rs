//! The WAL reader on arbitrary bytes: never a panic, only records or an
//! error. The bytes are read twice: as a whole file (framing, torn tails,
//! checksums) and as one record's payload, which the checksums would
//! otherwise keep the fuzzer from reaching (the record decoder).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok((records, valid)) = engram_store::wal::replay(Path::new("fuzz.wal"), data) {
        assert!(valid as usize <= data.len());
        let _ = records.len();
    }
    let _ = engram_store::wal::decode(data);
    let _ = engram_store::wal::decode_positioned(data);
});
