//! The tool sandbox. A tool step runs a catalog program that an agent's output can steer (the
//! code-generation workflow's tests run model-written code), so every tool process is treated
//! as an untrusted workload that may be root-capable: [`isolation`] builds the box it runs in
//! (bubblewrap's namespaces, a cgroup, limits, a seccomp allow-list), [`enter`] is the helper
//! that enters the last walls (closed descriptors, Landlock) inside it, [`tool`] turns a
//! step's arguments into an argv (never a shell command line) and runs the program, and
//! [`ToolBackend`] answers the scheduler's tool calls that way.

pub mod enter;
pub mod isolation;
pub mod landlock;
pub mod tool;

pub use joule_call::Layer;
pub use tool::ToolBackend;
