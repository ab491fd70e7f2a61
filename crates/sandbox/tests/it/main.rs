//! The sandbox's integration tests, one binary: real tool processes attacking their walls.

mod sandbox;
