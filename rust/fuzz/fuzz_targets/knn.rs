//! Exact kNN over arbitrary shapes and values (extreme magnitudes, ties, copies, NaN, tiny n,
//! k ≥ n), float32 or float64, C or Fortran order. Refusals must match the documented rules,
//! and every accepted result must agree with an independent brute-force oracle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lorax_core::knn::knn;
use lorax_core_fuzz::{Bytes, Element, Matrix};

/// Power of two `s` with `max |x·s|` in `[0.5, 1)` (clamped so that `s` is a normal float).
fn unit_scale(x: &[f64]) -> f64 {
    let m = x.iter().fold(0.0f64, |a, &v| a.max(v.abs()));
    if m == 0.0 {
        return 1.0;
    }
    let e = m.log2().floor() as i32 + 1;
    2f64.powi((-e).clamp(-1020, 1020))
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let k = b.upto(66);
    let w = Matrix::decode(&mut b, 64, 16);
    let (n, d) = (w.n, w.d);
    let values: Vec<f64> = if w.single {
        w.data.iter().map(|&v| f64::from(v as f32)).collect()
    } else {
        w.data.clone()
    };
    let (s64, s32) = (f64::stored(&w), f32::stored(&w));
    let points = if w.single {
        w.points(&s32)
    } else {
        w.points(&s64)
    };
    let valid = n > 0 && d > 0 && k >= 1 && k < n && values.iter().all(|v| v.is_finite());
    let got = knn(&points, k);
    let Ok(nn) = got else {
        assert!(!valid, "valid input refused: {got:?}");
        return;
    };
    assert!(valid, "invalid input accepted (n={n}, d={d}, k={k})");
    assert_eq!((nn.len(), nn.k()), (n, k));
    // Oracle: distances of the data scaled into [-1, 1] by a power of two (no overflow).
    let s = unit_scale(&values);
    let row = |i: usize| values[i * d..(i + 1) * d].iter().map(move |&v| v * s);
    let dist = |i: usize, j: usize| {
        row(i)
            .zip(row(j))
            .map(|(u, v)| (u - v) * (u - v))
            .sum::<f64>()
            .sqrt()
    };
    // Absolute slack in scaled units: float64 rounding plus underflow of tiny differences.
    let tol = |x: f64| 1e-12 * x + 1e-140;
    for i in 0..n {
        let (di, ii) = (nn.distances(i), nn.indices(i));
        let mut seen = vec![false; n];
        for (p, (&got_d, &j)) in di.iter().zip(ii).enumerate() {
            assert!(
                j < n && j != i && !seen[j],
                "row {i}: bad neighbour list {ii:?}"
            );
            seen[j] = true;
            let want = dist(i, j);
            if got_d.is_finite() {
                assert!(
                    (got_d * s - want).abs() <= tol(want),
                    "row {i}: distance {got_d} to {j}, oracle {want} (scaled)"
                );
            } else {
                assert!(
                    want / s > f64::MAX * (1.0 - 1e-12),
                    "row {i}: infinite distance to {j}"
                );
            }
            if p > 0 {
                assert!(
                    di[p - 1] <= got_d,
                    "row {i}: distances not ascending {di:?}"
                );
            }
        }
        let kth = dist(i, ii[k - 1]);
        for j in (0..n).filter(|&j| j != i && !seen[j]) {
            assert!(
                dist(i, j) >= kth - tol(kth),
                "row {i}: {j} is nearer than neighbour {}",
                ii[k - 1]
            );
        }
    }
});
