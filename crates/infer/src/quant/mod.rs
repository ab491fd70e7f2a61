//! Quantized weight matrices read in place from the loaded GGUF file ([`load`]), and the
//! products of activations with them.
//!
//! A product quantises the activations once (to the format the weights' dot product wants,
//! exactly as candle and ggml do), then splits the weight rows into tiles spread over the
//! thread pool; each tile meets every activation row while it is in cache, so a prefill of `m`
//! tokens reads the weights once instead of `m` times. Dot products use SIMD kernels chosen at
//! run time: this crate's AVX2 and AVX-512 VNNI ones for the formats candle leaves scalar
//! (Q4_1, Q5_0, Q8_0) and, with VNNI, for Q4_K and Q6_K; candle's own for the others (its Q4_0
//! and AVX2 K-quant paths are already vectorised).

pub mod blocks;
pub mod interleaved;
#[cfg(target_arch = "x86_64")]
mod lane_simd;
pub mod lanes;
pub mod q6k_lanes;
mod storage;
pub mod tiled;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use storage::{Aligned, Residence, Storage, anonymous, huge_pages_offered, load};

use std::cell::RefCell;
use std::mem::{align_of, size_of};
use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{self as kq, GgmlType};

use crate::InferError;

/// A `rows x cols` matrix in a GGUF block format: `rows` outputs, `cols` inputs, each row
/// `cols / block` consecutive blocks.
#[derive(Clone)]
pub struct QWeight {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    storage: Arc<dyn Storage>,
    start: usize,
    len: usize,
    /// Q4_K rows regrouped sixteen at a time ([`interleaved`]) rather than GGUF's blocks.
    interleaved: bool,
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QWeight({:?}, {}x{})", self.dtype, self.rows, self.cols)
    }
}

/// The formats the fast path multiplies with; others are refused at load, so the caller
/// can fall back to the reference engine.
pub fn supported(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::F32
            | GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q2K
            | GgmlDType::Q3K
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    )
}

impl QWeight {
    /// A view of `len` bytes at `start` of `storage`.
    pub fn new(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        storage: Arc<dyn Storage>,
        start: usize,
    ) -> Result<Self, InferError> {
        if !supported(dtype) {
            return Err(InferError::Unsupported(format!("weights in {dtype:?}")));
        }
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(InferError::Format(format!(
                "{cols} columns are not whole {dtype:?} blocks"
            )));
        }
        let len = rows * cols / dtype.block_size() * dtype.type_size();
        let bytes = storage.bytes();
        if start + len > bytes.len() {
            return Err(InferError::Format(format!(
                "a {rows}x{cols} {dtype:?} tensor at byte {start} runs past the end of the file"
            )));
        }
        // Every block type is 2-aligned (its f16 scale), f32 4-aligned; GGUF aligns tensor
        // data to 32 bytes, so a misaligned tensor means a damaged file.
        if !(bytes.as_ptr() as usize + start).is_multiple_of(4) {
            return Err(InferError::Format(format!(
                "tensor data at byte {start} is not aligned"
            )));
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            storage,
            start,
            len,
            interleaved: false,
        })
    }

    /// The matrix in the layout this CPU's fastest product for its format reads: Q4_K rows
    /// regrouped sixteen at a time where the kernels have the interleaved product, the file's
    /// bytes released (see [`interleaved`]); anything else as it is.
    ///
    /// # Safety
    /// No other view of this matrix's bytes (a clone of `self`, or another `QWeight` over the
    /// same range) is read afterwards: the released bytes may read as zeros.
    pub unsafe fn prepare(self, k: &Kernels) -> Result<Self, InferError> {
        let q4k = self.dtype == GgmlDType::Q4K && k.q4k_x16.is_some();
        let q6k = self.dtype == GgmlDType::Q6K && k.q6k_x16.is_some();
        let small = lanes::regroups(self.dtype) && k.lanes.is_some();
        if self.interleaved || !(q4k || q6k || small) || !self.rows.is_multiple_of(lanes::ROWS) {
            return Ok(self);
        }
        let per_row = self.cols / self.dtype.block_size();
        let len = if q4k {
            interleaved::packed_len(self.rows, per_row)
        } else {
            self.len
        };
        let storage = anonymous(len, |out| {
            if q4k {
                // SAFETY: Q4_K blocks viewed as their mirror.
                let blocks: &[blocks::Q4K] = unsafe { blocks::cast(self.blocks::<kq::BlockQ4K>()) };
                interleaved::pack(blocks, self.rows, per_row, out);
            } else if q6k {
                // SAFETY: Q6_K blocks viewed as their mirror.
                let blocks: &[blocks::Q6K] = unsafe { blocks::cast(self.blocks::<kq::BlockQ6K>()) };
                q6k_lanes::pack(blocks, self.rows, per_row, out);
            } else {
                lanes::pack(self.dtype, self.bytes(), self.rows, per_row, out);
            }
        })?;
        // SAFETY: the caller promises nothing else reads this range.
        unsafe { self.storage.release(self.start, self.len) };
        Ok(Self {
            storage,
            start: 0,
            len,
            interleaved: true,
            ..self
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.start..self.start + self.len]
    }

    /// Whether [`Self::prepare`] regrouped the rows (the bytes are no longer the file's).
    pub fn regrouped(&self) -> bool {
        self.interleaved
    }

    fn blocks<T>(&self) -> &[T] {
        let bytes = self.bytes();
        debug_assert_eq!(bytes.len() % size_of::<T>(), 0);
        debug_assert_eq!(bytes.as_ptr() as usize % align_of::<T>(), 0);
        // SAFETY: `new` checked the size (rows x blocks x type size) and alignment (4, which
        // covers every block type); the blocks are plain old data.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size_of::<T>()) }
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let out = &mut out[..self.cols];
        if self.interleaved {
            let per_row = self.cols / self.dtype.block_size();
            return match self.dtype {
                GgmlDType::Q4K => interleaved::row(self.bytes(), per_row, r, out),
                GgmlDType::Q6K => q6k_lanes::row(self.bytes(), per_row, r, out),
                d => lanes::row(d, self.bytes(), per_row, r, out),
            };
        }
        match self.dtype {
            GgmlDType::F32 => {
                out.copy_from_slice(&self.blocks::<f32>()[r * self.cols..][..self.cols])
            }
            GgmlDType::Q4_0 => row::<kq::BlockQ4_0>(self, r, out),
            GgmlDType::Q4_1 => row::<kq::BlockQ4_1>(self, r, out),
            GgmlDType::Q5_0 => row::<kq::BlockQ5_0>(self, r, out),
            GgmlDType::Q5_1 => row::<kq::BlockQ5_1>(self, r, out),
            GgmlDType::Q8_0 => row::<kq::BlockQ8_0>(self, r, out),
            GgmlDType::Q2K => row::<kq::BlockQ2K>(self, r, out),
            GgmlDType::Q3K => row::<kq::BlockQ3K>(self, r, out),
            GgmlDType::Q4K => row::<kq::BlockQ4K>(self, r, out),
            GgmlDType::Q5K => row::<kq::BlockQ5K>(self, r, out),
            GgmlDType::Q6K => row::<kq::BlockQ6K>(self, r, out),
            _ => unreachable!("checked by QWeight::new"),
        }
    }

    /// The whole matrix as f32, row after row (norm weights and biases are small vectors).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.row(r, &mut out[r * self.cols..]);
        }
        out
    }

    /// `out[i][r] = sum_c x[i][c] * W[r][c]` for the `m` rows of `x` (`m x cols`, row-major);
    /// `out` is `m x rows`.
    pub fn matmul(&self, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
        assert!(x.len() >= m * self.cols && out.len() >= m * self.rows);
        if self.interleaved {
            return match self.dtype {
                GgmlDType::Q4K => interleaved_product(self, k, x, m, out),
                GgmlDType::Q6K => q6k_product(self, k, x, m, out),
                _ => lanes_product(self, k, x, m, out),
            };
        }
        match self.dtype {
            GgmlDType::F32 => matmul_f32(self, k, x, m, out),
            GgmlDType::Q4_0 => product::<kq::BlockQ4_0>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: kq::BlockQ4_0::vec_dot,
                    dot4: None,
                    tiled: None,
                },
            ),
            GgmlDType::Q4_1 => product::<kq::BlockQ4_1>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: k.q4_1,
                    dot4: k.q4_1_x4,
                    tiled: k.q4_1_tiled,
                },
            ),
            GgmlDType::Q5_0 => product::<kq::BlockQ5_0>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: k.q5_0,
                    dot4: None,
                    tiled: k.q5_0_tiled,
                },
            ),
            GgmlDType::Q5_1 => product::<kq::BlockQ5_1>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: kq::BlockQ5_1::vec_dot,
                    dot4: None,
                    tiled: None,
                },
            ),
            GgmlDType::Q8_0 => product::<kq::BlockQ8_0>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: k.q8_0,
                    dot4: None,
                    tiled: k.q8_0_tiled,
                },
            ),
            GgmlDType::Q2K => product::<kq::BlockQ2K>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: kq::BlockQ2K::vec_dot,
                    dot4: None,
                    tiled: None,
                },
            ),
            GgmlDType::Q3K => product::<kq::BlockQ3K>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: kq::BlockQ3K::vec_dot,
                    dot4: None,
                    tiled: None,
                },
            ),
            GgmlDType::Q4K => product::<kq::BlockQ4K>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: k.q4k,
                    dot4: k.q4k_x4,
                    tiled: None,
                },
            ),
            GgmlDType::Q5K => product::<kq::BlockQ5K>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: kq::BlockQ5K::vec_dot,
                    dot4: None,
                    tiled: None,
                },
            ),
            GgmlDType::Q6K => product::<kq::BlockQ6K>(
                self,
                k,
                x,
                m,
                out,
                Route {
                    dot: k.q6k,
                    dot4: k.q6k_x4,
                    tiled: None,
                },
            ),
            _ => unreachable!("checked by QWeight::new"),
        }
    }
}

fn row<T: GgmlType>(w: &QWeight, r: usize, out: &mut [f32]) {
    let per_row = w.cols / T::BLCK_SIZE;
    T::to_float(&w.blocks::<T>()[r * per_row..(r + 1) * per_row], out);
}

/// A dot product of one weight row with one quantised activation row (`n` elements).
pub type Dot<T> = fn(usize, &[T], &[<T as GgmlType>::VecDotType]) -> f32;

/// Four dot products of one weight row with four activation rows (a prefill's tokens), for
/// kernels that unpack a weight block once for all four.
pub type Dot4<T> = fn(&[T], [&[<T as GgmlType>::VecDotType]; 4]) -> [f32; 4];

/// Quantises a row of activations into blocks.
pub type Quantise<B> = fn(&[f32], &mut [B]);

/// Weight rows `rows` against every row of repacked Q8_0 activations, register-tiled (see
/// [`tiled`]); each result goes to `emit(activation row, weight row, value)`.
pub type Tiled<T> = fn(
    &[T],
    Range<usize>,
    tiled::Packed<'_, <T as GgmlType>::VecDotType>,
    &mut dyn FnMut(usize, usize, f32),
);

/// Group `g` of regrouped Q4_K weights (`per_row` blocks a row) against `m` rows of Q8_K
/// activations and their sub-block sums (see [`interleaved`]); each activation row's sixteen
/// results go to `emit(activation row, results)`.
pub type Interleaved = fn(
    &[u8],
    usize,
    usize,
    &[kq::BlockQ8K],
    &[[i32; 4]],
    usize,
    &mut dyn FnMut(usize, &[f32; interleaved::ROWS]),
);

/// Group `g` of regrouped 32-weight rows of a format (`per_row` blocks a row) against `m`
/// rows of Q8_0 activations and their blocks' sums (see [`lanes`]); each activation row's
/// sixteen results go to `emit(activation row, results)`.
pub type Lanes = fn(
    GgmlDType,
    &[u8],
    usize,
    usize,
    &[kq::BlockQ8_0],
    &[i32],
    usize,
    &mut dyn FnMut(usize, &[f32; lanes::ROWS]),
);

/// Group `g` of regrouped Q6_K rows (`per_row` blocks a row) against `m` rows of Q8_K
/// activations (see [`q6k_lanes`]); each activation row's sixteen results go to
/// `emit(activation row, results)`.
pub type Q6kLanes =
    fn(&[u8], usize, usize, &[kq::BlockQ8K], usize, &mut dyn FnMut(usize, &[f32; q6k_lanes::ROWS]));

/// The dot products chosen for this CPU.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub q4_1: Dot<kq::BlockQ4_1>,
    pub q5_0: Dot<kq::BlockQ5_0>,
    pub q4_1_x4: Option<Dot4<kq::BlockQ4_1>>,
    pub q4k_x4: Option<Dot4<kq::BlockQ4K>>,
    pub q6k_x4: Option<Dot4<kq::BlockQ6K>>,
    /// Register-tiled products, bit for bit the single-row kernels' results.
    pub q4_1_tiled: Option<Tiled<kq::BlockQ4_1>>,
    pub q5_0_tiled: Option<Tiled<kq::BlockQ5_0>>,
    pub q8_0_tiled: Option<Tiled<kq::BlockQ8_0>>,
    /// The product of Q4_K rows regrouped by [`QWeight::prepare`].
    pub q4k_x16: Option<Interleaved>,
    /// The product of 32-weight rows regrouped by [`QWeight::prepare`].
    pub lanes: Option<Lanes>,
    /// The product of Q6_K rows regrouped by [`QWeight::prepare`].
    pub q6k_x16: Option<Q6kLanes>,
    /// Activation quantisers that write what candle's `from_float` writes, faster.
    pub to_q8_0: Option<Quantise<kq::BlockQ8_0>>,
    pub to_q8_1: Option<Quantise<kq::BlockQ8_1>>,
    pub to_q8k: Option<Quantise<kq::BlockQ8K>>,
    pub q8_0: Dot<kq::BlockQ8_0>,
    pub q4k: Dot<kq::BlockQ4K>,
    pub q6k: Dot<kq::BlockQ6K>,
    pub f32: fn(&[f32], &[f32]) -> f32,
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// `avx512-vnni`, `avx2` or `scalar`.
    pub name: &'static str,
}

impl Kernels {
    /// The scalar reference code: candle's generic dot products and plain loops.
    pub fn scalar() -> Self {
        Self {
            q4_1: kq::BlockQ4_1::vec_dot_unopt,
            q5_0: kq::BlockQ5_0::vec_dot_unopt,
            q8_0: kq::BlockQ8_0::vec_dot_unopt,
            q4k: kq::BlockQ4K::vec_dot_unopt,
            q6k: kq::BlockQ6K::vec_dot_unopt,
            q4_1_x4: None,
            q4k_x4: None,
            q6k_x4: None,
            q4_1_tiled: None,
            q5_0_tiled: None,
            q8_0_tiled: None,
            q4k_x16: None,
            lanes: None,
            q6k_x16: None,
            to_q8_0: None,
            to_q8_1: None,
            to_q8k: None,
            f32: |a, b| a.iter().zip(b).map(|(x, y)| x * y).sum(),
            axpy: |a, x, y| y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x),
            name: "scalar",
        }
    }

    /// The fastest kernels this CPU runs.
    pub fn detect() -> Self {
        Self::available()[0]
    }

    /// Every kernel set this CPU can run, fastest first (for tests and benchmarks).
    pub fn available() -> Vec<Self> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
            {
                all.push(Self::avx512());
            }
            all.push(Self::avx2());
        }
        all.push(Self::scalar());
        all
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512() -> Self {
        use blocks::cast;
        // SAFETY (every closure): built only after `detect`/`available` checked AVX-512 F, BW
        // and VNNI, AVX2 and FMA; the casts view candle's blocks as their mirrors.
        Self {
            q4_1: |_, x, y| unsafe { tiled::dot_q4_1_q8_1(cast(x), cast(y)) },
            q5_0: |_, x, y| unsafe { tiled::dot_q5_0_q8_0(cast(x), cast(y)) },
            q8_0: |_, x, y| unsafe { tiled::dot_q8_0_q8_0(cast(x), cast(y)) },
            q4k: |_, x, y| unsafe { x86::avx512::dot_q4k_q8k(cast(x), cast(y)) },
            q6k: |_, x, y| unsafe { x86::avx512::dot_q6k_q8k(cast(x), cast(y)) },
            q4_1_tiled: Some(|x, rows, acts, emit| unsafe {
                tiled::product_q4_1(cast(x), rows, mirror(acts), emit)
            }),
            q5_0_tiled: Some(|x, rows, acts, emit| unsafe {
                tiled::product_q5_0(cast(x), rows, mirror(acts), emit)
            }),
            q8_0_tiled: Some(|x, rows, acts, emit| unsafe {
                tiled::product_q8_0(cast(x), rows, mirror(acts), emit)
            }),
            q4k_x4: Some(|x, y| unsafe {
                x86::avx512::dot4_q4k_q8k(cast(x), [cast(y[0]), cast(y[1]), cast(y[2]), cast(y[3])])
            }),
            q6k_x4: Some(|x, y| unsafe {
                x86::avx512::dot4_q6k_q8k(cast(x), [cast(y[0]), cast(y[1]), cast(y[2]), cast(y[3])])
            }),
            q4k_x16: Some(|w, per_row, g, ys, sums, m, emit| unsafe {
                interleaved::product(w, per_row, g, cast(ys), sums, m, emit)
            }),
            lanes: Some(|dtype, w, per_row, g, ys, sums, m, emit| unsafe {
                lanes::product(dtype, w, per_row, g, cast(ys), sums, m, emit)
            }),
            q6k_x16: Some(|w, per_row, g, ys, m, emit| unsafe {
                q6k_lanes::product(w, per_row, g, cast(ys), m, emit)
            }),
            to_q8_0: Some(|x, y| unsafe { x86::avx512::quantize_q8_0(x, blocks::cast_mut(y)) }),
            to_q8_1: Some(|x, y| unsafe { x86::avx512::quantize_q8_1(x, blocks::cast_mut(y)) }),
            to_q8k: Some(|x, y| unsafe { x86::avx512::quantize_q8k(x, blocks::cast_mut(y)) }),
            name: "avx512-vnni",
            ..Self::avx2()
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn avx2() -> Self {
        use blocks::cast;
        // SAFETY (every closure): `detect` only builds these after checking the CPU has AVX2
        // and FMA; the casts view candle's blocks as their byte-identical mirrors.
        Self {
            q4_1: |_, x, y| unsafe { x86::dot_q4_1_q8_1(cast(x), cast(y)) },
            q5_0: |_, x, y| unsafe { x86::dot_q5_0_q8_0(cast(x), cast(y)) },
            q8_0: |_, x, y| unsafe { x86::dot_q8_0_q8_0(cast(x), cast(y)) },
            // candle's own AVX2 kernel (it checks the CPU itself).
            q4k: kq::BlockQ4K::vec_dot,
            q6k: kq::BlockQ6K::vec_dot,
            f32: |a, b| unsafe { x86::dot_f32(a, b) },
            axpy: |a, x, y| unsafe { x86::axpy(a, x, y) },
            name: "avx2",
            // No several-row, tiled or regrouped products.
            ..Self::scalar()
        }
    }
}

/// Weight rows per parallel task: small enough to spread a decode step's few hundred rows over
/// the cores, large enough that a task outweighs its scheduling.
const TILE_ROWS: usize = 16;

thread_local! {
    /// The quantised activations of the current product, reused so decoding allocates nothing.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// The interleaved Q4_K product's Q8_K activations and their sub-block sums.
    #[allow(clippy::type_complexity)]
    static SUMS: RefCell<(Vec<kq::BlockQ8K>, Vec<[i32; 4]>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
    /// The lane product's Q8_0 activations and their blocks' sums.
    #[allow(clippy::type_complexity)]
    static LANE_SUMS: RefCell<(Vec<kq::BlockQ8_0>, Vec<i32>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
    /// The same activations repacked for the tiled kernels.
    static PAIRS: RefCell<Vec<tiled::Pair>> = const { RefCell::new(Vec::new()) };
}

/// A pointer the workers write disjoint elements through.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);

impl Out {
    /// The element at `i`. A method, so closures capture the whole (`Sync`) wrapper rather
    /// than its raw pointer field.
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
// SAFETY: every (row, column) of the output is written by exactly one task.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Quantises one activation row the way candle does, with this CPU's quantiser when it has one.
fn quantise<V: GgmlType>(k: &Kernels, x: &[f32], q: &mut [V]) {
    // SAFETY (both casts): candle's one block type of each format is the one cast to (and
    // `cast_mut` checks size and alignment).
    if V::DTYPE == GgmlDType::Q8_0
        && let Some(f) = k.to_q8_0
    {
        return f(x, unsafe { blocks::cast_mut(q) });
    }
    if V::DTYPE == GgmlDType::Q8_1
        && let Some(f) = k.to_q8_1
    {
        return f(x, unsafe { blocks::cast_mut(q) });
    }
    if V::DTYPE == GgmlDType::Q8K
        && let Some(f) = k.to_q8k
    {
        return f(x, unsafe { blocks::cast_mut(q) });
    }
    V::from_float(x, q);
}

/// The kernels a format's product can take: the register-tiled one if there is one, else
/// four activation rows at a time where there is a four-row kernel, else row by row.
struct Route<T: GgmlType> {
    dot: Dot<T>,
    dot4: Option<Dot4<T>>,
    tiled: Option<Tiled<T>>,
}

fn product<T: GgmlType>(
    w: &QWeight,
    k: &Kernels,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    Route { dot, dot4, tiled }: Route<T>,
) {
    let (rows, cols) = (w.rows, w.cols);
    let per_row = cols / T::BLCK_SIZE;
    let weights = w.blocks::<T>();
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let words = (m * per_row * size_of::<T::VecDotType>()).div_ceil(8);
        if scratch.len() < words {
            scratch.resize(words, 0);
        }
        // SAFETY: the scratch is 8-aligned (covers every activation block type) and long
        // enough; every block is written by `from_float` before it is read.
        let quantised: &mut [T::VecDotType] =
            unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast(), m * per_row) };
        for i in 0..m {
            quantise::<T::VecDotType>(
                k,
                &x[i * cols..(i + 1) * cols],
                &mut quantised[i * per_row..(i + 1) * per_row],
            );
        }
        let quantised: &[T::VecDotType] = quantised;
        let dst = Out(out.as_mut_ptr());
        let tiles = rows.div_ceil(TILE_ROWS);
        if let Some(tiled) = tiled {
            return tiled_product(w, quantised, m, dst, tiled);
        }
        let tile = |t: usize| {
            let r0 = t * TILE_ROWS;
            let r1 = (r0 + TILE_ROWS).min(rows);
            let act = |i: usize| &quantised[i * per_row..(i + 1) * per_row];
            let mut first = 0;
            if let Some(dot4) = dot4 {
                while first + 4 <= m {
                    let a = [act(first), act(first + 1), act(first + 2), act(first + 3)];
                    for r in r0..r1 {
                        let v = dot4(&weights[r * per_row..(r + 1) * per_row], a);
                        for (j, v) in v.into_iter().enumerate() {
                            // SAFETY: first + j < m and r < rows, inside `out`; no other task
                            // writes (first + j, r).
                            unsafe { *dst.at((first + j) * rows + r) = v };
                        }
                    }
                    first += 4;
                }
            }
            for i in first..m {
                let a = act(i);
                for r in r0..r1 {
                    let v = dot(cols, &weights[r * per_row..(r + 1) * per_row], a);
                    // SAFETY: i < m and r < rows, inside `out`; no other task writes (i, r).
                    unsafe { *dst.at(i * rows + r) = v };
                }
            }
        };
        if tiles * m * cols < 1 << 14 {
            (0..tiles).for_each(tile);
        } else {
            pool().execute_chunked(tiles, |range| range.for_each(tile));
        }
    });
}

/// Packed activations with candle's blocks seen as their mirrors.
///
/// # Safety
/// `A` and `B` are the same block layout (see [`blocks::cast`]).
#[cfg(target_arch = "x86_64")]
unsafe fn mirror<A, B>(p: tiled::Packed<'_, A>) -> tiled::Packed<'_, B> {
    tiled::Packed {
        // SAFETY: forwarded to the caller.
        blocks: unsafe { blocks::cast(p.blocks) },
        pairs: p.pairs,
        m: p.m,
        per_row: p.per_row,
    }
}

/// [`product`]'s parallel tiles for a format with a register-tiled kernel: the activations
/// repacked once, then each task's weight rows against all of them.
fn tiled_product<T: GgmlType>(
    w: &QWeight,
    quantised: &[T::VecDotType],
    m: usize,
    dst: Out,
    tiled: Tiled<T>,
) {
    let (rows, per_row) = (w.rows, w.cols / T::BLCK_SIZE);
    let weights = w.blocks::<T>();
    PAIRS.with(|cell| {
        let mut pairs = cell.borrow_mut();
        let need = m * (per_row / 2);
        if pairs.len() < need {
            pairs.resize(need, tiled::Pair::ZERO);
        }
        // SAFETY (both casts): candle's activation blocks viewed as their mirrors, by the
        // format they are.
        match T::VecDotType::DTYPE {
            GgmlDType::Q8_0 => {
                let b: &[blocks::Q8_0] = unsafe { blocks::cast(quantised) };
                tiled::pack(b, per_row, &mut pairs[..need]);
            }
            GgmlDType::Q8_1 => {
                let b: &[blocks::Q8_1] = unsafe { blocks::cast(quantised) };
                tiled::pack(b, per_row, &mut pairs[..need]);
            }
            other => unreachable!("no tiled kernel reads {other:?} activations"),
        }
        let acts = tiled::Packed {
            blocks: quantised,
            pairs: &pairs[..need],
            m,
            per_row,
        };
        let tile = |t: usize| {
            let r0 = t * TILE_ROWS;
            let r1 = (r0 + TILE_ROWS).min(rows);
            tiled(weights, r0..r1, acts, &mut |i, r, v| {
                // SAFETY: i < m and r < rows, inside `out`; no other task writes (i, r).
                unsafe { *dst.at(i * rows + r) = v };
            });
        };
        let tiles = rows.div_ceil(TILE_ROWS);
        if tiles * m * w.cols < 1 << 14 {
            (0..tiles).for_each(tile);
        } else {
            pool().execute_chunked(tiles, |range| range.for_each(tile));
        }
    });
}

/// Regrouped rows against `m` activation rows where this CPU has no kernel for them (another
/// CPU's kernel set, in tests): each row dequantised and multiplied in f32.
fn dequantised_product(w: &QWeight, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        w.row(r, &mut row);
        for i in 0..m {
            out[i * rows + r] = (k.f32)(&row, &x[i * cols..(i + 1) * cols]);
        }
    }
}

/// Quantises `m` activation rows of `cols` into `ys` (grown as needed) and returns them.
fn quantise_rows<'a, V: GgmlType>(
    k: &Kernels,
    x: &[f32],
    m: usize,
    cols: usize,
    ys: &'a mut Vec<V>,
) -> &'a [V] {
    let per_row = cols / V::BLCK_SIZE;
    if ys.len() < m * per_row {
        ys.resize(m * per_row, V::zeros());
    }
    let ys = &mut ys[..m * per_row];
    for i in 0..m {
        let row = i * per_row..(i + 1) * per_row;
        quantise(k, &x[i * cols..(i + 1) * cols], &mut ys[row]);
    }
    ys
}

/// Sixteen-row groups spread over the pool, each writing its rows of `out` (`m x rows`)
/// through `run(group, emit)`.
fn by_groups(rows: usize, dst: Out, run: impl Fn(usize, &mut dyn FnMut(usize, &[f32; 16])) + Sync) {
    let group = |g: usize| {
        run(g, &mut |i, v| {
            for (j, v) in v.iter().enumerate() {
                // SAFETY: i < m and the group's rows < rows, inside `out`; no other task
                // writes this group's rows.
                unsafe { *dst.at(i * rows + g * lanes::ROWS + j) = *v };
            }
        });
    };
    pool().execute_chunked(rows / lanes::ROWS, |range| range.for_each(group));
}

/// The product of regrouped Q4_K rows: activations to Q8_K once, their sub-block sums once,
/// then each task takes sixteen-row groups.
fn interleaved_product(w: &QWeight, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
    let Some(kernel) = k.q4k_x16 else {
        return dequantised_product(w, k, x, m, out);
    };
    let (rows, per_row) = (w.rows, w.cols / 256);
    let dst = Out(out.as_mut_ptr());
    SUMS.with(|cell| {
        let (ys, sums) = &mut *cell.borrow_mut();
        let ys = quantise_rows(k, x, m, w.cols, ys);
        // SAFETY: candle's Q8_K blocks viewed as their mirror.
        interleaved::sub_sums(unsafe { blocks::cast(ys) }, sums);
        let sums: &[[i32; 4]] = sums;
        let bytes = w.bytes();
        by_groups(rows, dst, |g, emit| {
            kernel(bytes, per_row, g, ys, sums, m, emit)
        });
    });
}

/// The product of regrouped Q6_K rows: activations to Q8_K once, then each task takes
/// sixteen-row groups.
fn q6k_product(w: &QWeight, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
    let Some(kernel) = k.q6k_x16 else {
        return dequantised_product(w, k, x, m, out);
    };
    let (rows, per_row) = (w.rows, w.cols / 256);
    let dst = Out(out.as_mut_ptr());
    SUMS.with(|cell| {
        let (ys, _) = &mut *cell.borrow_mut();
        let ys = quantise_rows(k, x, m, w.cols, ys);
        let bytes = w.bytes();
        by_groups(rows, dst, |g, emit| kernel(bytes, per_row, g, ys, m, emit));
    });
}

/// The product of regrouped 32-weight rows: activations to Q8_0 once, their blocks' sums
/// once, then each task takes sixteen-row groups.
fn lanes_product(w: &QWeight, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
    let Some(kernel) = k.lanes else {
        return dequantised_product(w, k, x, m, out);
    };
    let (rows, per_row) = (w.rows, w.cols / 32);
    let dst = Out(out.as_mut_ptr());
    LANE_SUMS.with(|cell| {
        let (ys, sums) = &mut *cell.borrow_mut();
        let ys = quantise_rows(k, x, m, w.cols, ys);
        // SAFETY: candle's Q8_0 blocks viewed as their mirror.
        lanes::block_sums(unsafe { blocks::cast(ys) }, sums);
        let sums: &[i32] = sums;
        let (dtype, bytes) = (w.dtype, w.bytes());
        by_groups(rows, dst, |g, emit| {
            kernel(dtype, bytes, per_row, g, ys, sums, m, emit)
        });
    });
}

fn matmul_f32(w: &QWeight, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    let weights = w.blocks::<f32>();
    let dst = Out(out.as_mut_ptr());
    let dot = k.f32;
    let tile = |t: usize| {
        let r0 = t * TILE_ROWS;
        for i in 0..m {
            for r in r0..(r0 + TILE_ROWS).min(rows) {
                let v = dot(
                    &x[i * cols..(i + 1) * cols],
                    &weights[r * cols..(r + 1) * cols],
                );
                // SAFETY: as in `product`.
                unsafe { *dst.at(i * rows + r) = v };
            }
        }
    };
    pool().execute_chunked(rows.div_ceil(TILE_ROWS), |range| range.for_each(tile));
}

/// The one pool every product and attention head runs on: candle's barrier pool (its workers
/// plus the calling thread, as many as the cores, spinning briefly between jobs and then
/// parking). candle's own products use it too, so the two never compete for the cores.
pub fn pool() -> &'static candle_core::utils::BarrierPool {
    candle_core::utils::barrier_pool()
}
