//! What every command prints the same way.

pub mod diagnostics;
pub mod events;
pub mod progress;
