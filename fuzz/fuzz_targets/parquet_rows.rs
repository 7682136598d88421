//! Parquet input as ingestion reads it, on arbitrary bytes: the footer,
//! the column lookup, every row group decoded into rows, and the rows
//! validated into items (vectors of dimension 4, no embedder). Never a
//! panic escapes: a bad file is an error, a bad row a reject.
#![no_main]

use engram_core::Metric;
use engram_ingest::items::{Target, prepare_rows};
use engram_ingest::rows::{Columns, ParquetFile};
use engram_ingest::source::SourceFile;
use libfuzzer_sys::fuzz_target;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    // Ingestion catches panics of the parquet crate and refuses the file
    // (`engram_ingest::rows`); libFuzzer's hook would abort on them even
    // when caught. Panics that escape still abort: the harness catches them.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(InMemory::new());
        let path = object_store::path::Path::from("fuzz.parquet");
        store
            .put(&path, PutPayload::from(bytes::Bytes::copy_from_slice(data)))
            .await
            .expect("in-memory put");
        let store: Arc<dyn ObjectStore> = store;
        let file = SourceFile {
            path,
            size: data.len() as u64,
        };
        let Ok(parquet) = ParquetFile::open(store, &file, &Columns::default()).await else {
            return;
        };
        let target = Target {
            dim: 4,
            metric: Metric::L2,
            embedder: None,
            max_label: 256,
            max_source: 4096,
        };
        for group in 0..parquet.row_groups() {
            let read = parquet
                .read_row_group(group, 64, |rows| {
                    let _ = prepare_rows("fuzz.parquet", rows, &target);
                    async { Ok::<(), engram_ingest::IngestError>(()) }
                })
                .await;
            if read.is_err() {
                return;
            }
        }
    });
});
