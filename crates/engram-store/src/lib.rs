//! Per-shard storage: what each item is (label, weight, source), the label
//! vocabulary, the write-ahead log that makes writes durable, and files
//! that carry a checksum so corruption is detected rather than served.

pub mod checksummed;
pub mod confine;
pub mod confined_store;
pub mod error;
pub mod fault;
pub mod item_table;
pub mod object_location;
pub mod spill;
pub mod thumbnail_file;
pub mod vocabulary;
pub mod wal;

pub use confine::StorageAccess;
pub use confined_store::ConfinedLocalStore;
pub use error::{Result, StoreError};
pub use item_table::{
    ItemRecord, ItemTable, SEGMENT_ITEMS_FILE, StoredItem, read_items, write_items,
    write_row_tables,
};
pub use object_location::{CheckedFile, ObjectLocation};
pub use spill::{SpillWriter, read_spill};
pub use thumbnail_file::{THUMBNAILS_FILE, ThumbnailFile, write_thumbnails};
pub use vocabulary::Vocabulary;
pub use wal::{LoggedRecord, Wal, WalOp, WalRecord, WritePosition};
