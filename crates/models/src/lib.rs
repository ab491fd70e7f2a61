//! joule's model side: the catalog's models on this machine ([`store`]: where their GGUF files
//! live, fetched from PyPI and checked), running them here ([`local`]: candle and joule's fast
//! CPU path behind one backend), and reaching models on other engines ([`openai`]: the
//! OpenAI-compatible wire format and HTTP client).
//!
//! Everything here answers model calls; nothing here schedules them. The scheduler sees
//! [`local::LocalBackend`] and [`openai::OpenAiBackend`] only as `joule_call::Backend`s.

pub mod local;
pub mod openai;
pub mod store;

pub use store::{ModelError, ModelStore, Progress, Silent, State};
