//! The byte layouts of the GGUF block formats the fast kernels read, mirrored from candle's
//! (whose fields are private) and checked against them: a block read here is the same bytes
//! candle's `BlockQ4_1` etc. would see, so the two can be compared and mixed freely.

use half::f16;

/// 32 weights: `d * nibble + m`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// 32 weights: `d * (nibble | fifth bit << 4) - 16 * d`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 32 values: `d * q`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// 32 values: `d * q`, with `s = d * sum(q)` for the offset of Q4_1/Q5_1 weights.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; 32],
}

/// 256 weights in eight sub-blocks of 32: `d * scale_j * nibble - dmin * min_j`, the eight
/// 6-bit scales and mins packed into 12 bytes.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// 256 weights in sixteen sub-blocks of 16: `d * scale_j * (q - 32)`, `q` six bits, its low
/// four in `ql` and high two in `qh` (see [`super::x86::avx512::dot_q6k_q8k`] for the order).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

/// 256 values: `d * q`, with the sums of each 16 for the K-quants' minimums.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

use candle_core::quantized::k_quants as kq;
use std::mem::{align_of, size_of};

const _: () = {
    assert!(size_of::<Q4_1>() == size_of::<kq::BlockQ4_1>());
    assert!(size_of::<Q5_0>() == size_of::<kq::BlockQ5_0>());
    assert!(size_of::<Q8_0>() == size_of::<kq::BlockQ8_0>());
    assert!(size_of::<Q8_1>() == size_of::<kq::BlockQ8_1>());
    assert!(align_of::<Q4_1>() == align_of::<kq::BlockQ4_1>());
    assert!(align_of::<Q5_0>() == align_of::<kq::BlockQ5_0>());
    assert!(align_of::<Q8_0>() == align_of::<kq::BlockQ8_0>());
    assert!(align_of::<Q8_1>() == align_of::<kq::BlockQ8_1>());
    assert!(size_of::<Q4K>() == size_of::<kq::BlockQ4K>());
    assert!(size_of::<Q8K>() == size_of::<kq::BlockQ8K>());
    assert!(size_of::<Q6K>() == size_of::<kq::BlockQ6K>());
    assert!(align_of::<Q6K>() == align_of::<kq::BlockQ6K>());
    assert!(align_of::<Q4K>() == align_of::<kq::BlockQ4K>());
    assert!(align_of::<Q8K>() == align_of::<kq::BlockQ8K>());
};

/// [`cast`] for a mutable slice.
///
/// # Safety
/// As for [`cast`].
pub unsafe fn cast_mut<A, B>(a: &mut [A]) -> &mut [B] {
    assert_eq!(size_of::<A>(), size_of::<B>());
    assert_eq!(align_of::<A>(), align_of::<B>());
    // SAFETY: as in `cast`.
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr().cast(), a.len()) }
}

/// Views blocks of one layout as another of the same size and alignment (candle's blocks as
/// these mirrors).
///
/// # Safety
/// `A` and `B` must be `repr(C)` plain-old-data types with identical layout.
pub unsafe fn cast<A, B>(a: &[A]) -> &[B] {
    assert_eq!(size_of::<A>(), size_of::<B>());
    assert_eq!(align_of::<A>(), align_of::<B>());
    // SAFETY: same size and alignment, and the caller promises identical plain layouts.
    unsafe { std::slice::from_raw_parts(a.as_ptr().cast(), a.len()) }
}
