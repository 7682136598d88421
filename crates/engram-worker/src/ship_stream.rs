//! How one file of a shipped segment travels: one HTTP body per file,
//! `[u32 LE head length][bincode ShipFileRequest][the file's bytes from its
//! offset]`, streamed on both sides.
//!
//! Files used to travel as bincode chunk requests of 16 MiB, each read,
//! serialized, collected, deserialized and written in turn: six copies of
//! every byte and one round trip per chunk, with the two sides taking
//! turns. Streamed, the sender's reads, the network and the copy's writes
//! overlap, and each byte is copied once per side. A cut stream leaves the
//! copy holding a prefix, which the next transfer resumes (`ship.rs`).

use axum::body::{BodyDataStream, Bytes};
use fs_err as fs;
use futures::StreamExt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::node::internal;
use crate::wire::{RpcError, RpcResult, ShipFileRequest};

/// Largest head a copy accepts (a placement and a few names).
const MAX_HEAD: usize = 64 * 1024;

/// A stream that brings no bytes for this long is cut by the copy.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Pieces read ahead of the network on the sending side.
const READ_AHEAD: usize = 2;

/// The head of a streamed file.
pub(crate) fn encode_head(request: &ShipFileRequest) -> RpcResult<Bytes> {
    let head = bincode::serialize(request).map_err(internal)?;
    let mut framed = Vec::with_capacity(4 + head.len());
    framed.extend_from_slice(&(head.len() as u32).to_le_bytes());
    framed.extend_from_slice(&head);
    Ok(framed.into())
}

/// Reads the head off `body`; returns it and the file bytes that came in
/// the same frames.
pub(crate) async fn read_head(body: &mut BodyDataStream) -> RpcResult<(ShipFileRequest, Bytes)> {
    let mut buffered: Vec<u8> = Vec::new();
    loop {
        if buffered.len() >= 4 {
            let length = u32::from_le_bytes(buffered[..4].try_into().expect("4 bytes")) as usize;
            if length > MAX_HEAD {
                return Err(RpcError::Invalid(format!(
                    "a shipped file's head of {length} bytes (at most {MAX_HEAD})"
                )));
            }
            if buffered.len() >= 4 + length {
                let request = bincode::deserialize(&buffered[4..4 + length]).map_err(|e| {
                    RpcError::Invalid(format!("undecodable shipped file head: {e}"))
                })?;
                let rest = Bytes::copy_from_slice(&buffered[4 + length..]);
                return Ok((request, rest));
            }
        }
        match next_frame(body).await? {
            Some(data) => buffered.extend_from_slice(&data),
            None => {
                return Err(RpcError::Invalid(
                    "a shipped file's stream ended before its head".into(),
                ));
            }
        }
    }
}

/// The next bytes of `body`; `None` at its end. A stream silent for
/// [`STALL_TIMEOUT`] or broken is an error.
pub(crate) async fn next_frame(body: &mut BodyDataStream) -> RpcResult<Option<Bytes>> {
    match tokio::time::timeout(STALL_TIMEOUT, body.next()).await {
        Err(_) => Err(RpcError::Replication(format!(
            "a shipped file's stream brought nothing for {STALL_TIMEOUT:?}"
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(RpcError::Replication(format!(
            "a shipped file's stream broke: {e}"
        ))),
        Ok(Some(Ok(data))) => Ok(Some(data)),
    }
}

/// How a file is read for its stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Bytes per read.
    pub piece: usize,
    /// Most bytes per second (0: no limit).
    pub max_bytes_per_s: u64,
}

/// The body of a shipped file: `head`, then bytes `offset..size` of
/// `path`, read in pieces by a blocking thread a few pieces ahead of the
/// network, no faster than `pace` allows. A file that ends before `size`
/// ends the body with an error (the copy sees a cut stream).
pub(crate) fn file_body(
    head: Bytes,
    path: PathBuf,
    offset: u64,
    size: u64,
    pace: Pace,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (pieces, mut read) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    let piece = pace.piece;
    tokio::task::spawn_blocking(move || {
        let reading = || -> std::io::Result<()> {
            let mut file = fs::File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
            let started = std::time::Instant::now();
            let mut at = offset;
            while at < size {
                if pace.max_bytes_per_s > 0 {
                    let due =
                        Duration::from_secs_f64((at - offset) as f64 / pace.max_bytes_per_s as f64);
                    if let Some(early) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(early);
                    }
                }
                let want = (size - at).min(piece.max(1) as u64);
                let mut data = Vec::with_capacity(want as usize);
                (&mut file).take(want).read_to_end(&mut data)?;
                if data.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} ended at {at} bytes, {size} expected", path.display()),
                    ));
                }
                at += data.len() as u64;
                if pieces.blocking_send(Ok(data.into())).is_err() {
                    return Ok(()); // the request was dropped
                }
            }
            Ok(())
        };
        if let Err(e) = reading() {
            let _ = pieces.blocking_send(Err(e));
        }
    });
    let rest = futures::stream::poll_fn(move |cx| read.poll_recv(cx));
    futures::stream::once(async move { Ok(head) }).chain(rest)
}

/// What [`write_pieces`] did: the file, its CRC32 state over every byte
/// it now holds, the bytes appended, and the error that stopped it.
pub(crate) struct Written {
    pub file: fs::File,
    pub crc32: crc32fast::Hasher,
    pub bytes: u64,
    pub failed: Option<std::io::Error>,
}

/// The copy starts writing a streamed file back to disk every this many
/// bytes, so that the sync at its end finds little left to write.
const WRITE_BACK_EVERY: u64 = 32 << 20;

/// Appends every piece `pieces` brings to `file`, which holds `start`
/// bytes, hashing it on top of `crc32`, until the channel closes or a
/// write fails. Writeback of what was appended starts as the file grows
/// (see [`start_write_back`]).
pub(crate) fn write_pieces(
    mut file: fs::File,
    start: u64,
    mut crc32: crc32fast::Hasher,
    mut pieces: tokio::sync::mpsc::Receiver<Bytes>,
) -> Written {
    let mut bytes = 0;
    let mut written_back = 0;
    while let Some(data) = pieces.blocking_recv() {
        if let Err(e) = file.write_all(&data) {
            return Written {
                file,
                crc32,
                bytes,
                failed: Some(e),
            };
        }
        crc32.update(&data);
        bytes += data.len() as u64;
        if bytes - written_back >= WRITE_BACK_EVERY {
            start_write_back(&file, start + written_back, bytes - written_back);
            written_back = bytes;
        }
    }
    Written {
        file,
        crc32,
        bytes,
        failed: None,
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset`
/// to disk without waiting for them (Linux `sync_file_range`; elsewhere
/// nothing): the disk writes a shipped file while the rest of it is still
/// on the network, instead of all of it at the closing sync. Durability
/// still comes from that sync; this only moves the work earlier.
fn start_write_back(file: &fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the call's duration (borrowed
        // from `file`); the call reads no memory of ours.
        let done = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if done != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use engram_core::placement::ShardPlacement;

    fn pace(piece: usize) -> Pace {
        Pace {
            piece,
            max_bytes_per_s: 0,
        }
    }

    fn request() -> ShipFileRequest {
        ShipFileRequest {
            collection: "c".into(),
            shard: 3,
            placement: ShardPlacement::new(4, 1, &[2], &[]),
            transfer: 9,
            key: "00000001-abcd".into(),
            file: "index_disk.index".into(),
            offset: 5,
            size: 17,
        }
    }

    /// Whatever frames the network cuts a body into, the head and the
    /// file's first bytes come out the same.
    #[tokio::test]
    async fn the_head_is_read_across_any_frame_boundaries() {
        let mut whole = encode_head(&request()).unwrap().to_vec();
        whole.extend_from_slice(b"file bytes");
        for cut in 0..=whole.len() {
            let frames: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::copy_from_slice(&whole[..cut])),
                Ok(Bytes::copy_from_slice(&whole[cut..])),
            ];
            let mut body = Body::from_stream(futures::stream::iter(frames)).into_data_stream();
            let (head, first) = read_head(&mut body).await.unwrap();
            let mut rest = first.to_vec();
            while let Some(data) = next_frame(&mut body).await.unwrap() {
                rest.extend_from_slice(&data);
            }
            assert_eq!(
                (head.key.as_str(), head.offset, head.size),
                ("00000001-abcd", 5, 17)
            );
            assert_eq!(rest, b"file bytes", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_cut_or_oversized_head_is_refused() {
        let whole = encode_head(&request()).unwrap();
        let short = Body::from(whole.slice(..whole.len() - 1));
        assert!(matches!(
            read_head(&mut short.into_data_stream()).await,
            Err(RpcError::Invalid(_))
        ));
        let huge = Body::from(((MAX_HEAD + 1) as u32).to_le_bytes().to_vec());
        assert!(matches!(
            read_head(&mut huge.into_data_stream()).await,
            Err(RpcError::Invalid(_))
        ));
    }

    /// A paced stream takes at least its bytes over the rate.
    #[tokio::test]
    async fn a_paced_file_streams_no_faster_than_its_rate() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, vec![7u8; 40_000]).unwrap();
        let pace = Pace {
            piece: 4_000,
            max_bytes_per_s: 100_000,
        };
        let started = std::time::Instant::now();
        let head = encode_head(&request()).unwrap();
        let mut stream =
            Body::from_stream(file_body(head, path, 0, 40_000, pace)).into_data_stream();
        let (_, first) = read_head(&mut stream).await.unwrap();
        let mut got = first.len();
        while let Some(data) = next_frame(&mut stream).await.unwrap() {
            got += data.len();
        }
        assert_eq!(got, 40_000);
        // The last piece starts once 36,000 bytes are due: 0.36 s.
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "{:?}",
            started.elapsed()
        );
    }

    /// The body carries exactly the asked range of the file; a file shorter
    /// than the plan said ends the body with an error.
    #[tokio::test]
    async fn a_file_body_carries_its_range_and_fails_on_a_short_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let content: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let head = encode_head(&request()).unwrap();
        let body = file_body(head.clone(), path.clone(), 100, 1000, pace(64));
        let mut stream = Body::from_stream(body).into_data_stream();
        let (_, first) = read_head(&mut stream).await.unwrap();
        let mut got = first.to_vec();
        while let Some(data) = next_frame(&mut stream).await.unwrap() {
            assert!(data.len() <= 64);
            got.extend_from_slice(&data);
        }
        assert_eq!(got, content[100..]);

        let mut stream =
            Body::from_stream(file_body(head, path, 0, 2000, pace(64))).into_data_stream();
        read_head(&mut stream).await.unwrap();
        let mut failed = false;
        loop {
            match next_frame(&mut stream).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(RpcError::Replication(reason)) => {
                    assert!(reason.contains("ended at 1000 bytes"), "{reason}");
                    failed = true;
                    break;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(failed, "a short file must not look like a complete stream");
    }
}
