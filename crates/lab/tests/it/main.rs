//! The lab's integration tests, one binary: scoring answers for real (code runs its tests in
//! the sandbox).

mod eval;
