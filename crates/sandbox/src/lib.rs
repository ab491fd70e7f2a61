//! The tool sandbox. A tool step runs a catalog program that an agent's output can steer (the
//! code-generation workflow's tests run model-written code), so every tool process is treated
//! as an untrusted workload: [`isolation`] builds the walls, [`tool`] turns a step's arguments
//! into an argv (never a shell command line) and runs the program inside them, and
//! [`ToolBackend`] answers the scheduler's tool calls that way.

pub mod isolation;
pub mod tool;

pub use joule_call::Layer;
pub use tool::ToolBackend;
