//! Turning rows into items a collection stores, and bad rows into rejects
//! with their reason. Images are decoded and preprocessed on all cores and
//! embedded in batches.

use arrow_array::{Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use engram_core::Metric;
use engram_core::vector::prepare;

use crate::embedder::OnnxEmbedder;
use crate::error::{IngestError, Result};
use crate::rows::{Payload, RawRow};

/// A row ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: u64,
    pub label: String,
    pub weight: f32,
    pub source: Option<String>,
    pub vector: Vec<f32>,
    /// The JPEG thumbnail of a row that came as an image
    /// ([`Target::thumbnail_px`] > 0).
    pub thumbnail: Option<Arc<[u8]>>,
}

impl Item {
    /// The write that stores this item.
    pub fn to_upsert(&self) -> engram_store::WalOp {
        engram_store::WalOp::Upsert {
            id: self.id,
            label: self.label.as_str().into(),
            weight: self.weight,
            source: self.source.as_deref().map(Into::into),
            vector: self.vector.clone(),
            thumbnail: self.thumbnail.clone(),
        }
    }
}

/// A row's JPEG thumbnail, when it came as an image.
type Thumbnail = Option<Arc<[u8]>>;

/// A row that could not be ingested, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub file: String,
    pub row: u64,
    pub id: Option<u64>,
    pub reason: String,
}

/// The id of a row that has none: stable across runs (so a resumed job
/// rewrites the same ids), from the file path and row number.
pub fn derived_id(file: &str, row: u64) -> u64 {
    let digest = Sha256::digest(format!("{file}#{row}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What the collection expects of each item.
pub struct Target<'a> {
    pub dim: usize,
    pub metric: Metric,
    pub embedder: Option<&'a OnnxEmbedder>,
    /// Longest label and source, in bytes.
    pub max_label: usize,
    pub max_source: usize,
    /// Longer side of the thumbnail kept for each image row; 0 keeps none.
    pub thumbnail_px: u32,
}

/// Validates `rows` of `file` (image URIs already fetched into images) and
/// embeds their images; returns the items and the rejects.
pub fn prepare_rows(
    file: &str,
    rows: Vec<RawRow>,
    target: &Target,
) -> Result<(Vec<Item>, Vec<Reject>)> {
    let mut rejects = Vec::new();
    let mut pending: Vec<(RawRow, u64, String)> = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.id.unwrap_or_else(|| derived_id(file, row.row));
        let reject = |reason: String| Reject {
            file: file.to_string(),
            row: row.row,
            id: Some(id),
            reason,
        };
        let label = match &row.label {
            Some(l) if !l.trim().is_empty() && l.len() <= target.max_label => l.clone(),
            Some(l) if l.len() > target.max_label => {
                rejects.push(reject(format!(
                    "label longer than {} bytes",
                    target.max_label
                )));
                continue;
            }
            _ => {
                rejects.push(reject("missing label".into()));
                continue;
            }
        };
        if row
            .source
            .as_ref()
            .is_some_and(|s| s.len() > target.max_source)
        {
            rejects.push(reject(format!(
                "source longer than {} bytes",
                target.max_source
            )));
            continue;
        }
        if let Some(w) = row.weight
            && !(w.is_finite() && w >= 0.0)
        {
            rejects.push(reject(format!("weight {w} is not a finite number >= 0")));
            continue;
        }
        if row.payload.is_none() {
            rejects.push(reject("no embedding or image".into()));
            continue;
        }
        pending.push((row, id, label));
    }

    let mut items = Vec::with_capacity(pending.len());
    let mut images: Vec<(RawRow, u64, String)> = Vec::new();
    for (row, id, label) in pending {
        match &row.payload {
            Some(Payload::Embedding(v)) => match prepare(target.metric, v.clone(), target.dim) {
                Ok(vector) => items.push(Item {
                    id,
                    label,
                    weight: row.weight.unwrap_or(1.0),
                    source: row.source.clone(),
                    vector,
                    thumbnail: None,
                }),
                Err(e) => rejects.push(Reject {
                    file: file.to_string(),
                    row: row.row,
                    id: Some(id),
                    reason: format!("bad embedding: {e}"),
                }),
            },
            Some(Payload::Image(_)) => images.push((row, id, label)),
            Some(Payload::ImageUri(uri)) => rejects.push(Reject {
                file: file.to_string(),
                row: row.row,
                id: Some(id),
                reason: format!("image_uri {uri} was not fetched"),
            }),
            None => unreachable!("rows without a payload were rejected above"),
        }
    }
    if images.is_empty() {
        return Ok((items, rejects));
    }
    let Some(embedder) = target.embedder else {
        for (row, id, _) in images {
            rejects.push(Reject {
                file: file.to_string(),
                row: row.row,
                id: Some(id),
                reason: "an image, but the collection has no embedder".into(),
            });
        }
        return Ok((items, rejects));
    };
    // Decode and preprocess on every core; undecodable images are rejected
    // one by one instead of failing their batch.
    let per_image = embedder.preprocessor().tensor_len();
    type Prepared = std::result::Result<(Vec<f32>, Thumbnail), String>;
    let tensors: Vec<Prepared> = images
        .par_iter()
        .map(|(row, _, _)| {
            let Some(Payload::Image(bytes)) = &row.payload else {
                unreachable!("only image rows are here")
            };
            let preprocessor = embedder.preprocessor();
            let image = preprocessor.decode(bytes)?;
            let mut out = vec![0f32; per_image];
            preprocessor.write_tensor(&preprocessor.fit(&image), &mut out);
            let thumbnail = match target.thumbnail_px {
                0 => None,
                px => Some(crate::thumbnail::make(&image, px)?.into()),
            };
            Ok((out, thumbnail))
        })
        .collect();
    let mut good: Vec<(RawRow, u64, String, Thumbnail)> = Vec::new();
    let mut batch: Vec<f32> = Vec::new();
    for ((row, id, label), tensor) in images.into_iter().zip(tensors) {
        match tensor {
            Ok((t, thumbnail)) => {
                batch.extend_from_slice(&t);
                good.push((row, id, label, thumbnail));
            }
            Err(reason) => rejects.push(Reject {
                file: file.to_string(),
                row: row.row,
                id: Some(id),
                reason: format!("undecodable image: {reason}"),
            }),
        }
    }
    let batch_size = embedder_batch(embedder);
    for (chunk, tensors) in good
        .chunks(batch_size)
        .zip(batch.chunks(batch_size * per_image))
    {
        let vectors = embedder.run(tensors, chunk.len())?;
        for ((row, id, label, thumbnail), vector) in chunk.iter().zip(vectors) {
            let vector = prepare(target.metric, vector, target.dim).map_err(|e| {
                IngestError::Runtime(format!(
                    "the embedder's vector does not fit the collection: {e}"
                ))
            })?;
            items.push(Item {
                id: *id,
                label: label.clone(),
                weight: row.weight.unwrap_or(1.0),
                source: row.source.clone(),
                vector,
                thumbnail: thumbnail.clone(),
            });
        }
    }
    Ok((items, rejects))
}

fn embedder_batch(embedder: &OnnxEmbedder) -> usize {
    embedder.batch_size().max(1)
}

/// Reads a rejects file written by [`write_rejects`].
pub fn read_rejects(path: &std::path::Path) -> Result<Vec<Reject>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    let bad = |reason: String| IngestError::Parquet {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path)?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(format!("no column {name}")))
        };
        let (files, rows, ids, reasons) = (
            column("file")?,
            column("row")?,
            column("id")?,
            column("reason")?,
        );
        let files = files.as_string::<i32>();
        let rows = rows.as_primitive::<UInt64Type>();
        let ids = ids.as_primitive::<UInt64Type>();
        let reasons = reasons.as_string::<i32>();
        for i in 0..batch.num_rows() {
            out.push(Reject {
                file: files.value(i).to_string(),
                row: rows.value(i),
                id: (!ids.is_null(i)).then(|| ids.value(i)),
                reason: reasons.value(i).to_string(),
            });
        }
    }
    Ok(out)
}

/// Writes rejects as a Parquet file (`file`, `row`, `id`, `reason`).
pub fn write_rejects(path: &std::path::Path, rejects: &[Reject]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("row", DataType::UInt64, false),
        Field::new("id", DataType::UInt64, true),
        Field::new("reason", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|r| r.file.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(rejects.iter().map(|r| r.row))),
            Arc::new(UInt64Array::from_iter(rejects.iter().map(|r| r.id))),
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|r| r.reason.as_str()),
            )),
        ],
    )
    .map_err(|e| IngestError::Runtime(e.to_string()))?;
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp)?;
    let mut writer = ArrowWriter::try_new(file, schema, None)
        .map_err(|e| IngestError::Runtime(e.to_string()))?;
    writer
        .write(&batch)
        .map_err(|e| IngestError::Runtime(e.to_string()))?;
    let file = writer
        .into_inner()
        .map_err(|e| IngestError::Runtime(e.to_string()))?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u64, label: Option<&str>, payload: Option<Payload>) -> RawRow {
        RawRow {
            row: n,
            id: None,
            label: label.map(str::to_string),
            payload,
            source: None,
            weight: None,
        }
    }

    #[test]
    fn bad_rows_are_rejected_with_their_reason() {
        let target = Target {
            dim: 2,
            metric: Metric::L2,
            embedder: None,
            max_label: 8,
            max_source: 8,
            thumbnail_px: 0,
        };
        let rows = vec![
            row(0, Some("a"), Some(Payload::Embedding(vec![1.0, 2.0]))),
            row(1, None, Some(Payload::Embedding(vec![1.0, 2.0]))),
            row(2, Some("a"), Some(Payload::Embedding(vec![1.0]))),
            row(3, Some("a"), Some(Payload::Embedding(vec![f32::NAN, 1.0]))),
            row(4, Some("a"), Some(Payload::Image(vec![1, 2, 3]))),
            row(5, Some("a"), None),
            row(
                6,
                Some("much too long"),
                Some(Payload::Embedding(vec![1.0, 2.0])),
            ),
            RawRow {
                weight: Some(-1.0),
                ..row(7, Some("a"), Some(Payload::Embedding(vec![1.0, 2.0])))
            },
        ];
        let (items, rejects) = prepare_rows("f.parquet", rows, &target).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].id, derived_id("f.parquet", 0));
        assert_eq!(items[0].weight, 1.0);
        let reason = |row: u64| {
            rejects
                .iter()
                .find(|r| r.row == row)
                .map(|r| r.reason.clone())
                .unwrap_or_default()
        };
        assert_eq!(rejects.len(), 7);
        assert!(reason(1).contains("missing label"));
        assert!(reason(2).contains("bad embedding"), "{}", reason(2));
        assert!(reason(3).contains("bad embedding"), "{}", reason(3));
        assert!(reason(4).contains("no embedder"));
        assert!(reason(5).contains("no embedding or image"));
        assert!(reason(6).contains("label longer"));
        assert!(reason(7).contains("weight"));
    }

    #[test]
    fn rejects_round_trip_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.parquet");
        let rejects = vec![
            Reject {
                file: "a".into(),
                row: 3,
                id: Some(9),
                reason: "missing label".into(),
            },
            Reject {
                file: "b".into(),
                row: 4,
                id: None,
                reason: "image_uri x: not found".into(),
            },
        ];
        write_rejects(&path, &rejects).unwrap();
        assert_eq!(read_rejects(&path).unwrap(), rejects);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_id("a", 1), derived_id("a", 1));
        assert_ne!(derived_id("a", 1), derived_id("a", 2));
        assert_ne!(derived_id("a", 1), derived_id("b", 1));
    }
}
