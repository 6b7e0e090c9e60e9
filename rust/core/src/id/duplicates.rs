//! The duplicates policy (docs/intrinsic-dimension.md): exact copies first, then near-zero
//! distances.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use rayon::prelude::*;

use crate::knn::{scaled_row, MatRef, Neighbours, Real};

/// Bit pattern of a value with `-0.0` folded onto `0.0`, so equal numbers hash equally.
#[inline]
fn key(v: f64) -> u64 {
    if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

fn row_hash<T: Real>(x: &MatRef<'_, T>, i: usize) -> u64 {
    let mut h = DefaultHasher::new();
    x.row_f64(i).for_each(|v| key(v).hash(&mut h));
    h.finish()
}

fn rows_equal<T: Real>(x: &MatRef<'_, T>, a: usize, b: usize) -> bool {
    x.row_f64(a).zip(x.row_f64(b)).all(|(u, v)| u == v)
}

/// Row numbers of `x` with exact copies removed, keeping the first occurrence of each row;
/// ascending. Uses `O(N)` memory (row hashes), never copies the rows.
pub fn distinct_rows<T: Real>(x: &MatRef<'_, T>) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = (0..x.nrows())
        .into_par_iter()
        .map(|i| (row_hash(x, i), i))
        .collect();
    order.par_sort_unstable();
    let mut keep = Vec::with_capacity(order.len());
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && order[end].0 == order[start].0 {
            end += 1;
        }
        // Within one hash run (indices ascending), keep rows not equal to an earlier kept one.
        let first_kept = keep.len();
        for &(_, i) in &order[start..end] {
            if !keep[first_kept..].iter().any(|&k| rows_equal(x, k, i)) {
                keep.push(i);
            }
        }
        start = end;
    }
    keep.sort_unstable();
    keep
}

/// Robust spread of the selected rows of `x·scale`: the median Euclidean distance of the rows
/// from their coordinate-wise median. The near-duplicate tolerance is relative to it.
///
/// Why this scale: it is translation invariant and scales with the data like the RMS norm, but
/// it ignores a minority of far points. With the RMS norm one row `1e8` away from a thousand
/// unit-scale points inflated the tolerance to ~0.3 and removed hundreds of distinct points;
/// here up to half the rows may be outliers without moving the scale. On data without near
/// duplicates the rule removes nothing, whichever scale it uses, so the estimates there are
/// unchanged. Rows must be distinct (exact copies removed first), so for 3 or more rows at
/// most one sits at the median and the scale is positive.
pub fn robust_scale<T: Real>(x: &MatRef<'_, T>, rows: &[usize], scale: f64) -> f64 {
    let d = x.ncols();
    let centre: Vec<f64> = (0..d)
        .into_par_iter()
        .map(|j| {
            let mut col: Vec<f64> = rows.iter().map(|&r| x.get(r, j).to_f64() * scale).collect();
            median(&mut col)
        })
        .collect();
    let mut norms: Vec<f64> = rows
        .par_iter()
        .map(|&r| {
            scaled_row(x, r, scale)
                .zip(&centre)
                .map(|(v, c)| (v - c) * (v - c))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    median(&mut norms)
}

/// Median of finite values (mean of the two middle ones for an even count; 0 when empty).
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let h = n / 2;
    let (_, &mut hi, _) = v.select_nth_unstable_by(h, f64::total_cmp);
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..h].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    0.5 * lo + 0.5 * hi
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Positions (into the neighbour lists) to drop as near duplicates: points joined by a
/// neighbour distance `≤ threshold` form groups, and every group keeps only its first point.
/// Empty when no distance is that small.
pub fn near_duplicates(nn: &Neighbours, threshold: f64) -> Vec<usize> {
    let n = nn.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let mut any = false;
    for i in 0..n {
        for (&d, &j) in nn.distances(i).iter().zip(nn.indices(i)) {
            if d > threshold {
                break;
            }
            any = true;
            let (a, b) = (find(&mut parent, i), find(&mut parent, j));
            // The smaller position becomes the root, so each group keeps its first point.
            parent[a.max(b)] = a.min(b);
        }
    }
    if !any {
        return Vec::new();
    }
    (0..n).filter(|&i| find(&mut parent, i) != i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::{knn, Points};

    #[test]
    fn exact_copies_keep_first() {
        let x = [1.0f64, 2.0, 0.0, 5.0, 1.0, 2.0, -0.0, 5.0, 3.0, 3.0];
        let m = MatRef::row_major(&x, 5, 2).unwrap();
        assert_eq!(distinct_rows(&m), vec![0, 1, 4]);
    }

    #[test]
    fn near_copies_grouped() {
        // Points 0, 2, 3 within 1e-9 of each other; 1 and 4 far apart.
        let x = [0.0f64, 10.0, 1e-9, 2e-9, 20.0];
        let nn = knn(&Points::F64(MatRef::row_major(&x, 5, 1).unwrap()), 2).unwrap();
        assert_eq!(near_duplicates(&nn, 1e-6), vec![2, 3]);
        assert!(near_duplicates(&nn, 1e-12).is_empty());
    }

    #[test]
    fn robust_scale_ignores_a_far_minority() {
        // Distances from the median point (2, 0) are 2, 1, 0, 1, 1e8: median 1.
        let x = [0.0f64, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 1e8, 0.0];
        let m = MatRef::row_major(&x, 5, 2).unwrap();
        let rows: Vec<usize> = (0..5).collect();
        assert_eq!(robust_scale(&m, &rows, 1.0), 1.0);
        assert_eq!(robust_scale(&m, &rows, 0.25), 0.25);
        // Even count: mean of the two middle distances.
        assert_eq!(robust_scale(&m, &rows[..4], 1.0), 1.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
