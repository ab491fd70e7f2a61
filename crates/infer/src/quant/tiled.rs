//! Register-tiled products for the 32-weight block formats against 8-bit activations (Q5_0
//! and Q8_0 against Q8_0: Qwen2.5-Coder's layers and output; Q4_1 against Q8_1: SmolLM2's
//! layers): four weight rows against up to four activation rows per inner loop.
//!
//! Why: a four-row kernel that walks one weight row spends most of its instructions on
//! reassembling activation blocks (34-byte blocks need two loads and an insert per pair) and
//! converting their scales, once per weight row; prefill and batched decode were held to half
//! of llama.cpp's rate by that. Here the activations are repacked once per product into
//! [`Pair`]s, each one aligned load with its scales already spread over the lanes, so an
//! inner step is a sign fix, one `vpdpbusd`, a conversion and a multiply-add; each weight
//! pair is unpacked once for every activation row of the tile, each activation pair loaded once
//! for every weight row.
//!
//! Every (weight row, activation row) takes the same steps in the same order whatever its
//! company, and the one-row dot products here take them too, so a row's result is bit for
//! bit the same alone and in a batch (tested in `tests/it/kernels.rs`).

use super::blocks::{Q8_0, Q8_1};

/// Two activation blocks as the tiled kernels read them: the 64 integers in one aligned
/// register's worth, the scales spread over the lanes their sums land in (lanes 0-7 the
/// first block's, 8-15 the second's), and for Q8_1 the blocks' `s = d * sum` in lanes 0 and 8
/// (where Q4_1 weights' minimum terms are added), zero elsewhere.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Pair {
    pub qs: [i8; 64],
    pub d: [f32; 16],
    pub s: [f32; 16],
}

impl Pair {
    pub const ZERO: Self = Self {
        qs: [0; 64],
        d: [0.0; 16],
        s: [0.0; 16],
    };
}

/// A product's quantised activations: `m` rows of `per_row` blocks (Q8_0 or Q8_1), and the
/// same as [`Pair`]s (`per_row / 2` per row; an odd last block is read from `blocks`).
pub struct Packed<'a, B> {
    pub blocks: &'a [B],
    pub pairs: &'a [Pair],
    pub m: usize,
    pub per_row: usize,
}

// By hand: derived ones would ask `B: Copy` of the blocks behind the references.
impl<B> Clone for Packed<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Packed<'_, B> {}

/// An activation block format pairs are made of.
pub trait Activation: Copy {
    fn pair(a: &Self, b: &Self) -> Pair;
}

fn pair_of(a: &[i8; 32], b: &[i8; 32], da: half::f16, db: half::f16) -> Pair {
    let mut p = Pair::ZERO;
    p.qs[..32].copy_from_slice(a);
    p.qs[32..].copy_from_slice(b);
    p.d[..8].fill(da.to_f32());
    p.d[8..].fill(db.to_f32());
    p
}

impl Activation for Q8_0 {
    fn pair(a: &Self, b: &Self) -> Pair {
        pair_of(&a.qs, &b.qs, a.d, b.d)
    }
}

impl Activation for Q8_1 {
    fn pair(a: &Self, b: &Self) -> Pair {
        let mut p = pair_of(&a.qs, &b.qs, a.d, b.d);
        (p.s[0], p.s[8]) = (a.s.to_f32(), b.s.to_f32());
        p
    }
}

/// Repacks `blocks` (whole rows of `per_row` blocks) into `out`, `per_row / 2` pairs a row.
pub fn pack<B: Activation>(blocks: &[B], per_row: usize, out: &mut [Pair]) {
    let pairs = per_row / 2;
    if pairs == 0 {
        return;
    }
    for (row, dst) in blocks
        .chunks_exact(per_row)
        .zip(out.chunks_exact_mut(pairs))
    {
        for (p, b) in dst.iter_mut().zip(row.chunks_exact(2)) {
            *p = B::pair(&b[0], &b[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx512::{
    dot_q4_1_q8_1, dot_q5_0_q8_0, dot_q8_0_q8_0, product_q4_1, product_q5_0, product_q8_0,
};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::blocks::{Q4_1, Q5_0, Q8_0, Q8_1};
    use super::{Activation, Packed, Pair};

    /// A weight format whose pairs of blocks unpack to bytes with one f16 scale a block: signed
    /// (given as magnitudes and the mask of the negative ones, multiplied as `|x|` against `y`
    /// with `x`'s sign) or unsigned with a minimum a block (Q4_1: `d * q + m`).
    trait Weights: Sized {
        type Act: Activation;
        const SIGNED: bool;
        /// Two blocks' weights (magnitudes or unsigned values) and the mask of the negative
        /// ones (unused when unsigned).
        ///
        /// # Safety
        /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
        unsafe fn weights(x0: &Self, x1: &Self) -> (__m512i, __mmask64);
        fn scale(&self) -> half::f16;
        /// The block's minimum (unsigned formats).
        fn min(&self) -> half::f16 {
            half::f16::ZERO
        }
        /// The single-row kernel's handling of an odd last block (AVX2, added after the
        /// pairs' sum), repeated so the results agree bit for bit.
        ///
        /// # Safety
        /// As for `weights`.
        unsafe fn tail(x: &[Self], y: &[Self::Act]) -> f32;
    }

    /// 16 nibbles of each of two blocks in their element order (low nibbles first).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn nibbles(a: &[u8; 16], b: &[u8; 16]) -> __m512i {
        // SAFETY: each load reads the 16 bytes of its array.
        let both = unsafe {
            let lo = _mm512_broadcast_i32x4(_mm_loadu_si128(a.as_ptr().cast()));
            _mm512_mask_broadcast_i32x4(lo, 0xFF00, _mm_loadu_si128(b.as_ptr().cast()))
        };
        // 128-bit lanes [a, a, b, b]; lanes 1 and 3 take the high nibbles.
        let shifted = _mm512_mask_srli_epi16(both, 0xFF00_FF00, both, 4);
        _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F))
    }

    impl Weights for Q4_1 {
        type Act = Q8_1;
        const SIGNED: bool = false;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn weights(x0: &Self, x1: &Self) -> (__m512i, __mmask64) {
            // SAFETY: the features are enabled.
            (unsafe { nibbles(&x0.qs, &x1.qs) }, 0)
        }

        fn scale(&self) -> half::f16 {
            self.d
        }

        fn min(&self) -> half::f16 {
            self.m
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn tail(x: &[Self], y: &[Q8_1]) -> f32 {
            // SAFETY: the caller's CPU has AVX2, FMA and F16C.
            unsafe { super::super::x86::dot_q4_1_q8_1(x, y) }
        }
    }

    impl Weights for Q5_0 {
        type Act = Q8_0;
        const SIGNED: bool = true;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn weights(x0: &Self, x1: &Self) -> (__m512i, __mmask64) {
            // SAFETY: the features are enabled.
            let nibbles = unsafe { nibbles(&x0.qs, &x1.qs) };
            // A weight is `nibble + 16 * fifth bit - 16`: negative exactly where the fifth bit
            // is clear, and then its magnitude is 16 - nibble.
            let fifth =
                u64::from(u32::from_le_bytes(x0.qh)) | u64::from(u32::from_le_bytes(x1.qh)) << 32;
            let negative = !fifth;
            let magnitude = _mm512_mask_sub_epi8(nibbles, negative, _mm512_set1_epi8(16), nibbles);
            (magnitude, negative)
        }

        fn scale(&self) -> half::f16 {
            self.d
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn tail(x: &[Self], y: &[Q8_0]) -> f32 {
            // SAFETY: the caller's CPU has AVX2, FMA and F16C.
            unsafe { super::super::x86::dot_q5_0_q8_0(x, y) }
        }
    }

    impl Weights for Q8_0 {
        type Act = Q8_0;
        const SIGNED: bool = true;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn weights(x0: &Self, x1: &Self) -> (__m512i, __mmask64) {
            // SAFETY: each load reads the 32 bytes inside its block.
            let qx = unsafe {
                let a = _mm256_loadu_si256(x0.qs.as_ptr().cast());
                let b = _mm256_loadu_si256(x1.qs.as_ptr().cast());
                _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1)
            };
            (_mm512_abs_epi8(qx), _mm512_movepi8_mask(qx))
        }

        fn scale(&self) -> half::f16 {
            self.d
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn tail(x: &[Self], y: &[Q8_0]) -> f32 {
            // SAFETY: the caller's CPU has AVX2, FMA and F16C.
            unsafe { super::super::x86::dot_q8_0_q8_0(x, y) }
        }
    }

    /// Two f16 scales as f32 lanes 0-7 and 8-15 (one conversion).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn spread(a: half::f16, b: half::f16) -> __m512 {
        let word = (u32::from(b.to_bits()) << 16 | u32::from(a.to_bits())) as i32;
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(word));
        let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
    }

    /// One pair of weight blocks against one pair of activation blocks, into `acc`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn step<W: Weights>(
        ax: __m512i,
        negative: __mmask64,
        dx: __m512,
        mx: __m512,
        qy: __m512i,
        dy: __m512,
        sy: __m512,
        acc: __m512,
    ) -> __m512 {
        let zero = _mm512_setzero_si512();
        // |x| against y with x's sign: 8-bit activations are never -128 (they are rounded
        // from `x / (max |x| / 127)`), so negating one cannot wrap.
        let qy = if W::SIGNED {
            _mm512_mask_sub_epi8(qy, negative, zero, qy)
        } else {
            qy
        };
        let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, ax, qy));
        let acc = _mm512_fmadd_ps(_mm512_mul_ps(dx, dy), sums, acc);
        if W::SIGNED {
            acc
        } else {
            _mm512_fmadd_ps(mx, sy, acc)
        }
    }

    /// `R` weight rows (from `w`, each `per_row` blocks) against `C` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C; every row in `w` and
    /// `y` must hold `per_row` blocks (`per_row / 2` pairs).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn block<W: Weights, const R: usize, const C: usize>(
        w: [&[W]; R],
        y: [&[Pair]; C],
        yq: [&[W::Act]; C],
        per_row: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let zero = _mm512_setzero_si512();
        for s in 0..per_row / 2 {
            let mut ax = [zero; R];
            let mut negative = [0 as __mmask64; R];
            let mut dx = [_mm512_setzero_ps(); R];
            let mut mx = [_mm512_setzero_ps(); R];
            for r in 0..R {
                // SAFETY: 2s + 1 < per_row, the length of every weight row.
                let (x0, x1) =
                    unsafe { (w[r].get_unchecked(2 * s), w[r].get_unchecked(2 * s + 1)) };
                // SAFETY: the features are enabled for this function.
                (ax[r], negative[r]) = unsafe { W::weights(x0, x1) };
                dx[r] = spread(x0.scale(), x1.scale());
                if !W::SIGNED {
                    mx[r] = spread(x0.min(), x1.min());
                }
            }
            for c in 0..C {
                // SAFETY: s < per_row / 2, the pairs in every activation row; pairs are
                // 64-aligned.
                let (qy, dy, sy) = unsafe {
                    let p = y[c].get_unchecked(s);
                    (
                        _mm512_load_si512(p.qs.as_ptr().cast()),
                        _mm512_load_ps(p.d.as_ptr()),
                        _mm512_load_ps(p.s.as_ptr()),
                    )
                };
                for r in 0..R {
                    let (x, negative) = (ax[r], negative[r]);
                    acc[r][c] = step::<W>(x, negative, dx[r], mx[r], qy, dy, sy, acc[r][c]);
                }
            }
        }
        let odd = per_row % 2 == 1;
        std::array::from_fn(|r| {
            std::array::from_fn(|c| {
                let mut total = _mm512_reduce_add_ps(acc[r][c]);
                if odd {
                    let last = per_row - 1;
                    // SAFETY: the features are enabled; both rows hold `per_row` blocks.
                    total += unsafe { W::tail(&w[r][last..], &yq[c][last..]) };
                }
                total
            })
        })
    }

    /// Weight rows `rows` of `w` against every activation row of `acts`, each result handed
    /// to `emit(activation row, weight row, value)`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C; `w` holds whole rows of
    /// `acts.per_row` blocks covering `rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn product<W: Weights>(
        w: &[W],
        rows: Range<usize>,
        acts: Packed<'_, W::Act>,
        emit: &mut dyn FnMut(usize, usize, f32),
    ) {
        let n = acts.per_row;
        let pairs = n / 2;
        let wrow = |r: usize| &w[r * n..(r + 1) * n];
        let act = |i: usize| {
            (
                &acts.pairs[i * pairs..(i + 1) * pairs],
                &acts.blocks[i * n..(i + 1) * n],
            )
        };
        macro_rules! run {
            ($r0:expr, $i0:expr, $R:literal, $C:literal) => {{
                let (r0, i0) = ($r0, $i0);
                let a: [_; $C] = std::array::from_fn(|c| act(i0 + c));
                // SAFETY: the features are enabled; every row holds `n` blocks.
                let v = unsafe {
                    block::<W, $R, $C>(
                        std::array::from_fn(|r| wrow(r0 + r)),
                        std::array::from_fn(|c| a[c].0),
                        std::array::from_fn(|c| a[c].1),
                        n,
                    )
                };
                for (r, row) in v.iter().enumerate() {
                    for (c, value) in row.iter().enumerate() {
                        emit(i0 + c, r0 + r, *value);
                    }
                }
            }};
        }
        macro_rules! columns {
            ($r0:expr, $i0:expr, $C:expr, $R:literal) => {
                match $C {
                    4 => run!($r0, $i0, $R, 4),
                    3 => run!($r0, $i0, $R, 3),
                    2 => run!($r0, $i0, $R, 2),
                    _ => run!($r0, $i0, $R, 1),
                }
            };
        }
        let mut i0 = 0;
        while i0 < acts.m {
            let c = (acts.m - i0).min(4);
            let mut r0 = rows.start;
            while r0 + 4 <= rows.end {
                columns!(r0, i0, c, 4);
                r0 += 4;
            }
            while r0 < rows.end {
                columns!(r0, i0, c, 1);
                r0 += 1;
            }
            i0 += c;
        }
    }

    /// One weight row against one activation row: the tiled product's steps on pairs made
    /// as it goes, so a row's result is bit for bit the tiled one's.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn dot<W: Weights>(xs: &[W], ys: &[W::Act]) -> f32 {
        let n = xs.len().min(ys.len());
        let mut acc = _mm512_setzero_ps();
        for s in 0..n / 2 {
            let (x0, x1) = (&xs[2 * s], &xs[2 * s + 1]);
            let p = W::Act::pair(&ys[2 * s], &ys[2 * s + 1]);
            // SAFETY: the features are enabled; `p` is 64-aligned.
            unsafe {
                let (ax, negative) = W::weights(x0, x1);
                acc = step::<W>(
                    ax,
                    negative,
                    spread(x0.scale(), x1.scale()),
                    spread(x0.min(), x1.min()),
                    _mm512_load_si512(p.qs.as_ptr().cast()),
                    _mm512_load_ps(p.d.as_ptr()),
                    _mm512_load_ps(p.s.as_ptr()),
                    acc,
                );
            }
        }
        let mut total = _mm512_reduce_add_ps(acc);
        if n % 2 == 1 {
            // SAFETY: the features are enabled.
            total += unsafe { W::tail(&xs[n - 1..n], &ys[n - 1..n]) };
        }
        total
    }

    /// Q4_1 weights against Q8_1 activations, one row (see [`dot`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    pub unsafe fn dot_q4_1_q8_1(xs: &[Q4_1], ys: &[Q8_1]) -> f32 {
        // SAFETY: the caller checked the CPU.
        unsafe { dot(xs, ys) }
    }

    /// Q5_0 weights against Q8_0 activations, one row (see [`dot`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    pub unsafe fn dot_q5_0_q8_0(xs: &[Q5_0], ys: &[Q8_0]) -> f32 {
        // SAFETY: the caller checked the CPU.
        unsafe { dot(xs, ys) }
    }

    /// Q8_0 weights against Q8_0 activations, one row (see [`dot`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    pub unsafe fn dot_q8_0_q8_0(xs: &[Q8_0], ys: &[Q8_0]) -> f32 {
        // SAFETY: the caller checked the CPU.
        unsafe { dot(xs, ys) }
    }

    /// Q4_1 weight rows against packed Q8_1 activations (see [`product`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    pub unsafe fn product_q4_1(
        w: &[Q4_1],
        rows: Range<usize>,
        acts: Packed<'_, Q8_1>,
        emit: &mut dyn FnMut(usize, usize, f32),
    ) {
        // SAFETY: the caller checked the CPU.
        unsafe { product(w, rows, acts, emit) }
    }

    /// Q5_0 weight rows against packed Q8_0 activations (see [`product`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    pub unsafe fn product_q5_0(
        w: &[Q5_0],
        rows: Range<usize>,
        acts: Packed<'_, Q8_0>,
        emit: &mut dyn FnMut(usize, usize, f32),
    ) {
        // SAFETY: the caller checked the CPU.
        unsafe { product(w, rows, acts, emit) }
    }

    /// Q8_0 weight rows against packed Q8_0 activations (see [`product`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    pub unsafe fn product_q8_0(
        w: &[Q8_0],
        rows: Range<usize>,
        acts: Packed<'_, Q8_0>,
        emit: &mut dyn FnMut(usize, usize, f32),
    ) {
        // SAFETY: the caller checked the CPU.
        unsafe { product(w, rows, acts, emit) }
    }
}
