//! joule's CPU inference fast path.
//!
//! On a CPU every joule of a local step is time, so inference speed is energy. candle 0.11
//! runs the formats of joule's small models (Q4_1, Q5_0) through scalar code, multiplies a
//! prompt's tokens one weight pass at a time and concatenates its KV cache every token. This
//! crate replaces that hot path: SIMD dot products chosen at run time ([`quant`]) and a
//! decoder forward pass ([`model`]) that reads the weights where the file was loaded (in huge
//! pages where the kernel offers them, [`quant::load`]). It reuses candle's GGUF reader and
//! block formats, so its numbers can be checked against candle's reference path, which the
//! executor keeps for the GPU and for comparison.
//!
//! It is a crate of its own so that it is compiled optimised in every profile (see the
//! workspace's `Cargo.toml`) without slowing the rest of joule's debug builds.

pub mod kv;
pub mod model;
pub mod quant;

pub use kv::{KvPool, Sequence};
pub use model::{Config, Feed, Model};
pub use quant::Kernels;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The file uses something the fast path does not implement; the reference path may.
    #[error("not supported by the fast path: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Input(String),
}
