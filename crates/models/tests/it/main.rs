//! The model side's integration tests, one binary: local inference on SmolLM2 (the fast path
//! against candle's reference, the chat template, the resident-model budget), the model
//! cache's fetching against a real HTTP server, and the HTTP client against real faults. The
//! larger catalog models' tests are `#[ignore]`d: `make models`, then
//! `cargo test -p joule-models -- --ignored`.

mod batching;
mod fast_engine;
mod fetch;
mod large;
mod local;
mod openai_faults;
mod support;
