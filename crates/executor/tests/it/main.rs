//! The executor's integration tests, one binary: the scheduler with real tool processes, the
//! run store, and the run's records round-tripping.

mod records;
mod scheduler;
