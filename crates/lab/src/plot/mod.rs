//! The plots of planning and runs, as SVG text: the pareto sweep and a run's timeline (the
//! benchmark's charts are `bench::plot`). plotters is linked by this crate alone.

pub mod pareto;
pub mod timeline;
