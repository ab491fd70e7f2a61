//! AVX2/FMA dot products for the block formats candle 0.11 leaves to scalar code (Q4_1 against
//! Q8_1, Q5_0 against Q8_0): on the small models joule runs these were three quarters of all
//! CPU time. The algorithms are ggml's, written against the same block layouts; every kernel
//! is checked against candle's scalar reference on random blocks (`tests/kernels.rs`).
//!
//! Each `unsafe fn` here needs AVX2, FMA and F16C (AVX-512 ones also F, BW and VNNI); callers reach them only through
//! [`super::Kernels::detect`], which checks the CPU at run time.

use std::arch::x86_64::*;

use half::f16;

use super::blocks::{Q4_1, Q5_0, Q8_0, Q8_1};

/// An f16 scale as f32 in one F16C instruction (`half`'s portable conversion is a dozen, and
/// the kernels convert three or four per 32 weights).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// Eight f32 lanes summed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(x: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(x, 1);
    let lo = _mm256_castps256_ps128(x);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 nibbles as 32 bytes: the low nibbles of the 16 bytes first, then the high ones (the
/// order the blocks store their elements in).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: 16 readable bytes; unaligned load.
    let tmp = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 32 bits as 32 bytes, 0xFF where the bit is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits(qh: [u8; 4]) -> __m256i {
    let x = i32::from_le_bytes(qh);
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuffle);
    let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1))
}

/// Sums of products of unsigned bytes `a` and signed bytes `b`, as 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(a: __m256i, b: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(a, b);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Sums of products of signed bytes, as 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_i8(a: __m256i, b: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(a, a);
    let sy = _mm256_sign_epi8(b, a);
    dot_u8_i8(ax, sy)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(qs: &[i8; 32]) -> __m256i {
    // SAFETY: 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// Q4_1 weights against Q8_1 activations.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_q8_1(xs: &[Q4_1], ys: &[Q8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        let dx = h2f(x.d);
        let dy = h2f(y.d);
        mins += h2f(x.m) * h2f(y.s);
        // SAFETY: AVX2 is enabled for this function; the loads read inside the blocks.
        let (qx, qy) = unsafe { (nibbles(&x.qs), load32(&y.qs)) };
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), dot_u8_i8(qx, qy), acc);
    }
    hsum(acc) + mins
}

/// Q5_0 weights against Q8_0 activations.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0_q8_0(xs: &[Q5_0], ys: &[Q8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
        // SAFETY: AVX2 is enabled for this function; the loads read inside the blocks.
        let (low, qy) = unsafe { (nibbles(&x.qs), load32(&y.qs)) };
        // The fifth bit: where it is clear the value is the nibble minus 16, i.e. the nibble
        // with 0xF0 or-ed in, read as a signed byte.
        let high = _mm256_andnot_si256(bits(x.qh), _mm256_set1_epi8(0xF0u8 as i8));
        let qx = _mm256_or_si256(low, high);
        acc = _mm256_fmadd_ps(d, dot_i8_i8(qx, qy), acc);
    }
    hsum(acc)
}

/// Q8_0 weights against Q8_0 activations (candle has one too; this one keeps the fast path
/// independent of which of candle's kernels a build picks).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0(xs: &[Q8_0], ys: &[Q8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
        // SAFETY: AVX2 is enabled for this function; the loads read inside the blocks.
        let (qx, qy) = unsafe { (load32(&x.qs), load32(&y.qs)) };
        acc = _mm256_fmadd_ps(d, dot_i8_i8(qx, qy), acc);
    }
    hsum(acc)
}

/// `sum(a[i] * b[i])` over f32, eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, inside both slices.
        unsafe {
            let a0 = _mm256_loadu_ps(a.as_ptr().add(i));
            let b0 = _mm256_loadu_ps(b.as_ptr().add(i));
            let a1 = _mm256_loadu_ps(a.as_ptr().add(i + 8));
            let b1 = _mm256_loadu_ps(b.as_ptr().add(i + 8));
            acc0 = _mm256_fmadd_ps(a0, b0, acc0);
            acc1 = _mm256_fmadd_ps(a1, b1, acc1);
        }
        i += 16;
    }
    let mut sum = hsum(_mm256_add_ps(acc0, acc1));
    while i < n {
        sum += a[i] * b[i];
        i += 1;
    }
    sum
}

/// `y[i] += a * x[i]`, eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, inside both slices.
        unsafe {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let yv = _mm256_loadu_ps(y.as_ptr().add(i));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_fmadd_ps(av, xv, yv));
        }
        i += 8;
    }
    while i < n {
        y[i] += a * x[i];
        i += 1;
    }
}

/// AVX-512 with VNNI: the K-quant dot products (one and four activation rows) and the
/// activation quantisers. The 32-weight formats' AVX-512 products are register-tiled, in
/// [`super::tiled`]; regrouped Q4_K rows' in [`super::interleaved`].
pub mod avx512 {
    use std::arch::x86_64::*;

    use super::super::blocks::{Q4K, Q6K, Q8_0, Q8_1, Q8K};
    use super::h2f;

    /// Q4_K weights against Q8_K activations (decoding the 1.5B model, most of whose weights
    /// are Q4_K). Each 32 bytes of nibbles hold two sub-blocks, low nibbles then high, whose
    /// activations are the next 64 bytes: one register of both; `vpmaddubsw` multiplies and
    /// pairs them into 16-bit sums and `vpdpwssd` applies each sub-block's 6-bit scale and adds
    /// into 32-bit integers, exactly, so a block costs one conversion. The minimums come off
    /// once per block from the activations' precomputed sums of 16.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_q4k_q8k(xs: &[Q4K], ys: &[Q8K]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys) {
            // SAFETY: the features are enabled for this function.
            unsafe { q4k_step(&q4k_weights(x), y, &mut acc, &mut acc_m) };
        }
        q4k_total(acc, acc_m)
    }

    /// Q4_K weights against four activation rows: each block's scales and nibbles unpacked
    /// once; every row takes the single product's steps, so its result does not depend on
    /// its company.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot4_q4k_q8k(xs: &[Q4K], ys: [&[Q8K]; 4]) -> [f32; 4] {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut acc_m = [_mm256_setzero_ps(); 4];
        for (i, x) in xs.iter().enumerate() {
            // SAFETY: the features are enabled for this function.
            unsafe {
                let w = q4k_weights(x);
                for t in 0..4 {
                    q4k_step(&w, ys[t].get_unchecked(i), &mut acc[t], &mut acc_m[t]);
                }
            }
        }
        std::array::from_fn(|t| q4k_total(acc[t], acc_m[t]))
    }

    /// A Q4_K block's weight side, unpacked once for every activation row it meets: its
    /// nibbles (two sub-blocks per register, low nibbles then high), each register's two
    /// sub-block scales as 16-bit lanes (0-15 sub-block 2j's, 16-31 2j + 1's), its 6-bit
    /// minimums each twice (one per 16 activations' sum), and its two scales as f32.
    struct Q4kWeights {
        q4: [__m512i; 4],
        scales: [__m512i; 4],
        mins: __m256i,
        d: f32,
        dmin: f32,
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn q4k_weights(x: &Q4K) -> Q4kWeights {
        const KMASK1: u32 = 0x3f3f3f3f;
        const KMASK2: u32 = 0x0f0f0f0f;
        const KMASK3: u32 = 0x03030303;
        let mut u = [0u32; 4];
        for (w, b) in u.iter_mut().zip(x.scales.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
        let mins_hi = u[1] & KMASK1;
        u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
        u[2] = mins_hi;
        u[0] &= KMASK1;
        // Words 0-7: the sub-blocks' scales; 8-15: their minimums.
        let packed = _mm_set_epi32(u[3] as i32, u[2] as i32, u[1] as i32, u[0] as i32);
        let all = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(packed));
        let m4 = _mm512_set1_epi8(0xF);
        let spread = |lo: i16, hi: i16| {
            _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_set1_epi16(lo)),
                _mm256_set1_epi16(hi),
                1,
            )
        };
        let twice = _mm512_castsi256_si512(_mm256_set_epi16(
            15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8,
        ));
        Q4kWeights {
            q4: std::array::from_fn(|j| {
                // SAFETY: 32 bytes at 32j inside `qs` (128 bytes).
                let bits = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * j).cast()) };
                _mm512_and_si512(
                    _mm512_inserti64x4(_mm512_castsi256_si512(bits), _mm256_srli_epi16(bits, 4), 1),
                    m4,
                )
            }),
            scales: std::array::from_fn(|j| {
                _mm512_permutexvar_epi16(spread(2 * j as i16, 2 * j as i16 + 1), all)
            }),
            mins: _mm512_castsi512_si256(_mm512_permutexvar_epi16(twice, all)),
            d: h2f(x.d),
            dmin: h2f(x.dmin),
        }
    }

    /// One Q4_K block against one Q8_K block: the sub-block products times their scales into
    /// `acc`, the minimums (from the activations' sums of 16) into `acc_m`. The integer sum of
    /// each lane is exact (at most 4 x 15 x 127 x 63 per register, four registers), and
    /// `vpmaddubsw` cannot saturate (two products of at most 15 x 127).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn q4k_step(w: &Q4kWeights, y: &Q8K, acc: &mut __m512, acc_m: &mut __m256) {
        // SAFETY: `bsums` is 16 i16s, 32 bytes.
        let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let m = _mm256_madd_epi16(w.mins, bsums);
        *acc_m = _mm256_fmadd_ps(_mm256_set1_ps(-y.d * w.dmin), _mm256_cvtepi32_ps(m), *acc_m);
        let mut sum = _mm512_setzero_si512();
        for (j, (q4, scale)) in w.q4.iter().zip(&w.scales).enumerate() {
            // SAFETY: 64 bytes at 64j inside y's 256.
            let q8 = unsafe { _mm512_loadu_si512(y.qs.as_ptr().add(64 * j).cast()) };
            sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(*q4, q8), *scale);
        }
        *acc = _mm512_fmadd_ps(_mm512_set1_ps(y.d * w.d), _mm512_cvtepi32_ps(sum), *acc);
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn q4k_total(acc: __m512, acc_m: __m256) -> f32 {
        let m = _mm_add_ps(
            _mm256_castps256_ps128(acc_m),
            _mm256_extractf128_ps(acc_m, 1),
        );
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        _mm512_reduce_add_ps(acc) + _mm_cvtss_f32(m)
    }

    /// Q6_K weights against Q8_K activations (Qwen2.5's `ffn_down` in half the layers, and
    /// the output of K-quant files). Each half block of 128 weights is 64 bytes of low nibbles
    /// (`ql`) and 32 of high bit pairs (`qh`): the low nibbles of `ql[0..64]` with pairs 0 and 1
    /// of `qh[0..32]` are weights 0-63, the high nibbles with pairs 2 and 3 weights 64-127, so
    /// two 512-bit registers hold a half with the activations in their order. The offset of 32
    /// is taken off the bytes and the product is signed (`|q - 32|` against `y` with its sign,
    /// one `vpdpbusd`), so no correction from the activations' sums is needed.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_q6k_q8k(xs: &[Q6K], ys: &[Q8K]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for (x, y) in xs.iter().zip(ys) {
            // SAFETY: the features are enabled for this function.
            unsafe { q6k_step(&q6k_weights(x), x, y, &mut acc) };
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Q6_K weights against four activation rows, each block unpacked once (see
    /// [`dot4_q4k_q8k`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot4_q6k_q8k(xs: &[Q6K], ys: [&[Q8K]; 4]) -> [f32; 4] {
        let mut acc = [_mm512_setzero_ps(); 4];
        for (i, x) in xs.iter().enumerate() {
            // SAFETY: the features are enabled for this function.
            unsafe {
                let w = q6k_weights(x);
                for t in 0..4 {
                    q6k_step(&w, x, &ys[t][i], &mut acc[t]);
                }
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }

    /// A Q6_K block's weight side: four registers of 64 weights as magnitudes of `q - 32`
    /// with the masks of the negative ones, and each register's four sub-block scales spread
    /// over the lanes their products land in.
    struct Q6kWeights {
        q: [(__m512i, __mmask64); 4],
        scales: [__m512; 4],
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn q6k_weights(x: &Q6K) -> Q6kWeights {
        let m4 = _mm512_set1_epi8(0x0F);
        let m2 = _mm512_set1_epi8(0x30);
        let offset = _mm512_set1_epi8(32);
        // Per 256-bit half, in 16-bit words: pairs 0 and 1 moved up to bits 4-5, and pairs 2
        // and 3.
        let up = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let down = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        let signed = |v: __m512i| {
            let v = _mm512_sub_epi8(v, offset);
            (_mm512_abs_epi8(v), _mm512_movepi8_mask(v))
        };
        let mut q = [(_mm512_setzero_si512(), 0); 4];
        for half in 0..2 {
            // SAFETY: 64 bytes at 64 half inside `ql` (128), 32 at 32 half inside `qh` (64).
            let (ql, qh) = unsafe {
                (
                    _mm512_loadu_si512(x.ql.as_ptr().add(64 * half).cast()),
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(x.qh.as_ptr().add(32 * half).cast())),
                )
            };
            let lo = _mm512_and_si512(ql, m4);
            let hi = _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4);
            let h_lo = _mm512_and_si512(_mm512_sllv_epi16(qh, up), m2);
            let h_hi = _mm512_and_si512(_mm512_srlv_epi16(qh, down), m2);
            q[2 * half] = signed(_mm512_or_si512(lo, h_lo));
            q[2 * half + 1] = signed(_mm512_or_si512(hi, h_hi));
        }
        // SAFETY: 16 bytes, the scales.
        let all = unsafe {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                x.scales.as_ptr().cast(),
            )))
        };
        Q6kWeights {
            q,
            scales: std::array::from_fn(|j| {
                let j = 4 * j as i32;
                let pick = _mm512_set_epi32(
                    j + 3,
                    j + 3,
                    j + 3,
                    j + 3,
                    j + 2,
                    j + 2,
                    j + 2,
                    j + 2,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j,
                    j,
                    j,
                    j,
                );
                _mm512_permutexvar_ps(pick, all)
            }),
        }
    }

    /// One Q6_K block against one Q8_K block into `acc`. Each lane's sum is exact: four
    /// products of at most 32 x 127, times a scale of at most 128, over four registers, stays
    /// below 2^24.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn q6k_step(w: &Q6kWeights, x: &Q6K, y: &Q8K, acc: &mut __m512) {
        let zero = _mm512_setzero_si512();
        let mut sum = _mm512_setzero_ps();
        for (j, ((ax, negative), scale)) in w.q.iter().zip(&w.scales).enumerate() {
            // SAFETY: 64 bytes at 64j inside y's 256.
            let qy = unsafe { _mm512_loadu_si512(y.qs.as_ptr().add(64 * j).cast()) };
            let sy = _mm512_mask_sub_epi8(qy, *negative, zero, qy);
            let dot = _mm512_dpbusd_epi32(zero, *ax, sy);
            sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), *scale, sum);
        }
        *acc = _mm512_fmadd_ps(_mm512_set1_ps(y.d * h2f(x.d)), sum, *acc);
    }

    /// `f32::round` (half away from zero) of 16 lanes, exactly: truncate, then step away from
    /// zero where the dropped fraction is at least a half.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn round_away(v: __m512) -> __m512 {
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
        // 1.0 with v's sign (integer ops: the float ones need AVX-512 DQ).
        let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
        let one = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(_mm512_set1_ps(1.0)),
            sign,
        ));
        _mm512_mask_add_ps(t, up, t, one)
    }

    /// One block of 32 values as 8-bit integers and their scale, as candle's `from_float`
    /// computes them (the same scale, the same rounding), and the integers' sum.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn quantize_block(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
        // SAFETY: `x` holds 32 floats; `qs` 32 bytes.
        unsafe {
            let a = _mm512_loadu_ps(x.as_ptr());
            let b = _mm512_loadu_ps(x.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm512_set1_ps(id);
            let qa = _mm512_cvtps_epi32(round_away(_mm512_mul_ps(a, idv)));
            let qb = _mm512_cvtps_epi32(round_away(_mm512_mul_ps(b, idv)));
            _mm_storeu_si128(qs.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qa));
            _mm_storeu_si128(qs.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(qb));
            (d, _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)))
        }
    }

    /// Activations to Q8_0 blocks, bit for bit what candle's scalar `from_float` writes.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn quantize_q8_0(xs: &[f32], ys: &mut [Q8_0]) {
        for (x, y) in xs.chunks_exact(32).zip(ys) {
            // SAFETY: the features are enabled; each chunk has 32 floats.
            let (d, _) = unsafe { quantize_block(x, &mut y.qs) };
            y.d = half::f16::from_f32(d);
        }
    }

    /// Activations to Q8_K blocks, bit for bit what candle's scalar `from_float` writes: the
    /// scale from the first value of largest magnitude (its sign included), each value
    /// `round(-127 / max * x)`, and the sums of each 16 (one register each).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn quantize_q8k(xs: &[f32], ys: &mut [Q8K]) {
        for (x, y) in xs.chunks_exact(256).zip(ys) {
            // SAFETY (every load and store): 256 floats in `x`, 256 bytes in `y.qs`.
            unsafe {
                let load = |i: usize| _mm512_loadu_ps(x.as_ptr().add(16 * i));
                let mut amax = _mm512_setzero_ps();
                for i in 0..16 {
                    amax = _mm512_max_ps(amax, _mm512_abs_ps(load(i)));
                }
                let amax = _mm512_reduce_max_ps(amax);
                if amax == 0.0 {
                    y.d = 0.0;
                    y.qs.fill(0);
                    y.bsums.fill(0);
                    continue;
                }
                let at = (0..16)
                    .find_map(|i| {
                        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(
                            _mm512_abs_ps(load(i)),
                            _mm512_set1_ps(amax),
                        );
                        (hit != 0).then(|| 16 * i + hit.trailing_zeros() as usize)
                    })
                    .unwrap_or(0);
                let iscale = -127.0 / x[at];
                let scale = _mm512_set1_ps(iscale);
                for i in 0..16 {
                    let v = round_away(_mm512_mul_ps(scale, load(i)));
                    let v = _mm512_min_ps(
                        _mm512_max_ps(v, _mm512_set1_ps(-128.0)),
                        _mm512_set1_ps(127.0),
                    );
                    let q = _mm512_cvtps_epi32(v);
                    _mm_storeu_si128(
                        y.qs.as_mut_ptr().add(16 * i).cast(),
                        _mm512_cvtepi32_epi8(q),
                    );
                    y.bsums[i] = _mm512_reduce_add_epi32(q) as i16;
                }
                y.d = 1.0 / iscale;
            }
        }
    }

    /// Activations to Q8_1 blocks (with `s = sum x d` rounded as candle rounds it).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn quantize_q8_1(xs: &[f32], ys: &mut [Q8_1]) {
        for (x, y) in xs.chunks_exact(32).zip(ys) {
            // SAFETY: the features are enabled; each chunk has 32 floats.
            let (d, sum) = unsafe { quantize_block(x, &mut y.qs) };
            y.d = half::f16::from_f32(d);
            y.s = half::f16::from_f32(sum as f32) * y.d;
        }
    }
}
