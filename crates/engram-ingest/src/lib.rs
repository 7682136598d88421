//! Ingestion: turning images into vectors, and Parquet files on object
//! storage into items ([`source`], [`rows`], [`items`]).
//!
//! Images are decoded and preprocessed in Rust ([`preprocess`]) and embedded
//! by an ONNX model through ONNX Runtime ([`embedder`]), which is loaded at
//! run time from `ORT_DYLIB_PATH`. [`idx`] reads the IDX files of MNIST-style
//! datasets used by the demo and the tests.

pub mod bulk;
pub mod embed_part;
pub mod embedder;
pub mod error;
pub mod fetch;
pub mod idx;
pub mod items;
pub mod model_file;
pub mod preprocess;
pub mod rows;
pub mod source;
pub mod thumbnail;

pub use embedder::OnnxEmbedder;
pub use error::{IngestError, Result};
pub use preprocess::Preprocessor;
