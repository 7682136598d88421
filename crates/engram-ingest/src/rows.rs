//! Reading rows out of a Parquet file on object storage, one row group at a
//! time and in bounded batches, with the column names a job configures.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::Arc;

use crate::error::{IngestError, Result};
use crate::source::SourceFile;

/// Column names of a job's Parquet files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// uint64 (or a non-negative signed integer); when the column is absent,
    /// ids are derived from the file path and row number.
    pub id: String,
    pub label: String,
    /// FixedSizeList<float32> or List<float32>.
    pub embedding: String,
    /// Encoded PNG or JPEG bytes.
    pub image: String,
    /// A path of an image object in the same store.
    pub image_uri: String,
    pub source: String,
    pub weight: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            id: "id".into(),
            label: "label".into(),
            embedding: "embedding".into(),
            image: "image".into(),
            image_uri: "image_uri".into(),
            source: "source".into(),
            weight: "weight".into(),
        }
    }
}

/// What a row carries to be turned into a vector.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Embedding(Vec<f32>),
    Image(Vec<u8>),
    ImageUri(String),
}

/// One row as read, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// Row number within the file.
    pub row: u64,
    pub id: Option<u64>,
    pub label: Option<String>,
    pub payload: Option<Payload>,
    pub source: Option<String>,
    pub weight: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    Embedding,
    Image,
    ImageUri,
}

/// Ranged reads of one object, for the Parquet reader.
#[derive(Clone)]
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(external)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let size = self.size;
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// An open Parquet file: its footer read once, row groups read on demand.
pub struct ParquetFile {
    reader: StoreReader,
    metadata: ArrowReaderMetadata,
    path: String,
    /// Root column indices of id, label, payload, source, weight.
    id: Option<usize>,
    label: usize,
    payload: (usize, PayloadKind),
    source: Option<usize>,
    weight: Option<usize>,
}

fn bad(path: &str, reason: impl Into<String>) -> IngestError {
    IngestError::Parquet {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Runs a step of the Parquet reader, turning a panic into an error that
/// names the file: the parquet crate asserts on some malformed inputs (the
/// `parquet_rows` fuzz target found a dictionary-encoded page without a
/// dictionary), and a bad file must be refused, not end the job.
async fn decoding<T>(path: &str, step: impl std::future::Future<Output = T>) -> Result<T> {
    std::panic::AssertUnwindSafe(step)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            bad(
                path,
                format!("the Parquet reader failed on malformed data: {message}"),
            )
        })
}

/// Every column chunk the footer lists lies inside the file. The parquet
/// crate asserts this when it reads a row group (a panic on a malformed
/// footer, found by the `parquet_rows` fuzz target); checked here, such a
/// file is refused with the reason instead.
fn check_chunk_ranges(
    metadata: &ArrowReaderMetadata,
    file_size: u64,
) -> std::result::Result<(), String> {
    for (g, group) in metadata.metadata().row_groups().iter().enumerate() {
        for (c, column) in group.columns().iter().enumerate() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let len = column.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l))
                .is_some_and(|end| end <= file_size);
            if !inside {
                return Err(format!(
                    "row group {g} column {c}: chunk at offset {start} of {len} bytes lies outside the file of {file_size} bytes"
                ));
            }
        }
    }
    Ok(())
}

impl ParquetFile {
    /// Reads the footer and finds the columns; a file without a label
    /// column or without any of embedding, image and image_uri is refused.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        file: &SourceFile,
        columns: &Columns,
    ) -> Result<ParquetFile> {
        let path = file.path.to_string();
        let mut reader = StoreReader {
            store,
            path: file.path.clone(),
            size: file.size,
        };
        let metadata = decoding(
            &path,
            ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()),
        )
        .await?
        .map_err(|e| bad(&path, e.to_string()))?;
        check_chunk_ranges(&metadata, file.size).map_err(|reason| bad(&path, reason))?;
        let schema = metadata.schema().clone();
        let find = |name: &str| schema.index_of(name).ok();
        let label = find(&columns.label)
            .ok_or_else(|| bad(&path, format!("no label column `{}`", columns.label)))?;
        let payload = if let Some(i) = find(&columns.embedding) {
            (i, PayloadKind::Embedding)
        } else if let Some(i) = find(&columns.image) {
            (i, PayloadKind::Image)
        } else if let Some(i) = find(&columns.image_uri) {
            (i, PayloadKind::ImageUri)
        } else {
            return Err(bad(
                &path,
                format!(
                    "none of the columns `{}`, `{}`, `{}`",
                    columns.embedding, columns.image, columns.image_uri
                ),
            ));
        };
        Ok(ParquetFile {
            reader,
            metadata,
            path,
            id: find(&columns.id),
            label,
            payload,
            source: find(&columns.source),
            weight: find(&columns.weight),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn row_groups(&self) -> usize {
        self.metadata.metadata().num_row_groups()
    }

    pub fn rows(&self) -> u64 {
        self.metadata.metadata().file_metadata().num_rows().max(0) as u64
    }

    /// Row number of the first row of row group `group`.
    fn first_row(&self, group: usize) -> u64 {
        self.metadata.metadata().row_groups()[..group]
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .sum()
    }

    pub fn row_group_rows(&self, group: usize) -> u64 {
        self.metadata.metadata().row_group(group).num_rows().max(0) as u64
    }

    /// Reads row group `group` in batches of at most `batch_rows` rows and
    /// hands each to `f`; memory is bounded by two batches.
    pub async fn read_row_group<F, Fut, E>(
        &self,
        group: usize,
        batch_rows: usize,
        mut f: F,
    ) -> std::result::Result<(), E>
    where
        F: FnMut(Vec<RawRow>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
        E: From<IngestError>,
    {
        let mut wanted = vec![self.label, self.payload.0];
        wanted.extend(self.id);
        wanted.extend(self.source);
        wanted.extend(self.weight);
        let mask = ProjectionMask::roots(
            self.metadata.metadata().file_metadata().schema_descr(),
            wanted,
        );
        let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.reader.clone(),
            self.metadata.clone(),
        )
        .with_row_groups(vec![group])
        .with_projection(mask)
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| bad(&self.path, e.to_string()))?;
        let mut next_row = self.first_row(group);
        // The next batch is read and decoded while `f` works on the current
        // one (two batches in memory at most); `f` runs on one batch at a time.
        let mut in_flight: Option<std::pin::Pin<Box<Fut>>> = None;
        loop {
            let batch = match in_flight.take() {
                Some(work) => {
                    let (batch, done) =
                        futures::future::join(decoding(&self.path, stream.next()), work).await;
                    done?;
                    batch?
                }
                None => decoding(&self.path, stream.next()).await?,
            };
            let Some(batch) = batch else { break };
            let batch = batch.map_err(|e| bad(&self.path, e.to_string()))?;
            let rows = self.rows_of(&batch, next_row)?;
            next_row += batch.num_rows() as u64;
            in_flight = Some(Box::pin(f(rows)));
        }
        Ok(())
    }

    fn column<'a>(&self, batch: &'a RecordBatch, index: usize) -> Result<&'a ArrayRef> {
        let name = self.metadata.schema().field(index).name();
        batch
            .column_by_name(name)
            .ok_or_else(|| bad(&self.path, format!("column `{name}` missing from a batch")))
    }

    fn rows_of(&self, batch: &RecordBatch, first_row: u64) -> Result<Vec<RawRow>> {
        let n = batch.num_rows();
        let ids = match self.id {
            Some(i) => ids(self.column(batch, i)?).map_err(|r| bad(&self.path, r))?,
            None => vec![None; n],
        };
        let labels = strings(self.column(batch, self.label)?).map_err(|r| bad(&self.path, r))?;
        let sources = match self.source {
            Some(i) => strings(self.column(batch, i)?).map_err(|r| bad(&self.path, r))?,
            None => vec![None; n],
        };
        let weights = match self.weight {
            Some(i) => floats(self.column(batch, i)?).map_err(|r| bad(&self.path, r))?,
            None => vec![None; n],
        };
        let payload_column = self.column(batch, self.payload.0)?;
        let payloads: Vec<Option<Payload>> = match self.payload.1 {
            PayloadKind::Embedding => embeddings(payload_column)
                .map_err(|r| bad(&self.path, r))?
                .into_iter()
                .map(|v| v.map(Payload::Embedding))
                .collect(),
            PayloadKind::Image => binaries(payload_column)
                .map_err(|r| bad(&self.path, r))?
                .into_iter()
                .map(|v| v.map(Payload::Image))
                .collect(),
            PayloadKind::ImageUri => strings(payload_column)
                .map_err(|r| bad(&self.path, r))?
                .into_iter()
                .map(|v| v.map(Payload::ImageUri))
                .collect(),
        };
        Ok((0..n)
            .map(|i| RawRow {
                row: first_row + i as u64,
                id: ids[i],
                label: labels[i].clone(),
                payload: payloads[i].clone(),
                source: sources[i].clone(),
                weight: weights[i],
            })
            .collect())
    }
}

type Column<T> = std::result::Result<Vec<Option<T>>, String>;

fn each<T>(array: &dyn Array, value: impl Fn(usize) -> T) -> Vec<Option<T>> {
    (0..array.len())
        .map(|i| (!array.is_null(i)).then(|| value(i)))
        .collect()
}

fn ids(array: &ArrayRef) -> Column<u64> {
    if let Some(a) = array.as_primitive_opt::<UInt64Type>() {
        return Ok(each(a, |i| a.value(i)));
    }
    if let Some(a) = array.as_primitive_opt::<UInt32Type>() {
        return Ok(each(a, |i| u64::from(a.value(i))));
    }
    // Signed ids: a negative one is a bad row, reported as a missing id.
    if let Some(a) = array.as_primitive_opt::<Int64Type>() {
        return Ok((0..a.len())
            .map(|i| {
                (!a.is_null(i))
                    .then(|| a.value(i))
                    .and_then(|v| u64::try_from(v).ok())
            })
            .collect());
    }
    if let Some(a) = array.as_primitive_opt::<Int32Type>() {
        return Ok((0..a.len())
            .map(|i| {
                (!a.is_null(i))
                    .then(|| a.value(i))
                    .and_then(|v| u64::try_from(v).ok())
            })
            .collect());
    }
    Err(format!(
        "id column has type {}, not an integer",
        array.data_type()
    ))
}

fn strings(array: &ArrayRef) -> Column<String> {
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            Ok(each(a, |i| a.value(i).to_string()))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Ok(each(a, |i| a.value(i).to_string()))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            Ok(each(a, |i| a.value(i).to_string()))
        }
        other => Err(format!("expected a string column, found {other}")),
    }
}

fn binaries(array: &ArrayRef) -> Column<Vec<u8>> {
    match array.data_type() {
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            Ok(each(a, |i| a.value(i).to_vec()))
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            Ok(each(a, |i| a.value(i).to_vec()))
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            Ok(each(a, |i| a.value(i).to_vec()))
        }
        other => Err(format!("expected a binary column of images, found {other}")),
    }
}

fn floats(array: &ArrayRef) -> Column<f32> {
    if let Some(a) = array.as_primitive_opt::<Float32Type>() {
        return Ok(each(a, |i| a.value(i)));
    }
    if let Some(a) = array.as_primitive_opt::<Float64Type>() {
        return Ok(each(a, |i| a.value(i) as f32));
    }
    Err(format!(
        "weight column has type {}, not a float",
        array.data_type()
    ))
}

fn float_values(values: &ArrayRef) -> std::result::Result<&arrow_array::Float32Array, String> {
    values
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| format!("embedding values are {}, not float32", values.data_type()))
}

/// Rows of a List<float32> (32- or 64-bit offsets).
fn list_rows<O: arrow_array::OffsetSizeTrait>(
    a: &arrow_array::GenericListArray<O>,
) -> Column<Vec<f32>> {
    let values = float_values(a.values())?;
    let offsets = a.value_offsets();
    Ok(each(a, |i| {
        values.values()[offsets[i].as_usize()..offsets[i + 1].as_usize()].to_vec()
    }))
}

fn embeddings(array: &ArrayRef) -> Column<Vec<f32>> {
    if let Some(a) = array.as_fixed_size_list_opt() {
        let values = float_values(a.values())?;
        let len = a.value_length() as usize;
        return Ok(each(a, |i| {
            let start = a.value_offset_at(i);
            values.values()[start..start + len].to_vec()
        }));
    }
    if let Some(a) = array.as_list_opt::<i32>() {
        return list_rows(a);
    }
    if let Some(a) = array.as_list_opt::<i64>() {
        return list_rows(a);
    }
    Err(format!(
        "embedding column has type {}, not FixedSizeList<float32> or List<float32>",
        array.data_type()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    /// `bytes` as `bad.parquet` in an in-memory object store.
    async fn stored(bytes: &'static [u8]) -> (Arc<dyn ObjectStore>, SourceFile) {
        let store = Arc::new(InMemory::new());
        let path = Path::from("bad.parquet");
        store
            .put(&path, PutPayload::from(bytes::Bytes::from_static(bytes)))
            .await
            .unwrap();
        let size = bytes.len() as u64;
        (store, SourceFile { path, size })
    }

    /// A footer whose column chunk has a negative offset (found by the
    /// `parquet_rows` fuzz target): refused at open with the reason; it
    /// used to reach an assertion inside the parquet crate.
    #[tokio::test]
    async fn a_column_chunk_outside_the_file_is_refused_not_a_panic() {
        let bytes: &[u8] =
            include_bytes!("../../../fuzz/seeds/parquet_rows/negative-chunk-offset.parquet");
        let (store, file) = stored(bytes).await;
        let error = ParquetFile::open(store, &file, &Columns::default())
            .await
            .err()
            .expect("refused");
        assert!(error.to_string().contains("outside the file"), "{error}");
    }

    /// A dictionary-encoded page without its dictionary (found by the
    /// fuzz target): the parquet crate panics while decoding; the file is
    /// refused with an error naming it.
    #[tokio::test]
    async fn a_panic_of_the_parquet_decoder_refuses_the_file() {
        let bytes: &[u8] = include_bytes!(
            "../../../fuzz/seeds/parquet_rows/dictionary-page-without-dictionary.parquet"
        );
        let (store, file) = stored(bytes).await;
        let parquet = ParquetFile::open(store, &file, &Columns::default())
            .await
            .expect("the footer is fine");
        let mut errors = Vec::new();
        for group in 0..parquet.row_groups() {
            if let Err(e) = parquet
                .read_row_group(group, 64, |_| async { Ok::<(), IngestError>(()) })
                .await
            {
                errors.push(e.to_string());
            }
        }
        assert!(
            errors
                .iter()
                .any(|e| e.contains("bad.parquet") && e.contains("malformed")),
            "{errors:?}"
        );
    }
}
