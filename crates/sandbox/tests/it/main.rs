//! The sandbox's integration tests, one binary: the escape suite (real tool processes
//! attacking their box, as root and as an unprivileged user) and the box's grants.

mod escape;
mod sandbox;
