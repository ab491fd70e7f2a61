//! Every SIMD kernel against its scalar reference (candle's generic code) on random blocks, and
//! the tiled, parallel matrix product against a plain one over the dequantised weights.

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{self as kq, GgmlType};
use joule_infer::Kernels;
use joule_infer::quant::{Aligned, QWeight, tiled};
use proptest::prelude::*;

/// Random values with a spread of magnitudes, as activations have.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            let scale = [0.01, 0.3, 1.0, 4.0][(s >> 20) as usize % 4];
            u * scale
        })
        .collect()
}

fn blocks<T: GgmlType>(x: &[f32]) -> Vec<T> {
    let mut b = vec![T::zeros(); x.len() / T::BLCK_SIZE];
    T::from_float(x, &mut b);
    b
}

fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-4 * scale.max(1.0)
}

/// `sum |w| |a|`: the size the rounding error of a dot product scales with.
fn magnitude(w: &[f32], a: &[f32]) -> f32 {
    w.iter().zip(a).map(|(x, y)| (x * y).abs()).sum()
}

fn check<T: GgmlType>(seed: u64, n: usize, fast: fn(usize, &[T], &[T::VecDotType]) -> f32) {
    let w = values(seed, n);
    let a = values(seed ^ 0x9e37, n);
    let (wq, aq) = (blocks::<T>(&w), blocks::<T::VecDotType>(&a));
    let reference = T::vec_dot_unopt(n, &wq, &aq);
    let got = fast(n, &wq, &aq);
    assert!(
        close(got, reference, magnitude(&w, &a)),
        "{:?} n={n} seed={seed}: {got} vs reference {reference}",
        T::DTYPE
    );
}

/// A four-row kernel gives each row what the scalar reference gives it, and bit for bit what
/// the single-row kernel gives it: a row's product must not depend on its company in a batch
/// (greedy answers would otherwise change with the batch).
fn check4<T: GgmlType>(
    seed: u64,
    n: usize,
    single: joule_infer::quant::Dot<T>,
    fast: Option<joule_infer::quant::Dot4<T>>,
) {
    let Some(fast) = fast else { return };
    let w = values(seed, n);
    let wq = blocks::<T>(&w);
    let acts: Vec<Vec<f32>> = (0..4)
        .map(|t| values(seed ^ ((t + 1) * 0x51ed), n))
        .collect();
    let aq: Vec<Vec<T::VecDotType>> = acts.iter().map(|a| blocks::<T::VecDotType>(a)).collect();
    let got = fast(&wq, [&aq[0], &aq[1], &aq[2], &aq[3]]);
    for t in 0..4 {
        let reference = T::vec_dot_unopt(n, &wq, &aq[t]);
        assert!(
            close(got[t], reference, magnitude(&w, &acts[t])),
            "{:?} x4 row {t} n={n} seed={seed}: {} vs reference {reference}",
            T::DTYPE,
            got[t]
        );
        let alone = single(n, &wq, &aq[t]);
        assert_eq!(
            got[t].to_bits(),
            alone.to_bits(),
            "{:?} x4 row {t} n={n} seed={seed}: {} in company, {alone} alone",
            T::DTYPE,
            got[t]
        );
    }
}

/// A register-tiled product (weight rows against activation rows, in tiles of up to four by
/// four and the leftovers) gives every pair what the scalar reference gives it, and bit for bit
/// what the single-row kernel gives it.
fn check_tiled<T: GgmlType>(
    seed: u64,
    n: usize,
    single: joule_infer::quant::Dot<T>,
    fast: Option<joule_infer::quant::Tiled<T>>,
) {
    let Some(fast) = fast else { return };
    // Rows and activation counts that leave partial tiles both ways.
    let (rows, m) = (6 + seed as usize % 3, 1 + (seed >> 8) as usize % 7);
    let w: Vec<Vec<f32>> = (0..rows)
        .map(|r| values(seed ^ (r as u64 * 0x77), n))
        .collect();
    let wq: Vec<T> = w.iter().flat_map(|r| blocks::<T>(r)).collect();
    let acts: Vec<Vec<f32>> = (0..m)
        .map(|t| values(seed ^ ((t as u64 + 1) * 0x51ed), n))
        .collect();
    let aq: Vec<T::VecDotType> = acts
        .iter()
        .flat_map(|a| blocks::<T::VecDotType>(a))
        .collect();
    let per_row = n / 32;
    let mut pairs = vec![tiled::Pair::ZERO; m * (per_row / 2)];
    // SAFETY: candle's activation blocks viewed as their mirrors, by their format.
    unsafe {
        use joule_infer::quant::blocks::{self as mirrors, cast};
        match T::VecDotType::DTYPE {
            GgmlDType::Q8_0 => tiled::pack::<mirrors::Q8_0>(cast(&aq), per_row, &mut pairs),
            GgmlDType::Q8_1 => tiled::pack::<mirrors::Q8_1>(cast(&aq), per_row, &mut pairs),
            other => panic!("no tiled kernel reads {other:?}"),
        }
    }
    let packed = tiled::Packed {
        blocks: &aq,
        pairs: &pairs,
        m,
        per_row,
    };
    let mut got = vec![f32::NAN; m * rows];
    let mut seen = 0;
    // Two calls over halves of the rows, as two tasks would split them.
    for part in [0..rows / 2, rows / 2..rows] {
        fast(&wq, part, packed, &mut |i, r, v| {
            got[i * rows + r] = v;
            seen += 1;
        });
    }
    assert_eq!(
        seen,
        m * rows,
        "{:?}: every (row, activation) once",
        T::DTYPE
    );
    for r in 0..rows {
        let wr = &wq[r * per_row..(r + 1) * per_row];
        for i in 0..m {
            let ai = &aq[i * per_row..(i + 1) * per_row];
            let reference = T::vec_dot_unopt(n, wr, ai);
            let v = got[i * rows + r];
            assert!(
                close(v, reference, magnitude(&w[r], &acts[i])),
                "{:?} tiled ({i},{r}) n={n} seed={seed}: {v} vs reference {reference}",
                T::DTYPE
            );
            let alone = single(n, wr, ai);
            assert_eq!(
                v.to_bits(),
                alone.to_bits(),
                "{:?} tiled ({i},{r}) n={n} seed={seed}: {v} tiled, {alone} alone",
                T::DTYPE
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn simd_dot_products_match_the_scalar_reference(seed in any::<u64>(), blocks in 1usize..24) {
        for k in Kernels::available() {
        let n = blocks * 32;
        check::<kq::BlockQ4_1>(seed, n, k.q4_1);
        check::<kq::BlockQ5_0>(seed, n, k.q5_0);
        check::<kq::BlockQ8_0>(seed, n, k.q8_0);
        // K-quant blocks are 256 wide.
        check::<kq::BlockQ4K>(seed, n.div_ceil(256) * 256, k.q4k);
        check_tiled::<kq::BlockQ4_1>(seed, n, k.q4_1, k.q4_1_tiled);
        check_tiled::<kq::BlockQ5_0>(seed, n, k.q5_0, k.q5_0_tiled);
        check_tiled::<kq::BlockQ8_0>(seed, n, k.q8_0, k.q8_0_tiled);
        check4::<kq::BlockQ4K>(seed, n.div_ceil(256) * 256, k.q4k, k.q4k_x4);
        check::<kq::BlockQ6K>(seed, n.div_ceil(256) * 256, k.q6k);
        check4::<kq::BlockQ6K>(seed, n.div_ceil(256) * 256, k.q6k, k.q6k_x4);
        let (a, b) = (values(seed, n + 7), values(seed + 1, n + 7));
        let reference: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        prop_assert!(close((k.f32)(&a, &b), reference, magnitude(&a, &b)));
        let mut y = values(seed + 2, n + 3);
        let mut y_ref = y.clone();
        (k.axpy)(0.37, &a[..n + 3], &mut y);
        (Kernels::scalar().axpy)(0.37, &a[..n + 3], &mut y_ref);
        for (p, q) in y.iter().zip(&y_ref) {
            prop_assert!(close(*p, *q, p.abs()));
        }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn simd_quantisers_write_what_candle_writes(seed in any::<u64>(), blocks in 1usize..16) {
        let mut x = values(seed, blocks * 32);
        // Exact halves after scaling, where rounding conventions differ: 127 * j / (2 * 127).
        x[0] = 1.0;
        x[1] = 0.5 / 127.0;
        x[2] = -1.5 / 127.0;
        for k in Kernels::available() {
            if let Some(f) = k.to_q8_0 {
                let mut got = vec![kq::BlockQ8_0::zeros(); blocks];
                f(&x, &mut got);
                prop_assert_eq!(got, self::blocks::<kq::BlockQ8_0>(&x));
            }
            if let Some(f) = k.to_q8k {
                // Whole 256-value blocks, one of them all zeros, one whose largest magnitude
                // comes twice with both signs (the first sets the scale's sign).
                let mut x = values(seed, blocks.div_ceil(8) * 256 + 512);
                x[256..512].fill(0.0);
                x[600] = -9.0;
                x[700] = 9.0;
                let n = x.len() / 256;
                let mut got = vec![kq::BlockQ8K::zeros(); n];
                f(&x, &mut got);
                let want = self::blocks::<kq::BlockQ8K>(&x);
                for (g, w) in got.iter().zip(&want) {
                    // SAFETY: candle's Q8_K blocks viewed as their mirror.
                    let (g, w): (&[joule_infer::quant::blocks::Q8K], &[joule_infer::quant::blocks::Q8K]) =
                        unsafe { (joule_infer::quant::blocks::cast(std::slice::from_ref(g)), joule_infer::quant::blocks::cast(std::slice::from_ref(w))) };
                    prop_assert_eq!(g[0].d.to_bits(), w[0].d.to_bits());
                    prop_assert_eq!(g[0].qs, w[0].qs);
                    prop_assert_eq!(g[0].bsums, w[0].bsums);
                }
            }
            if let Some(f) = k.to_q8_1 {
                let mut got = vec![kq::BlockQ8_1::zeros(); blocks];
                f(&x, &mut got);
                prop_assert_eq!(got, self::blocks::<kq::BlockQ8_1>(&x));
            }
        }
    }
}

#[test]
fn this_machine_gets_the_simd_kernels_where_it_has_them() {
    let names: Vec<&str> = Kernels::available().iter().map(|k| k.name).collect();
    assert_eq!(Kernels::detect().name, names[0]);
    assert_eq!(*names.last().unwrap(), "scalar");
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let vnni = avx2
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni");
        assert_eq!(names.contains(&"avx2"), avx2, "{names:?}");
        assert_eq!(names.contains(&"avx512-vnni"), vnni, "{names:?}");
    }
}

fn weight(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> QWeight {
    let w = values(seed, rows * cols);
    let bytes: Vec<u8> = match dtype {
        GgmlDType::Q4_1 => raw(&blocks::<kq::BlockQ4_1>(&w)),
        GgmlDType::Q5_0 => raw(&blocks::<kq::BlockQ5_0>(&w)),
        GgmlDType::Q8_0 => raw(&blocks::<kq::BlockQ8_0>(&w)),
        GgmlDType::Q4_0 => raw(&blocks::<kq::BlockQ4_0>(&w)),
        GgmlDType::Q4K => raw(&blocks::<kq::BlockQ4K>(&w)),
        GgmlDType::Q6K => raw(&blocks::<kq::BlockQ6K>(&w)),
        GgmlDType::F32 => raw(&w),
        other => panic!("no test weights for {other:?}"),
    };
    QWeight::new(dtype, rows, cols, Arc::new(Aligned::new(&bytes)), 0).unwrap()
}

fn raw<T>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain-old-data blocks viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        .to_vec()
}

#[test]
fn the_tiled_parallel_product_equals_a_plain_one_for_every_format() {
    let k = Kernels::detect();
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::F32,
    ] {
        // Batches of 1 (decode) and several (prefill); rows that regroup sixteen at a time
        // where the kernels can (three groups), and rows that do not (the tiled and four-row
        // products).
        for rows in [48, 45] {
            let cols = 512 + 32 * (dtype.block_size() == 32) as usize;
            let plain = weight(dtype, rows, cols, 7);
            let dense = plain.to_f32();
            // SAFETY: `plain`'s bytes are an `Aligned` buffer, which `prepare` leaves readable.
            let w = unsafe { plain.clone().prepare(&k) }.unwrap();
            let regrouped = w.regrouped();
            assert_eq!(
                regrouped,
                rows % 16 == 0 && dtype != GgmlDType::F32 && dtype != GgmlDType::Q4_0,
                "{dtype:?} {rows} rows"
            );
            assert_eq!(
                w.to_f32(),
                dense,
                "{dtype:?}: the prepared matrix holds the same weights"
            );
            for m in [1, 5, 9] {
                let x = values(11 + m as u64, m * cols);
                let mut out = vec![0f32; m * rows];
                w.matmul(&k, &x, m, &mut out);
                for i in 0..m {
                    for r in 0..rows {
                        let wr = &dense[r * cols..(r + 1) * cols];
                        let xi = &x[i * cols..(i + 1) * cols];
                        let exact: f32 = wr.iter().zip(xi).map(|(a, b)| a * b).sum();
                        // Activations are quantised to 8 bits as in candle and ggml: about 1% of
                        // the dot product's magnitude.
                        let tol = 0.02 * magnitude(wr, xi) + 1e-4;
                        assert!(
                            (out[i * rows + r] - exact).abs() <= tol,
                            "{dtype:?} m={m} ({i},{r}): {} vs {exact}",
                            out[i * rows + r]
                        );
                    }
                }
                // Each element is bit for bit the single-row kernel's dot product (the tiled and
                // four-row paths take its steps).
                if !regrouped {
                    single_rows(dtype, &k, &w, &x, m, &out);
                }
                // The same product row by row (how a sequence alone sees it) gives the same
                // numbers bit for bit: a row's product does not depend on its company.
                for i in 0..m {
                    let mut one = vec![0f32; rows];
                    w.matmul(&k, &x[i * cols..(i + 1) * cols], 1, &mut one);
                    for (r, (a, b)) in one.iter().zip(&out[i * rows..(i + 1) * rows]).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} ({i},{r}): {a} vs {b}");
                    }
                }
            }
        }
    }
}

/// `out` (an `m`-row product of `w` with `x`) against this CPU's single-row kernel applied to
/// each weight row and quantised activation row, for the formats that have one.
fn single_rows(dtype: GgmlDType, k: &Kernels, w: &QWeight, x: &[f32], m: usize, out: &[f32]) {
    fn each<T: GgmlType>(
        w: &QWeight,
        x: &[f32],
        m: usize,
        out: &[f32],
        dot: joule_infer::quant::Dot<T>,
    ) {
        let (rows, cols) = (w.rows, w.cols);
        let per_row = cols / T::BLCK_SIZE;
        // SAFETY: the weight bytes are whole blocks of T, written by `blocks::<T>`.
        let wb: &[T] =
            unsafe { std::slice::from_raw_parts(w.bytes().as_ptr().cast(), rows * per_row) };
        for i in 0..m {
            let a = blocks::<T::VecDotType>(&x[i * cols..(i + 1) * cols]);
            for r in 0..rows {
                let alone = dot(cols, &wb[r * per_row..(r + 1) * per_row], &a);
                let got = out[i * rows + r];
                assert_eq!(
                    got.to_bits(),
                    alone.to_bits(),
                    "{:?} ({i},{r}): {got} vs {alone}",
                    T::DTYPE
                );
            }
        }
    }
    match dtype {
        GgmlDType::Q4_1 => each::<kq::BlockQ4_1>(w, x, m, out, k.q4_1),
        GgmlDType::Q5_0 => each::<kq::BlockQ5_0>(w, x, m, out, k.q5_0),
        GgmlDType::Q8_0 => each::<kq::BlockQ8_0>(w, x, m, out, k.q8_0),
        GgmlDType::Q4K => each::<kq::BlockQ4K>(w, x, m, out, k.q4k),
        GgmlDType::Q6K => each::<kq::BlockQ6K>(w, x, m, out, k.q6k),
        _ => {}
    }
}

#[test]
fn rows_regroup_only_where_the_kernels_read_them() {
    for dtype in [
        GgmlDType::Q4K,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
    ] {
        regroups_where_read(dtype);
    }
}

fn regroups_where_read(dtype: GgmlDType) {
    let plain = weight(dtype, 32, 512, 3);
    let bytes = plain.bytes().to_vec();
    for k in Kernels::available() {
        // SAFETY: `Aligned` storage, left readable.
        let w = unsafe { plain.clone().prepare(&k) }.unwrap();
        let reads = match dtype {
            GgmlDType::Q4K => k.q4k_x16.is_some(),
            GgmlDType::Q6K => k.q6k_x16.is_some(),
            _ => k.lanes.is_some(),
        };
        assert_eq!(w.regrouped(), reads, "{dtype:?} {}", k.name);
        assert_eq!(w.bytes() != bytes.as_slice(), reads, "{dtype:?} {}", k.name);
        // The regrouped product against the plain one on the same kernels, both within the
        // 8-bit activations' error of the exact product (Q4_1's differ most: candle rounds
        // the activations' sums to f16, the regrouped product keeps them exact).
        let x = values(5, 3 * 512);
        let (mut a, mut b) = (vec![0f32; 3 * 32], vec![0f32; 3 * 32]);
        w.matmul(&k, &x, 3, &mut a);
        plain.matmul(&k, &x, 3, &mut b);
        let dense = plain.to_f32();
        for i in 0..3 {
            for r in 0..32 {
                let (wr, xi) = (&dense[r * 512..(r + 1) * 512], &x[i * 512..(i + 1) * 512]);
                let exact: f32 = wr.iter().zip(xi).map(|(p, q)| p * q).sum();
                let tol = 0.02 * magnitude(wr, xi) + 1e-4;
                let (p, q) = (a[i * 32 + r], b[i * 32 + r]);
                assert!(
                    (p - exact).abs() <= tol && (q - exact).abs() <= tol,
                    "{dtype:?} {}: {p} regrouped, {q} plain, {exact} exact",
                    k.name
                );
            }
        }
    }
    // Rows that do not fill whole groups stay as they are.
    let odd = weight(dtype, 40, 256, 3);
    let before = odd.bytes().to_vec();
    // SAFETY: as above.
    let odd = unsafe { odd.prepare(&Kernels::detect()) }.unwrap();
    assert_eq!(odd.bytes(), before.as_slice());
}

#[test]
fn a_truncated_or_misaligned_tensor_is_an_error() {
    let bytes = Aligned::new(&[0u8; 100]);
    let storage: Arc<dyn joule_infer::quant::Storage> = Arc::new(bytes);
    assert!(QWeight::new(GgmlDType::Q8_0, 4, 32, storage.clone(), 0).is_err());
    assert!(QWeight::new(GgmlDType::Q8_0, 1, 32, storage.clone(), 1).is_err());
    assert!(QWeight::new(GgmlDType::Q8_0, 1, 31, storage.clone(), 0).is_err());
    assert!(QWeight::new(GgmlDType::Q8_0, 2, 32, storage, 0).is_ok());
}
