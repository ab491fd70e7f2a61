//! End-to-end tests of the `joule` binary, one test binary: every command as a user runs it,
//! real models (SmolLM2), real HTTP on loopback, real clients, and the architecture itself.

mod agent;
mod architecture;
mod audit;
mod bench;
mod cli;
mod devices;
mod errors;
mod eval;
mod legacy;
mod models;
mod plan;
mod profile;
mod run;
mod serve;
mod serve_tools;
mod service;
mod service_tenants;
mod support;
mod tune;
