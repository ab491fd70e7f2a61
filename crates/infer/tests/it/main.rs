//! The fast path's integration tests, one binary: every SIMD kernel against candle's scalar
//! code, and model files read into huge pages or mapped.

mod kernels;
mod storage;
