//! Per-shard storage: what each item is (label, weight, source), the label
//! vocabulary, the write-ahead log that makes writes durable, and files
//! that carry a checksum so corruption is detected rather than served.

pub mod checksummed;
pub mod error;
pub mod item_table;
pub mod vocabulary;
pub mod wal;

pub use error::{Result, StoreError};
pub use item_table::{ItemRecord, ItemTable, StoredItem, read_items, write_items};
pub use vocabulary::Vocabulary;
pub use wal::{Wal, WalOp, WalRecord};
