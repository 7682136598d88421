//! Locating a model file and checking it against its recorded sha256.

use sha2::{Digest, Sha256};
use std::path::Path;

use crate::error::{IngestError, Result};

/// The sha256 recorded for `model`: the configured one, else the first word
/// of the sidecar file `<model>.sha256`.
pub fn expected_sha256(model: &Path, configured: Option<&str>) -> Result<String> {
    if let Some(hex) = configured {
        return Ok(hex.trim().to_ascii_lowercase());
    }
    let sidecar = model.with_file_name(format!(
        "{}.sha256",
        model
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let text = fs_err::read_to_string(&sidecar).map_err(|e| IngestError::Model {
        path: model.to_path_buf(),
        reason: format!("no sha256 configured and the checksum file could not be read: {e}"),
    })?;
    text.split_whitespace()
        .next()
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| IngestError::Model {
            path: sidecar,
            reason: "checksum file is empty".into(),
        })
}

/// Reads `model` and returns its bytes if their sha256 is `expected`.
pub fn read_verified(model: &Path, expected: &str) -> Result<Vec<u8>> {
    let bytes = fs_err::read(model)?;
    let actual = hex(&Sha256::digest(&bytes));
    if actual != expected {
        return Err(IngestError::ModelChecksum {
            path: model.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_against_sidecar_and_refuses_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        std::fs::write(dir.path().join("m.onnx.sha256"), format!("{abc}  m.onnx\n")).unwrap();
        let expected = expected_sha256(&model, None).unwrap();
        assert_eq!(read_verified(&model, &expected).unwrap(), b"abc");
        std::fs::write(&model, b"abd").unwrap();
        assert!(matches!(
            read_verified(&model, &expected),
            Err(IngestError::ModelChecksum { .. })
        ));
        assert!(expected_sha256(&dir.path().join("none.onnx"), None).is_err());
    }
}
