//! Reader for IDX files (MNIST, Fashion-MNIST), plain or gzip-compressed.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

use crate::error::{IngestError, Result};

/// Class names of Fashion-MNIST, by label index.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Grayscale images stored row-major, one after another.
#[derive(Debug, Clone)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl IdxImages {
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let raw = fs_err::read(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| IngestError::Dataset {
                path: path.to_path_buf(),
                reason: format!("bad gzip data: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>> {
    let bad = |reason: String| IngestError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let need = 4 + 4 * dims;
    if bytes.len() < need {
        return Err(bad("file too short for an IDX header".into()));
    }
    let found = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if found != magic {
        return Err(bad(format!("magic {found:#010x}, expected {magic:#010x}")));
    }
    let sizes: Vec<usize> = (0..dims)
        .map(|d| {
            u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let body: usize = sizes.iter().product();
    if bytes.len() != need + body {
        return Err(bad(format!(
            "header promises {body} bytes of data, file has {}",
            bytes.len() - need
        )));
    }
    Ok(sizes)
}

/// Reads an IDX3 image file (magic 0x00000803).
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_all(path)?;
    let sizes = header(path, &bytes, 0x0803, 3)?;
    Ok(IdxImages {
        count: sizes[0],
        rows: sizes[1],
        cols: sizes[2],
        pixels: bytes[16..].to_vec(),
    })
}

/// Reads an IDX1 label file (magic 0x00000801).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_all(path)?;
    header(path, &bytes, 0x0801, 1)?;
    Ok(bytes[8..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    #[test]
    fn reads_plain_and_gzip_and_refuses_inconsistent_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        images.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        let plain = dir.path().join("images");
        std::fs::write(&plain, &images).unwrap();
        let parsed = read_images(&plain).unwrap();
        assert_eq!((parsed.count, parsed.rows, parsed.cols), (2, 2, 2));
        assert_eq!(parsed.image(1), &[5, 6, 7, 8]);

        let gz = dir.path().join("labels.gz");
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&[0, 0, 8, 1, 0, 0, 0, 3, 9, 0, 4]).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_labels(&gz).unwrap(), vec![9, 0, 4]);

        std::fs::write(&plain, &images[..images.len() - 1]).unwrap();
        assert!(read_images(&plain).is_err());
        assert!(read_labels(&dir.path().join("images")).is_err());
    }
}
