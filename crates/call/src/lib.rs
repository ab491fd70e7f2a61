//! The call vocabulary every backend and the scheduler share.
//!
//! A workflow step becomes one or more [`Call`]s (a model call or a tool call); a [`Backend`]
//! answers each with an [`Answer`] or a [`CallError`], and gives up promptly when its
//! [`Cancel`] fires. These types live in a crate of their own so that the scheduler (which
//! must not link model code), the model backends (which must not link the scheduler) and the
//! sandbox can all speak them without depending on each other.

mod answer;
mod backend;
mod call;
mod cancel;

pub use answer::{Answer, CallError, Layer};
pub use backend::{Backend, Cache, CallFuture, OnTokens, backoff};
pub use call::{
    Call, ConfigRef, Constraint, Function, HOST, LlmCall, Site, ToolCall, ToolUse, Turn,
};
pub use cancel::Cancel;
