//! Register-tiled products for the formats whose weights are signed bytes against Q8_0
//! activations (Q5_0, Q8_0: Qwen2.5-Coder's layers and output): four weight rows against up to
//! four activation rows per inner loop.
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
//! Every (weight row, activation row) takes exactly the steps of this crate's single-row
//! AVX-512 kernel, in the same order, so the result is bit for bit that kernel's: a row's
//! product does not depend on its company in a batch (tested in `tests/it/kernels.rs`).

use super::blocks::Q8_0;

/// Two Q8_0 activation blocks as the tiled kernels read them: the 64 integers in one aligned
/// register's worth, and the scales spread over the lanes their sums land in (lanes 0-7 the
/// first block's, 8-15 the second's).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Pair {
    pub qs: [i8; 64],
    pub d: [f32; 16],
}

/// A product's quantised activations: `m` rows of `per_row` Q8_0 blocks, and the same as
/// [`Pair`]s (`per_row / 2` per row; an odd last block is read from `blocks`).
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    pub blocks: &'a [Q8_0],
    pub pairs: &'a [Pair],
    pub m: usize,
    pub per_row: usize,
}

/// Repacks `blocks` (whole rows of `per_row` blocks) into `out`, `per_row / 2` pairs a row.
pub fn pack(blocks: &[Q8_0], per_row: usize, out: &mut [Pair]) {
    let pairs = per_row / 2;
    if pairs == 0 {
        return;
    }
    for (row, dst) in blocks
        .chunks_exact(per_row)
        .zip(out.chunks_exact_mut(pairs))
    {
        for (p, b) in dst.iter_mut().zip(row.chunks_exact(2)) {
            p.qs[..32].copy_from_slice(&b[0].qs);
            p.qs[32..].copy_from_slice(&b[1].qs);
            p.d[..8].fill(b[0].d.to_f32());
            p.d[8..].fill(b[1].d.to_f32());
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx512::{product_q5_0, product_q8_0};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::blocks::{Q5_0, Q8_0};
    use super::{Packed, Pair};

    /// A weight format whose pairs of blocks unpack to signed bytes with one f16 scale a block.
    trait Signed: Sized {
        /// Two blocks' weights as magnitudes and the mask of the negative ones.
        ///
        /// # Safety
        /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
        unsafe fn weights(x0: &Self, x1: &Self) -> (__m512i, __mmask64);
        fn scale(&self) -> half::f16;
        /// The single-row kernel's handling of an odd last block (AVX2, added after the
        /// pairs' sum), repeated so the results agree bit for bit.
        ///
        /// # Safety
        /// As for `weights`.
        unsafe fn tail(x: &[Self], y: &[Q8_0]) -> f32;
    }

    impl Signed for Q5_0 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn weights(x0: &Self, x1: &Self) -> (__m512i, __mmask64) {
            // SAFETY: each load reads the 16 nibble bytes inside its block.
            let both = unsafe {
                let lo = _mm512_broadcast_i32x4(_mm_loadu_si128(x0.qs.as_ptr().cast()));
                _mm512_mask_broadcast_i32x4(lo, 0xFF00, _mm_loadu_si128(x1.qs.as_ptr().cast()))
            };
            // 128-bit lanes [qs0, qs0, qs1, qs1]; lanes 1 and 3 take the high nibbles, which
            // is each block's element order (low nibbles first).
            let shifted = _mm512_mask_srli_epi16(both, 0xFF00_FF00, both, 4);
            let nibbles = _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F));
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

    impl Signed for Q8_0 {
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

    /// `R` weight rows (from `w`, each `per_row` blocks) against `C` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C; every row in `w` and
    /// `y` must hold `per_row` blocks (`per_row / 2` pairs).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn block<W: Signed, const R: usize, const C: usize>(
        w: [&[W]; R],
        y: [&[Pair]; C],
        yq: [&[Q8_0]; C],
        per_row: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let zero = _mm512_setzero_si512();
        for s in 0..per_row / 2 {
            let mut ax = [zero; R];
            let mut negative = [0 as __mmask64; R];
            let mut dx = [_mm512_setzero_ps(); R];
            for r in 0..R {
                // SAFETY: 2s + 1 < per_row, the length of every weight row.
                let (x0, x1) =
                    unsafe { (w[r].get_unchecked(2 * s), w[r].get_unchecked(2 * s + 1)) };
                // SAFETY: the features are enabled for this function.
                (ax[r], negative[r]) = unsafe { W::weights(x0, x1) };
                dx[r] = spread(x0.scale(), x1.scale());
            }
            for c in 0..C {
                // SAFETY: s < per_row / 2, the pairs in every activation row; pairs are
                // 64-aligned.
                let (qy, dy) = unsafe {
                    let p = y[c].get_unchecked(s);
                    (
                        _mm512_load_si512(p.qs.as_ptr().cast()),
                        _mm512_load_ps(p.d.as_ptr()),
                    )
                };
                for r in 0..R {
                    // |x| against y with x's sign: Q8_0 activations are never -128, so
                    // negating one cannot wrap.
                    let sy = _mm512_mask_sub_epi8(qy, negative[r], zero, qy);
                    let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, ax[r], sy));
                    acc[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(dx[r], dy), sums, acc[r][c]);
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
    unsafe fn product<W: Signed>(
        w: &[W],
        rows: Range<usize>,
        acts: Packed<'_>,
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

    /// Q5_0 weight rows against packed Q8_0 activations (see [`product`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    pub unsafe fn product_q5_0(
        w: &[Q5_0],
        rows: Range<usize>,
        acts: Packed<'_>,
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
        acts: Packed<'_>,
        emit: &mut dyn FnMut(usize, usize, f32),
    ) {
        // SAFETY: the caller checked the CPU.
        unsafe { product(w, rows, acts, emit) }
    }
}
