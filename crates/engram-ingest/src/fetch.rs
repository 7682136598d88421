//! `image_uri` rows: the images they name, fetched from the same store.

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use std::sync::Arc;

use crate::items::Reject;
use crate::rows::{Payload, RawRow};

/// Image objects fetched at once.
const FETCH_CONCURRENCY: usize = 8;

/// Replaces `image_uri` payloads by the fetched images (from the same
/// store); rows whose object cannot be read become rejects.
pub async fn fetch_images(
    store: &Arc<dyn object_store::ObjectStore>,
    file: &str,
    rows: Vec<RawRow>,
) -> (Vec<RawRow>, Vec<Reject>) {
    if !rows
        .iter()
        .any(|r| matches!(r.payload, Some(Payload::ImageUri(_))))
    {
        return (rows, Vec::new());
    }
    let fetched: Vec<(RawRow, Option<String>)> = futures::stream::iter(rows)
        .map(|mut row| {
            let store = store.clone();
            async move {
                let Some(Payload::ImageUri(uri)) = row.payload.clone() else {
                    return (row, None);
                };
                let path = ObjectPath::from(uri.trim_start_matches('/'));
                let fetched = match store.get(&path).await {
                    Ok(got) => got.bytes().await,
                    Err(e) => Err(e),
                };
                match fetched {
                    Ok(bytes) => {
                        row.payload = Some(Payload::Image(bytes.to_vec()));
                        (row, None)
                    }
                    Err(e) => (row, Some(format!("image_uri {uri}: {e}"))),
                }
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    let mut rows = Vec::with_capacity(fetched.len());
    let mut rejects = Vec::new();
    for (row, error) in fetched {
        match error {
            Some(reason) => rejects.push(Reject {
                file: file.to_string(),
                row: row.row,
                id: row.id,
                reason,
            }),
            None => rows.push(row),
        }
    }
    (rows, rejects)
}
