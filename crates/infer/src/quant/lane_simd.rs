//! The steps every lane-per-row product shares ([`super::lanes`], [`super::interleaved`],
//! [`super::q6k_lanes`]): four activation bytes broadcast to all sixteen lanes, and asking for
//! the next group-block while this one is multiplied (the rows' bytes stream from memory once
//! per step, and at several activation rows the kernels otherwise wait on each group-block's
//! first cache lines: the 1.5B model decoded at 16 tok/s without it, 21 with it).

use std::arch::x86_64::*;

/// The four bytes at `at` of `qs`, broadcast to every lane (the activations of one operand).
///
/// # Safety
/// The CPU must have AVX-512 F; `at + 4 <= qs.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn four(qs: &[i8], at: usize) -> __m512i {
    debug_assert!(at + 4 <= qs.len());
    // SAFETY: the caller keeps the four bytes inside `qs`.
    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(qs.as_ptr().add(at).cast()) })
}

/// Prefetches the `len` bytes after the `len` at `at` (the next group-block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub fn prefetch_next(at: *const u8, len: usize) {
    for line in (0..len).step_by(64) {
        // A hint: an address past the end is never read.
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(len + line).cast());
    }
}

/// Runs `$body` over `0..$m` activation rows four at a time (the leftover as three, two or
/// one), with `$i0` the first row and `$C` a constant for how many: each count is its own
/// const-generic kernel, every row of it taking the same steps.
macro_rules! in_fours {
    ($m:expr, |$i0:ident, $C:ident| $body:block) => {{
        let m: usize = $m;
        let mut $i0 = 0;
        while $i0 < m {
            let c = (m - $i0).min(4);
            match c {
                4 => {
                    const $C: usize = 4;
                    $body
                }
                3 => {
                    const $C: usize = 3;
                    $body
                }
                2 => {
                    const $C: usize = 2;
                    $body
                }
                _ => {
                    const $C: usize = 1;
                    $body
                }
            }
            $i0 += c;
        }
    }};
}
pub(crate) use in_fours;

/// Each activation row's sixteen lanes (one per weight row) as the products' results.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub fn results<const C: usize>(acc: [__m512; C]) -> [[f32; 16]; C] {
    std::array::from_fn(|c| {
        let mut out = [0f32; 16];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc[c]) };
        out
    })
}
