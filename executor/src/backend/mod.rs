//! What executes a step. Each backend turns a request into an answer plus the figures the
//! meters and the profiler need.

pub mod local;
pub mod openai;
