//! joule's executor: runs a plan's steps on whatever backends it is handed, meters what each
//! step cost, and keeps a durable, replayable record.
//!
//! The planner decides; this crate does. It depends on the planner's types and the call
//! vocabulary, and on no backend: model inference, HTTP engines and the tool sandbox are
//! plugged in through [`router::Router`] by whoever assembles a run, so the scheduler builds
//! and is tested without linking candle, reqwest or seccomp.
//!
//! - [`runtime`]: the scheduler (retries, fallbacks, re-planning, `for_each`, `when`);
//! - [`meter`]: energy per device (NVML, RAPL, or an estimate, each labelled);
//! - [`store`], [`trace`], [`audit`]: the run store, the JSONL trace, the hash chain;
//! - [`queue`]: the workflow service's registered workflows and submitted runs, in the store;
//! - [`report`]: measured against predicted, per step and in total;
//! - [`recorded`]: answers from a stored run, for replays;
//! - [`calibrate`]: what runs teach the profiles;
//! - [`devices`]: the hardware this machine offers.

pub mod audit;
pub mod calibrate;
pub mod devices;
pub mod meter;
pub mod queue;
pub mod recorded;
pub mod report;
pub mod router;
pub mod runtime;
pub mod store;
pub mod trace;
