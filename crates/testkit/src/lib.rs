//! Test support shared by joule's crates; only tests depend on it. [`fault`] produces, over
//! real TCP on loopback, the faults a remote engine produces at random (a mock of a remote
//! engine, named so: the one kind of fault joule cannot produce for real on demand), and
//! [`scheduler`] runs workflows through the real scheduler with real tool processes.

pub mod fault;
pub mod scheduler;

pub use fault::{Fault, Script, Shared, injector};
