//! The planner's integration tests, one binary: the compiler on random DAGs, the cost model
//! against hand-computed figures, hostile input, the MILP against exhaustive search, and plans
//! as records that round-trip.

mod compile_props;
mod estimate;
mod plan_record;
mod quality;
mod robustness;
mod solve_props;
