//! The executor's integration tests, one binary: the scheduler with real tool processes, the
//! agent loop,
//! run store, and the run's records round-tripping.

mod agent;
mod records;
mod scheduler;
