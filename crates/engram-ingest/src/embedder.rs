//! Image embedding with an ONNX model through ONNX Runtime.
//!
//! ONNX Runtime is loaded at run time from `ORT_DYLIB_PATH` (the library in
//! the `onnxruntime` PyPI wheel, installed by the Makefile), so no build
//! step downloads anything. The model file is checked against its sha256
//! before it is loaded.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use parking_lot::Mutex;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use engram_core::config::EmbedderConfig;

use crate::error::{IngestError, Result};
use crate::model_file;
use crate::preprocess::Preprocessor;

/// The environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Where ONNX Runtime's library is: `ORT_DYLIB_PATH` (`env`), else the
/// embedder's `runtime_path`, else the library `make setup` installed into
/// the project's `.venv`, looked for from each of `bases` upwards (the
/// working directory, then the executable's, so `cargo run` and
/// `target/debug/engram` both find it). Pure but for the directory reads.
pub fn runtime_library(
    env: Option<std::ffi::OsString>,
    configured: Option<&Path>,
    bases: &[PathBuf],
) -> std::result::Result<PathBuf, String> {
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = configured {
        return Ok(path.to_path_buf());
    }
    for base in bases {
        for dir in base.ancestors() {
            if let Some(found) = venv_library(&dir.join(".venv")) {
                return Ok(found);
            }
        }
    }
    Err(format!(
        "no ONNX Runtime library: set {ORT_DYLIB_ENV} or [embedders.<name>] runtime_path to \
         libonnxruntime.so, or run `make setup`, which installs it into .venv"
    ))
}

/// `<venv>/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*`.
fn venv_library(venv: &Path) -> Option<PathBuf> {
    let mut found = Vec::new();
    for python in std::fs::read_dir(venv.join("lib")).ok()?.flatten() {
        if !python.file_name().to_string_lossy().starts_with("python3") {
            continue;
        }
        let capi = python.path().join("site-packages/onnxruntime/capi");
        for file in std::fs::read_dir(capi).into_iter().flatten().flatten() {
            if file
                .file_name()
                .to_string_lossy()
                .starts_with("libonnxruntime.so.1.")
            {
                found.push(file.path());
            }
        }
    }
    found.sort();
    found.pop()
}

fn environment(configured: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    static ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let mut bases: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
            bases.extend(
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(Path::to_path_buf)),
            );
            let path = runtime_library(std::env::var_os(ORT_DYLIB_ENV), configured, &bases)?;
            tracing::debug!(path = %path.display(), "loading ONNX Runtime");
            let builder = ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
            builder
                .with_name("engram")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| IngestError::Runtime(e.clone()))
}

/// A loaded embedding model with its preprocessing.
pub struct OnnxEmbedder {
    config: EmbedderConfig,
    preprocessor: Preprocessor,
    /// ONNX Runtime sessions are run one batch at a time; the model uses
    /// all intra-op threads for that batch.
    session: Mutex<Session>,
    /// The execution provider the session runs on (`cpu` after a fallback).
    provider: &'static str,
}

fn plain_builder(config: &EmbedderConfig) -> Result<ort::session::builder::SessionBuilder> {
    let mut builder = Session::builder(environment(config.runtime_path.as_deref())?)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?;
    if config.threads > 0 {
        builder = builder.with_intra_threads(config.threads)?;
    }
    Ok(builder)
}

/// A session on the provider `config` asks for, or on the CPU (with a
/// warning) when the ONNX Runtime library lacks it or it fails to start.
fn session_with_provider(config: &EmbedderConfig, model: &[u8]) -> Result<(Session, &'static str)> {
    use ort::ep::ExecutionProvider;
    let (name, available, dispatch) = match config.provider.as_str() {
        "cuda" => (
            "cuda",
            ort::ep::CUDA::is_available().unwrap_or(false),
            ort::ep::CUDA::default().build().error_on_failure(),
        ),
        "tensorrt" => (
            "tensorrt",
            ort::ep::TensorRT::is_available().unwrap_or(false),
            ort::ep::TensorRT::default().build().error_on_failure(),
        ),
        _ => return Ok((plain_builder(config)?.commit_from_memory(model)?, "cpu")),
    };
    if !available {
        tracing::warn!(
            provider = name,
            "the ONNX Runtime library in use has no {name} execution provider; embedding on the CPU"
        );
        return Ok((plain_builder(config)?.commit_from_memory(model)?, "cpu"));
    }
    let attempt = plain_builder(config)?
        .with_execution_providers([dispatch])
        .map_err(|e| IngestError::Runtime(e.to_string()))
        .and_then(|mut b| b.commit_from_memory(model).map_err(IngestError::from));
    match attempt {
        Ok(session) => Ok((session, name)),
        Err(e) => {
            tracing::warn!(provider = name, error = %e, "the {name} execution provider did not start; embedding on the CPU");
            Ok((plain_builder(config)?.commit_from_memory(model)?, "cpu"))
        }
    }
}

/// One JPEG thumbnail per embedded image (`None` when none was asked for).
pub type Thumbnails = Vec<Option<Vec<u8>>>;

impl OnnxEmbedder {
    /// Verifies the model's checksum, loads it and checks that it produces
    /// `config.dim`-dimensional embeddings.
    pub fn load(config: &EmbedderConfig, max_image_pixels: u64) -> Result<Self> {
        let expected = model_file::expected_sha256(&config.model_path, config.sha256.as_deref())?;
        let bytes = model_file::read_verified(&config.model_path, &expected)?;
        let (session, provider) = session_with_provider(config, &bytes)?;
        let has_input = session
            .inputs()
            .iter()
            .any(|i| i.name() == config.input_name);
        let has_output = session
            .outputs()
            .iter()
            .any(|o| o.name() == config.output_name);
        if !has_input || !has_output {
            return Err(IngestError::Model {
                path: config.model_path.clone(),
                reason: format!(
                    "model has no input `{}` or no output `{}`",
                    config.input_name, config.output_name
                ),
            });
        }
        let embedder = OnnxEmbedder {
            config: config.clone(),
            preprocessor: Preprocessor::new(config, max_image_pixels),
            session: Mutex::new(session),
            provider,
        };
        let probe = vec![0f32; embedder.preprocessor.tensor_len()];
        let out = embedder.run(&probe, 1)?;
        if out[0].len() != config.dim {
            return Err(IngestError::Model {
                path: config.model_path.clone(),
                reason: format!(
                    "model gives {}-d embeddings, config says {}",
                    out[0].len(),
                    config.dim
                ),
            });
        }
        tracing::info!(model = %config.model_path.display(), dim = config.dim, image_size = config.image_size, provider, "embedding model loaded");
        Ok(embedder)
    }

    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// The execution provider in use: `cpu`, `cuda` or `tensorrt`.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Images per model run.
    pub fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// Embeds encoded images; each embedding is L2-normalised. Fails on the
    /// first image that cannot be decoded, naming its index.
    pub fn embed_images(&self, images: &[&[u8]]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_images_with_thumbnails(images, 0)?.0)
    }

    /// [`Self::embed_images`], and with `thumbnail_px > 0` a JPEG thumbnail
    /// of each image whose longer side is at most that (made from the same
    /// decoded image, [`crate::thumbnail`]).
    pub fn embed_images_with_thumbnails(
        &self,
        images: &[&[u8]],
        thumbnail_px: u32,
    ) -> Result<(Vec<Vec<f32>>, Thumbnails)> {
        let per_image = self.preprocessor.tensor_len();
        let mut thumbnails = vec![None; images.len()];
        let mut embeddings = Vec::with_capacity(images.len());
        for (chunk_index, chunk) in images.chunks(self.config.batch_size).enumerate() {
            let mut batch = vec![0f32; per_image * chunk.len()];
            let start = chunk_index * self.config.batch_size;
            batch
                .par_chunks_mut(per_image)
                .zip(chunk.par_iter())
                .zip(thumbnails[start..start + chunk.len()].par_iter_mut())
                .enumerate()
                .try_for_each(|(i, ((out, bytes), thumbnail))| {
                    let bad = |reason: String| IngestError::BadImage {
                        index: start + i,
                        reason,
                    };
                    let image = self.preprocessor.decode(bytes).map_err(bad)?;
                    self.preprocessor
                        .write_tensor(&self.preprocessor.fit(&image), out);
                    if thumbnail_px > 0 {
                        *thumbnail =
                            Some(crate::thumbnail::make(&image, thumbnail_px).map_err(bad)?);
                    }
                    Ok::<(), IngestError>(())
                })?;
            embeddings.extend(self.run(&batch, chunk.len())?);
        }
        Ok((embeddings, thumbnails))
    }

    /// Runs the model on `n` preprocessed images laid out back to back and
    /// returns their L2-normalised embeddings.
    pub fn run(&self, batch: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        let size = self.preprocessor.size() as usize;
        debug_assert_eq!(batch.len(), n * 3 * size * size);
        let input = TensorRef::from_array_view(([n, 3, size, size], batch))?;
        let mut session = self.session.lock();
        let outputs = session.run(ort::inputs![self.config.input_name.as_str() => input])?;
        let (shape, values) =
            outputs[self.config.output_name.as_str()].try_extract_tensor::<f32>()?;
        let dim = values.len() / n.max(1);
        if shape.len() != 2 || shape[0] as usize != n || dim * n != values.len() {
            return Err(IngestError::Runtime(format!(
                "unexpected output shape {shape:?} for a batch of {n}"
            )));
        }
        values
            .chunks_exact(dim)
            .map(|v| {
                let mut v = v.to_vec();
                engram_core::vector::normalize_in_place(&mut v).map_err(|_| {
                    IngestError::Runtime("model produced a zero or non-finite embedding".into())
                })?;
                Ok(v)
            })
            .collect()
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::*;

    #[test]
    fn the_runtime_is_found_from_the_environment_then_the_config_then_a_venv_above() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir
            .path()
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.32.0"), b"").unwrap();
        let below = dir.path().join("target/debug");
        std::fs::create_dir_all(&below).unwrap();

        let found = runtime_library(None, None, std::slice::from_ref(&below)).unwrap();
        assert_eq!(found, capi.join("libonnxruntime.so.1.32.0"));
        let configured = Path::new("/opt/ort/libonnxruntime.so");
        assert_eq!(
            runtime_library(None, Some(configured), std::slice::from_ref(&below)).unwrap(),
            configured
        );
        assert_eq!(
            runtime_library(Some("/env/lib.so".into()), Some(configured), &[below]).unwrap(),
            PathBuf::from("/env/lib.so")
        );
        let nowhere = tempfile::tempdir().unwrap();
        let error = runtime_library(None, None, &[nowhere.path().to_path_buf()]).unwrap_err();
        assert!(error.contains("make setup"), "{error}");
    }
}
