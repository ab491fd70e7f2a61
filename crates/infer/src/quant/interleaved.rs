//! Q4_K weights regrouped at load into sixteen-row groups in which a SIMD lane is a weight row.
//!
//! Why: in GGUF's layout a Q4_K row is a run of 144-byte blocks whose 6-bit scales and
//! minimums are packed together; a kernel that walks one row spends more instructions
//! unpacking those and applying them (per row, per block, per activation row) than on the
//! products themselves, and then sums its lanes horizontally. That held the 1.5B model (most of
//! whose weights are Q4_K) to 0.74x of llama.cpp's decoding and 0.48x of its prefill, which
//! repacks the same way. Here sixteen rows' blocks are interleaved: one `vpdpbusd` multiplies
//! four weights of each of sixteen rows with four activations broadcast to every lane, a
//! sub-block's scales are one vector for all sixteen rows, the minimums are folded in with one
//! `vpdpwssd` per two sub-blocks, and the sixteen results leave as one store. A group's bytes
//! are 2.8% more than its rows' blocks (the scales unpacked to bytes); the original bytes are
//! released, so the weights are still held once.
//!
//! A group-block (one block position of sixteen rows) is [`GROUP_BLOCK`] bytes:
//! - `[0, 2048)`: for sub-block `j` (0-7) and chunk `h` (0-3), 64 bytes: byte `4 r + t` holds
//!   row `r`'s element `4 h + t` of sub-block `j` in its low nibble and `16 + 4 h + t` in its
//!   high one;
//! - `[2048, 2176)`: the scales, byte `16 j + r`;
//! - `[2176, 2304)`: the minimums, byte `32 k + 2 r + e` the minimum of sub-block `2 k + e`;
//! - `[2304, 2336)`: the rows' `d` (f16), `[2336, 2368)`: their `dmin`.
//!
//! Every (weight row, activation row) takes the same steps whatever else is in the batch, so
//! the result does not depend on its company (tested in `tests/it/kernels.rs`).

use half::f16;

use super::blocks::{Q4K, Q8K};

/// Rows per group.
pub const ROWS: usize = 16;
/// Bytes per group-block.
pub const GROUP_BLOCK: usize = 2368;
const SCALES: usize = 2048;
const MINS: usize = 2176;
const D: usize = 2304;
const DMIN: usize = 2336;

/// Sub-block `j`'s 6-bit scale and minimum, as ggml's `get_scale_min_k4` unpacks them.
fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Element `e` (0-255) of a Q4_K block as its 4-bit value.
fn nibble(b: &Q4K, e: usize) -> u8 {
    let (j, i) = (e / 32, e % 32);
    let byte = b.qs[32 * (j / 2) + i];
    if j % 2 == 0 { byte & 0xF } else { byte >> 4 }
}

/// The bytes `rows` rows of `per_row` blocks take regrouped.
pub fn packed_len(rows: usize, per_row: usize) -> usize {
    rows / ROWS * per_row * GROUP_BLOCK
}

/// `rows` (a multiple of [`ROWS`]) rows of `per_row` blocks, regrouped into `out`
/// ([`packed_len`] bytes).
pub fn pack(blocks: &[Q4K], rows: usize, per_row: usize, out: &mut [u8]) {
    assert!(rows.is_multiple_of(ROWS) && blocks.len() == rows * per_row);
    assert_eq!(out.len(), packed_len(rows, per_row));
    for (g, group) in out.chunks_exact_mut(per_row * GROUP_BLOCK).enumerate() {
        for (b, dst) in group.chunks_exact_mut(GROUP_BLOCK).enumerate() {
            for r in 0..ROWS {
                let x = &blocks[(g * ROWS + r) * per_row + b];
                for j in 0..8 {
                    for h in 0..4 {
                        for t in 0..4 {
                            let lo = nibble(x, 32 * j + 4 * h + t);
                            let hi = nibble(x, 32 * j + 16 + 4 * h + t);
                            dst[256 * j + 64 * h + 4 * r + t] = lo | hi << 4;
                        }
                    }
                    let (s, m) = scale_min(j, &x.scales);
                    dst[SCALES + 16 * j + r] = s;
                    dst[MINS + 32 * (j / 2) + 2 * r + j % 2] = m;
                }
                dst[D + 2 * r..D + 2 * r + 2].copy_from_slice(&x.d.to_le_bytes());
                dst[DMIN + 2 * r..DMIN + 2 * r + 2].copy_from_slice(&x.dmin.to_le_bytes());
            }
        }
    }
}

/// Row `r` of regrouped weights (`per_row` blocks a row) as f32: `d * scale * q - dmin * min`,
/// as ggml dequantises a Q4_K block.
pub fn row(bytes: &[u8], per_row: usize, r: usize, out: &mut [f32]) {
    let (g, lane) = (r / ROWS, r % ROWS);
    let group = &bytes[g * per_row * GROUP_BLOCK..(g + 1) * per_row * GROUP_BLOCK];
    for (gb, dst) in group
        .chunks_exact(GROUP_BLOCK)
        .zip(out.chunks_exact_mut(256))
    {
        let half = |at: usize| f16::from_le_bytes([gb[at + 2 * lane], gb[at + 2 * lane + 1]]);
        let (d, dmin) = (half(D).to_f32(), half(DMIN).to_f32());
        for j in 0..8 {
            let sc = d * f32::from(gb[SCALES + 16 * j + lane]);
            let m = dmin * f32::from(gb[MINS + 32 * (j / 2) + 2 * lane + j % 2]);
            for h in 0..4 {
                for t in 0..4 {
                    let byte = gb[256 * j + 64 * h + 4 * lane + t];
                    dst[32 * j + 4 * h + t] = sc * f32::from(byte & 0xF) - m;
                    dst[32 * j + 16 + 4 * h + t] = sc * f32::from(byte >> 4) - m;
                }
            }
        }
    }
}

/// Each activation block's sums of 32 (its sub-blocks), two to an `i32` as 16-bit halves, the
/// form the kernel's `vpdpwssd` with the minimums reads. A sum of 32 values of at most 127
/// fits 16 bits.
pub fn sub_sums(ys: &[Q8K], out: &mut Vec<[i32; 4]>) {
    out.clear();
    out.extend(ys.iter().map(|y| {
        let s = |j: usize| (i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1])) as u16;
        std::array::from_fn(|k| (u32::from(s(2 * k)) | u32::from(s(2 * k + 1)) << 16) as i32)
    }));
}

#[cfg(target_arch = "x86_64")]
pub use avx512::product;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::lane_simd::{four, in_fours, prefetch_next, results};

    use super::super::blocks::Q8K;
    use super::{D, DMIN, GROUP_BLOCK, MINS, ROWS, SCALES};

    /// One group (sixteen rows, `per_row` group-blocks) against `C` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C; `group` holds `per_row`
    /// group-blocks and each `ys[c]`, `sums[c]` `per_row` entries.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn group<const C: usize>(
        group: &[u8],
        per_row: usize,
        ys: [&[Q8K]; C],
        sums: [&[[i32; 4]]; C],
    ) -> [[f32; ROWS]; C] {
        let m4 = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); C];
        for b in 0..per_row {
            // SAFETY (the whole block): every offset below is inside group-block `b` of
            // `group`, and `b` is inside each activation row.
            unsafe {
                let gb = group.as_ptr().add(b * GROUP_BLOCK);
                prefetch_next(gb, GROUP_BLOCK);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(gb.add(D).cast()));
                let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(gb.add(DMIN).cast()));
                let mut mins = [_mm512_setzero_si512(); C];
                for k in 0..4 {
                    let mk = _mm512_cvtepu8_epi16(_mm256_loadu_si256(gb.add(MINS + 32 * k).cast()));
                    for c in 0..C {
                        let s = _mm512_set1_epi32(sums[c].get_unchecked(b)[k]);
                        mins[c] = _mm512_dpwssd_epi32(mins[c], mk, s);
                    }
                }
                let mut sum = [_mm512_setzero_ps(); C];
                for j in 0..8 {
                    let mut isum = [_mm512_setzero_si512(); C];
                    for h in 0..4 {
                        let w = _mm512_loadu_si512(gb.add(256 * j + 64 * h).cast());
                        let lo = _mm512_and_si512(w, m4);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
                        for c in 0..C {
                            let y = ys[c].get_unchecked(b);
                            isum[c] = _mm512_dpbusd_epi32(isum[c], lo, four(&y.qs, 32 * j + 4 * h));
                            isum[c] =
                                _mm512_dpbusd_epi32(isum[c], hi, four(&y.qs, 32 * j + 16 + 4 * h));
                        }
                    }
                    let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                        gb.add(SCALES + 16 * j).cast(),
                    )));
                    for c in 0..C {
                        sum[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[c]), sc, sum[c]);
                    }
                }
                for c in 0..C {
                    let yd = _mm512_set1_ps(ys[c].get_unchecked(b).d);
                    acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(d, yd), sum[c], acc[c]);
                    let m = _mm512_cvtepi32_ps(mins[c]);
                    acc[c] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, yd), m, acc[c]);
                }
            }
        }
        results(acc)
    }

    /// Group `g` of regrouped weights (`per_row` group-blocks a group) against every row of
    /// `ys` (`m` rows of `per_row` blocks, with their [`super::sub_sums`]), each activation
    /// row's sixteen results handed to `emit(activation row, results)`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn product(
        weights: &[u8],
        per_row: usize,
        g: usize,
        ys: &[Q8K],
        sums: &[[i32; 4]],
        m: usize,
        emit: &mut dyn FnMut(usize, &[f32; ROWS]),
    ) {
        let group_bytes = &weights[g * per_row * GROUP_BLOCK..(g + 1) * per_row * GROUP_BLOCK];
        assert!(ys.len() >= m * per_row && sums.len() >= m * per_row);
        let act = |i: usize| {
            (
                &ys[i * per_row..(i + 1) * per_row],
                &sums[i * per_row..(i + 1) * per_row],
            )
        };
        in_fours!(m, |i0, C| {
            let a: [_; C] = std::array::from_fn(|c| act(i0 + c));
            // SAFETY: the features are enabled; the slices hold `per_row` entries each.
            let v = unsafe {
                group::<C>(
                    group_bytes,
                    per_row,
                    std::array::from_fn(|c| a[c].0),
                    std::array::from_fn(|c| a[c].1),
                )
            };
            for (c, out) in v.iter().enumerate() {
                emit(i0 + c, out);
            }
        });
    }
}
