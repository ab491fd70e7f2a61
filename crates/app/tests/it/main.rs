//! The application layer's integration tests, one binary: the scheduler with real HTTP
//! backends against real faults, and API keys that reach their endpoint and nothing else.

mod endpoints;
mod secrets;
