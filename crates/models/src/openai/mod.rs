//! OpenAI-compatible HTTP: the wire format ([`wire`]), the client that runs a step's model call
//! on a remote engine ([`client`]), the conversion between the wire format and local
//! generation that `joule serve` needs ([`convert`]), and whether an endpoint answers at all
//! ([`probe`]).

pub mod client;
pub mod convert;
pub mod probe;
pub mod wire;

pub use client::{Completion, HttpError, OpenAiBackend, RetryPolicy, api_key};
