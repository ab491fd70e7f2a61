//! Q6_K rows regrouped at load into sixteen-row groups in which a SIMD lane is a weight row,
//! as [`super::interleaved`] does for Q4_K.
//!
//! Why: Qwen2.5's `ffn_down` is Q6_K in half the layers and the 1.5B model's output is Q6_K;
//! row by row, unpacking each block's six-bit weights and sixteen scales for every four
//! activation rows cost as much as the products. Here one `vpdpbusd` multiplies four weights
//! of each of sixteen rows with four activations broadcast to every lane; the offset of 32 is
//! taken off each sub-block's integer sum with the activations' sums of 16 (which Q8_K blocks
//! carry), and a sub-block's sixteen scales are one vector.
//!
//! A group-block (one block position of sixteen rows) is the bytes of its sixteen blocks:
//! operand `o` (0-63) is elements `4 o .. 4 o + 4` of each row, four bytes a row at `4 r + t`;
//! - `[0, 2048)`: 32 chunks of 64 bytes, chunk `c`'s low nibbles the low four bits of operand
//!   `2 c`, its high nibbles those of `2 c + 1`;
//! - `[2048, 3072)`: 16 chunks, chunk `k`'s bits `2 j, 2 j + 1` the high two bits of operand
//!   `4 k + j`;
//! - `[3072, 3328)`: the scales, byte `16 j + r` sub-block `j`'s of row `r` (i8);
//! - `[3328, 3360)`: the rows' `d` (f16).

use half::f16;

use super::blocks::Q6K;

/// Rows per group.
pub const ROWS: usize = 16;
/// Bytes per group-block (sixteen 210-byte blocks).
pub const GROUP_BLOCK: usize = 3360;
const HIGH: usize = 2048;
const SCALES: usize = 3072;
const D: usize = 3328;

/// Element `e` (0-255) of a Q6_K block as its unsigned six-bit value (ggml's layout: per half
/// of 128, `ql[0..64]`'s low nibbles are elements 0-63, high nibbles 64-127, `qh[0..32]`'s
/// bit pairs 0-3 their high bits).
fn six(b: &Q6K, e: usize) -> u8 {
    let (half, i) = (e / 128, e % 128);
    let (quarter, l) = (i / 32, i % 32);
    let ql = b.ql[64 * half + 32 * (quarter % 2) + l];
    let low = if quarter < 2 { ql & 0xF } else { ql >> 4 };
    let high = (b.qh[32 * half + l] >> (2 * quarter)) & 3;
    low | high << 4
}

/// `rows` (a multiple of [`ROWS`]) rows of `per_row` blocks, regrouped into `out` (as many
/// bytes).
pub fn pack(blocks: &[Q6K], rows: usize, per_row: usize, out: &mut [u8]) {
    assert!(rows.is_multiple_of(ROWS) && blocks.len() == rows * per_row);
    assert_eq!(out.len(), rows * per_row * 210);
    for (i, dst) in out.chunks_exact_mut(GROUP_BLOCK).enumerate() {
        let (g, b) = (i / per_row, i % per_row);
        for r in 0..ROWS {
            let x = &blocks[(g * ROWS + r) * per_row + b];
            for o in 0..64 {
                for t in 0..4 {
                    let q = six(x, 4 * o + t);
                    let at = 64 * (o / 2) + 4 * r + t;
                    dst[at] |= if o % 2 == 0 { q & 0xF } else { (q & 0xF) << 4 };
                    dst[HIGH + 64 * (o / 4) + 4 * r + t] |= (q >> 4) << (2 * (o % 4));
                }
            }
            for j in 0..16 {
                dst[SCALES + 16 * j + r] = x.scales[j] as u8;
            }
            dst[D + 2 * r..D + 2 * r + 2].copy_from_slice(&x.d.to_le_bytes());
        }
    }
}

/// Row `r` of regrouped weights (`per_row` blocks a row) as f32: `d * scale * (q - 32)`, as
/// ggml dequantises a Q6_K block.
pub fn row(bytes: &[u8], per_row: usize, r: usize, out: &mut [f32]) {
    let (g, lane) = (r / ROWS, r % ROWS);
    let group = &bytes[g * per_row * GROUP_BLOCK..(g + 1) * per_row * GROUP_BLOCK];
    for (gb, dst) in group
        .chunks_exact(GROUP_BLOCK)
        .zip(out.chunks_exact_mut(256))
    {
        let d = f16::from_le_bytes([gb[D + 2 * lane], gb[D + 2 * lane + 1]]).to_f32();
        for (e, v) in dst.iter_mut().enumerate() {
            let (o, t) = (e / 4, e % 4);
            let nib = gb[64 * (o / 2) + 4 * lane + t];
            let low = if o % 2 == 0 { nib & 0xF } else { nib >> 4 };
            let high = (gb[HIGH + 64 * (o / 4) + 4 * lane + t] >> (2 * (o % 4))) & 3;
            let q = i32::from(low | high << 4) - 32;
            let scale = f32::from(gb[SCALES + 16 * (e / 16) + lane] as i8);
            *v = d * scale * q as f32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx512::product;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::lane_simd::{four, in_fours, prefetch_next, results};

    use super::super::blocks::Q8K;
    use super::{D, GROUP_BLOCK, HIGH, ROWS, SCALES};

    /// The high bit pair `j` of each byte of `hb`, moved to bits 4-5.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn high(hb: __m512i, j: usize) -> __m512i {
        let moved = match j {
            0 => _mm512_slli_epi16(hb, 4),
            1 => _mm512_slli_epi16(hb, 2),
            2 => hb,
            _ => _mm512_srli_epi16(hb, 2),
        };
        _mm512_and_si512(moved, _mm512_set1_epi8(0x30))
    }

    /// One group (sixteen rows, `per_row` group-blocks) against `C` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C; `group` holds `per_row`
    /// group-blocks and each `ys[c]` `per_row` blocks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn group<const C: usize>(
        group: &[u8],
        per_row: usize,
        ys: [&[Q8K]; C],
    ) -> [[f32; ROWS]; C] {
        let m4 = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); C];
        for b in 0..per_row {
            // SAFETY (the whole block): the offsets are inside group-block `b` of `group`,
            // and `b` inside every activation row.
            unsafe {
                let at = group.as_ptr().add(b * GROUP_BLOCK);
                prefetch_next(at, GROUP_BLOCK);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(at.add(D).cast()));
                let mut sum = [_mm512_setzero_ps(); C];
                for j in 0..16 {
                    let hb = _mm512_loadu_si512(at.add(HIGH + 64 * j).cast());
                    let mut isum = [_mm512_setzero_si512(); C];
                    for q in 0..2 {
                        let nib = _mm512_loadu_si512(at.add(64 * (2 * j + q)).cast());
                        let lo = _mm512_or_si512(_mm512_and_si512(nib, m4), high(hb, 2 * q));
                        let hi = _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16(nib, 4), m4),
                            high(hb, 2 * q + 1),
                        );
                        for c in 0..C {
                            let y = ys[c].get_unchecked(b);
                            let o = 16 * j + 8 * q;
                            isum[c] = _mm512_dpbusd_epi32(isum[c], lo, four(&y.qs, o));
                            isum[c] = _mm512_dpbusd_epi32(isum[c], hi, four(&y.qs, o + 4));
                        }
                    }
                    let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        at.add(SCALES + 16 * j).cast(),
                    )));
                    for c in 0..C {
                        let y = ys[c].get_unchecked(b);
                        // The offset of 32 off the integers: 32 times the activations' sum
                        // of this sub-block's 16.
                        let offset = _mm512_set1_epi32(32 * i32::from(y.bsums[j]));
                        let products = _mm512_sub_epi32(isum[c], offset);
                        sum[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), sc, sum[c]);
                    }
                }
                for c in 0..C {
                    let e = _mm512_set1_ps(ys[c].get_unchecked(b).d);
                    acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(d, e), sum[c], acc[c]);
                }
            }
        }
        results(acc)
    }

    /// Group `g` of regrouped weights (`per_row` blocks a row) against every row of `ys` (`m`
    /// rows of `per_row` Q8_K blocks), each activation row's sixteen results handed to
    /// `emit(activation row, results)`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn product(
        weights: &[u8],
        per_row: usize,
        g: usize,
        ys: &[Q8K],
        m: usize,
        emit: &mut dyn FnMut(usize, &[f32; ROWS]),
    ) {
        let group_bytes = &weights[g * per_row * GROUP_BLOCK..(g + 1) * per_row * GROUP_BLOCK];
        assert!(ys.len() >= m * per_row);
        let act = |i: usize| &ys[i * per_row..(i + 1) * per_row];
        in_fours!(m, |i0, C| {
            // SAFETY: the features are enabled; the slices hold `per_row` blocks each.
            let v =
                unsafe { group::<C>(group_bytes, per_row, std::array::from_fn(|c| act(i0 + c))) };
            for (c, out) in v.iter().enumerate() {
                emit(i0 + c, out);
            }
        });
    }
}
