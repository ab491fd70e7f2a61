//! The executor runs a [`joule_planner`] plan for real: it schedules steps as their inputs become
//! ready, calls the backends, meters each step and keeps a durable record.
//!
//! It is deliberately empty until the planner produces plans: the crate exists now so that the
//! workspace layout, and the dependency direction (executor -> planner, never back), are fixed
//! from the first commit.

pub use joule_planner as planner;
