//! The 32-weight block formats (Q4_1, Q5_0, Q8_0) regrouped at load into sixteen-row groups in
//! which a SIMD lane is a weight row, as [`super::interleaved`] does for Q4_K.
//!
//! Why: the register-tiled products ([`super::tiled`]) still unpack each weight row's blocks
//! and scales for every four activation rows and spend a multiply, a multiply-add and a sign
//! fix per pair of blocks per (weight row, activation row); that held Qwen2.5-Coder-0.5B's
//! prefill to 0.75x of llama.cpp's. Here one `vpdpbusd` multiplies four weights of each of
//! sixteen rows with four activations broadcast to every lane, the block's scales are one
//! vector for all sixteen rows, and sixteen results leave as one store.
//!
//! Every weight is stored as an unsigned byte `u` with `w = d * u + t`: Q4_1's nibble with its
//! minimum `t = m`; Q5_0's five bits with `t = -16 d`; Q8_0's byte plus 128 with `t = -128 d`.
//! A block's product with activations `y` (scale `e`) is then `d e (sum(u y) - 16 sum(y))`
//! (Q5_0; 128 for Q8_0), the offset taken off in integers, exactly; or `d e sum(u y) + m e
//! sum(y)` (Q4_1); each activation block's `sum(y)` is computed once per product. A group-block (one
//! block position of sixteen rows) holds, for operand `g` (elements `4 g .. 4 g + 4` of each
//! row), sixteen rows' four bytes at `4 r + t`: Q8_0 as `u` bytes (eight 64-byte operands);
//! Q4_1 and Q5_0 as nibbles, four 64-byte chunks whose low nibbles are operand `g` and high
//! ones operand `g + 4`, Q5_0's fifth bits after them as eight 64-bit masks; then the rows' `d`
//! (f16), and for Q4_1 their `m`. Each group-block is exactly the bytes of its sixteen blocks.
//!
//! Every (weight row, activation row) takes the same steps whatever else is in the batch, so
//! the result does not depend on its company (tested in `tests/it/kernels.rs`).

use candle_core::quantized::GgmlDType;
use half::f16;

use super::blocks::{Q4_1, Q5_0, Q8_0};

/// Rows per group.
pub const ROWS: usize = 16;

/// Bytes per group-block of `dtype` (the bytes of sixteen of its blocks).
pub fn group_block(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::Q8_0 => 16 * 34,
        GgmlDType::Q5_0 => 16 * 22,
        GgmlDType::Q4_1 => 16 * 20,
        other => unreachable!("{other:?} is not regrouped into lanes"),
    }
}

/// Whether `dtype` has a lane layout.
pub fn regroups(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q5_0 | GgmlDType::Q4_1)
}

/// Where a group-block's scales start (after the weights).
fn scales_at(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::Q8_0 => 512,
        GgmlDType::Q5_0 => 256 + 64,
        _ => 256,
    }
}

/// Sixteen rows' `u` values of one block position, `u[r][e]`, and their scales.
struct Unpacked {
    u: [[u8; 32]; ROWS],
    d: [f16; ROWS],
    m: [f16; ROWS],
}

/// A block format's weights as `u` bytes (see the module docs).
trait Block {
    fn unpack(&self) -> ([u8; 32], f16, f16);
}

impl Block for Q8_0 {
    fn unpack(&self) -> ([u8; 32], f16, f16) {
        (self.qs.map(|q| (q as u8) ^ 0x80), self.d, f16::ZERO)
    }
}

impl Block for Q5_0 {
    fn unpack(&self) -> ([u8; 32], f16, f16) {
        let fifth = u32::from_le_bytes(self.qh);
        let u = std::array::from_fn(|e| {
            let nibble = if e < 16 {
                self.qs[e] & 0xF
            } else {
                self.qs[e - 16] >> 4
            };
            nibble | (((fifth >> e) & 1) as u8) << 4
        });
        (u, self.d, f16::ZERO)
    }
}

impl Block for Q4_1 {
    fn unpack(&self) -> ([u8; 32], f16, f16) {
        let u = std::array::from_fn(|e| {
            if e < 16 {
                self.qs[e] & 0xF
            } else {
                self.qs[e - 16] >> 4
            }
        });
        (u, self.d, self.m)
    }
}

fn gather<B: Block>(blocks: &[B], per_row: usize, g: usize, b: usize) -> Unpacked {
    let mut out = Unpacked {
        u: [[0; 32]; ROWS],
        d: [f16::ZERO; ROWS],
        m: [f16::ZERO; ROWS],
    };
    for r in 0..ROWS {
        (out.u[r], out.d[r], out.m[r]) = blocks[(g * ROWS + r) * per_row + b].unpack();
    }
    out
}

/// Writes one group-block of `dtype` from sixteen rows' unpacked weights.
fn write(dtype: GgmlDType, w: &Unpacked, dst: &mut [u8]) {
    let at = |g: usize, r: usize, t: usize| 64 * g + 4 * r + t;
    match dtype {
        GgmlDType::Q8_0 => {
            for g in 0..8 {
                for r in 0..ROWS {
                    for t in 0..4 {
                        dst[at(g, r, t)] = w.u[r][4 * g + t];
                    }
                }
            }
        }
        _ => {
            for h in 0..4 {
                for r in 0..ROWS {
                    for t in 0..4 {
                        let (lo, hi) = (w.u[r][4 * h + t], w.u[r][16 + 4 * h + t]);
                        dst[at(h, r, t)] = (lo & 0xF) | (hi & 0xF) << 4;
                    }
                }
            }
            if dtype == GgmlDType::Q5_0 {
                for g in 0..8 {
                    let mut mask = 0u64;
                    for r in 0..ROWS {
                        for t in 0..4 {
                            let bit = (w.u[r][4 * g + t] >> 4) & 1;
                            mask |= u64::from(bit) << (4 * r + t);
                        }
                    }
                    dst[256 + 8 * g..256 + 8 * g + 8].copy_from_slice(&mask.to_le_bytes());
                }
            }
        }
    }
    let s = scales_at(dtype);
    for r in 0..ROWS {
        dst[s + 2 * r..s + 2 * r + 2].copy_from_slice(&w.d[r].to_le_bytes());
        if dtype == GgmlDType::Q4_1 {
            dst[s + 32 + 2 * r..s + 34 + 2 * r].copy_from_slice(&w.m[r].to_le_bytes());
        }
    }
}

/// `rows` (a multiple of [`ROWS`]) rows of `per_row` blocks of `dtype` (the raw bytes),
/// regrouped into `out` (as many bytes).
pub fn pack(dtype: GgmlDType, raw: &[u8], rows: usize, per_row: usize, out: &mut [u8]) {
    assert!(rows.is_multiple_of(ROWS) && raw.len() == out.len());
    let gb = group_block(dtype);
    for (i, dst) in out.chunks_exact_mut(gb).enumerate() {
        let (g, b) = (i / per_row, i % per_row);
        // SAFETY (each cast): `raw` is whole blocks of `dtype`, 2-aligned (checked when the
        // weight was made), viewed as the block mirror of that format.
        let w = unsafe {
            match dtype {
                GgmlDType::Q8_0 => gather(view::<Q8_0>(raw), per_row, g, b),
                GgmlDType::Q5_0 => gather(view::<Q5_0>(raw), per_row, g, b),
                _ => gather(view::<Q4_1>(raw), per_row, g, b),
            }
        };
        write(dtype, &w, dst);
    }
}

/// # Safety
/// `raw` holds whole, aligned `T` blocks.
unsafe fn view<T>(raw: &[u8]) -> &[T] {
    // SAFETY: forwarded to the caller.
    unsafe { std::slice::from_raw_parts(raw.as_ptr().cast(), raw.len() / size_of::<T>()) }
}

/// Row `r` of regrouped weights (`per_row` blocks a row) as f32, `d * u + t` as each format's
/// own dequantisation computes it.
pub fn row(dtype: GgmlDType, bytes: &[u8], per_row: usize, r: usize, out: &mut [f32]) {
    let gb = group_block(dtype);
    let (g, lane) = (r / ROWS, r % ROWS);
    let s = scales_at(dtype);
    for b in 0..per_row {
        let src = &bytes[(g * per_row + b) * gb..][..gb];
        let half = |at: usize| f16::from_le_bytes([src[at + 2 * lane], src[at + 2 * lane + 1]]);
        let d = half(s).to_f32();
        let dst = &mut out[32 * b..32 * b + 32];
        for (e, v) in dst.iter_mut().enumerate() {
            let (op, t) = (e / 4, e % 4);
            let u = match dtype {
                GgmlDType::Q8_0 => src[64 * op + 4 * lane + t],
                _ => {
                    let byte = src[64 * (op % 4) + 4 * lane + t];
                    let nibble = if op < 4 { byte & 0xF } else { byte >> 4 };
                    let fifth = if dtype == GgmlDType::Q5_0 {
                        let at = 256 + 8 * op;
                        let mask = u64::from_le_bytes(std::array::from_fn(|i| src[at + i]));
                        ((mask >> (4 * lane + t)) & 1) as u8
                    } else {
                        0
                    };
                    nibble | fifth << 4
                }
            };
            // As candle's `to_float`: Q8_0 `d * q`, Q5_0 `d * (u - 16)`, Q4_1 `d * u + m`.
            *v = match dtype {
                GgmlDType::Q8_0 => d * f32::from((u ^ 0x80) as i8),
                GgmlDType::Q5_0 => d * (i32::from(u) - 16) as f32,
                _ => d * f32::from(u) + half(s + 32).to_f32(),
            };
        }
    }
}

/// Each activation block's `sum(q)` (what the offsets and minimums multiply), for the kernel.
pub fn block_sums(ys: &[Q8_0], out: &mut Vec<i32>) {
    out.clear();
    out.extend(
        ys.iter()
            .map(|y| y.qs.iter().map(|&q| i32::from(q)).sum::<i32>()),
    );
}

#[cfg(target_arch = "x86_64")]
pub use avx512::product;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::lane_simd::{four, in_fours, prefetch_next, results};

    use candle_core::quantized::GgmlDType;

    use super::super::blocks::Q8_0;
    use super::{ROWS, group_block, scales_at};

    /// One group of `F`'s format against `C` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C; `group` holds `per_row`
    /// group-blocks, each `ys[c]` and `sums[c]` `per_row` entries.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn group<const F: u8, const C: usize>(
        group: &[u8],
        per_row: usize,
        ys: [&[Q8_0]; C],
        sums: [&[i32]; C],
    ) -> [[f32; ROWS]; C] {
        let dtype = format(F);
        let (gb, s) = (group_block(dtype), scales_at(dtype));
        let m4 = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); C];
        for b in 0..per_row {
            // SAFETY (the whole block): the offsets are inside group-block `b` of `group`,
            // and `b` inside every activation row.
            unsafe {
                let at = group.as_ptr().add(b * gb);
                prefetch_next(at, gb);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(at.add(s).cast()));
                // Q4_1's minimums; the others' offsets are taken off the integers.
                let (mins, offset) = match dtype {
                    GgmlDType::Q4_1 => (
                        _mm512_cvtph_ps(_mm256_loadu_si256(at.add(s + 32).cast())),
                        0,
                    ),
                    GgmlDType::Q5_0 => (_mm512_setzero_ps(), 16),
                    _ => (_mm512_setzero_ps(), 128),
                };
                let mut isum = [_mm512_setzero_si512(); C];
                for h in 0..4 {
                    let (lo, hi) = if dtype == GgmlDType::Q8_0 {
                        (
                            _mm512_loadu_si512(at.add(64 * h).cast()),
                            _mm512_loadu_si512(at.add(64 * (h + 4)).cast()),
                        )
                    } else {
                        let w = _mm512_loadu_si512(at.add(64 * h).cast());
                        let lo = _mm512_and_si512(w, m4);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
                        if dtype == GgmlDType::Q5_0 {
                            let fifth = |g: usize| -> __mmask64 {
                                std::ptr::read_unaligned(at.add(256 + 8 * g).cast())
                            };
                            let sixteen = _mm512_set1_epi8(16);
                            (
                                _mm512_mask_add_epi8(lo, fifth(h), lo, sixteen),
                                _mm512_mask_add_epi8(hi, fifth(h + 4), hi, sixteen),
                            )
                        } else {
                            (lo, hi)
                        }
                    };
                    for c in 0..C {
                        let y = ys[c].get_unchecked(b);
                        isum[c] = _mm512_dpbusd_epi32(isum[c], lo, four(&y.qs, 4 * h));
                        isum[c] = _mm512_dpbusd_epi32(isum[c], hi, four(&y.qs, 4 * (h + 4)));
                    }
                }
                for c in 0..C {
                    let y = ys[c].get_unchecked(b);
                    let e = y.d.to_f32();
                    let sum_y = *sums[c].get_unchecked(b);
                    let products = if offset == 0 {
                        isum[c]
                    } else {
                        _mm512_sub_epi32(isum[c], _mm512_set1_epi32(offset * sum_y))
                    };
                    let de = _mm512_mul_ps(d, _mm512_set1_ps(e));
                    acc[c] = _mm512_fmadd_ps(de, _mm512_cvtepi32_ps(products), acc[c]);
                    if dtype == GgmlDType::Q4_1 {
                        let ey = _mm512_set1_ps(e * sum_y as f32);
                        acc[c] = _mm512_fmadd_ps(mins, ey, acc[c]);
                    }
                }
            }
        }
        results(acc)
    }

    const Q8_0_ID: u8 = 0;
    const Q5_0_ID: u8 = 1;
    const Q4_1_ID: u8 = 2;

    #[inline]
    fn format(id: u8) -> GgmlDType {
        match id {
            Q8_0_ID => GgmlDType::Q8_0,
            Q5_0_ID => GgmlDType::Q5_0,
            _ => GgmlDType::Q4_1,
        }
    }

    /// Group `g` of regrouped `dtype` weights (`per_row` blocks a row) against every row of
    /// `ys` (`m` rows of `per_row` Q8_0 blocks, with their [`super::block_sums`]), each
    /// activation row's sixteen results handed to `emit(activation row, results)`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn product(
        dtype: GgmlDType,
        weights: &[u8],
        per_row: usize,
        g: usize,
        ys: &[Q8_0],
        sums: &[i32],
        m: usize,
        emit: &mut dyn FnMut(usize, &[f32; ROWS]),
    ) {
        let gb = group_block(dtype);
        let group_bytes = &weights[g * per_row * gb..(g + 1) * per_row * gb];
        assert!(ys.len() >= m * per_row && sums.len() >= m * per_row);
        let act = |i: usize| {
            (
                &ys[i * per_row..(i + 1) * per_row],
                &sums[i * per_row..(i + 1) * per_row],
            )
        };
        macro_rules! of_format {
            ($F:expr) => {
                in_fours!(m, |i0, C| {
                    let a: [_; C] = std::array::from_fn(|c| act(i0 + c));
                    // SAFETY: the features are enabled; the slices hold `per_row` entries each.
                    let v = unsafe {
                        group::<{ $F }, C>(
                            group_bytes,
                            per_row,
                            std::array::from_fn(|c| a[c].0),
                            std::array::from_fn(|c| a[c].1),
                        )
                    };
                    for (c, out) in v.iter().enumerate() {
                        emit(i0 + c, out);
                    }
                })
            };
        }
        match dtype {
            GgmlDType::Q8_0 => of_format!(Q8_0_ID),
            GgmlDType::Q5_0 => of_format!(Q5_0_ID),
            _ => of_format!(Q4_1_ID),
        }
    }
}
