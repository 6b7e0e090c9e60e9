//! The duplicates policy (docs/intrinsic-dimension.md): exact copies first, then near-zero
//! distances.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use rayon::prelude::*;

use crate::knn::{MatRef, Neighbours, Real};

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

/// Root-mean-square norm of the selected rows about their mean (translation invariant).
pub fn rms_norm<T: Real>(x: &MatRef<'_, T>, rows: &[usize]) -> f64 {
    let mean = crate::knn::column_means(x, rows);
    let total: f64 = rows
        .par_iter()
        .map(|&r| {
            x.row_f64(r)
                .zip(&mean)
                .map(|(v, m)| (v - m) * (v - m))
                .sum::<f64>()
        })
        .sum();
    (total / rows.len().max(1) as f64).sqrt()
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
        let rows: Vec<usize> = (0..5).collect();
        let rms = rms_norm(&MatRef::row_major(&x, 5, 1).unwrap(), &rows);
        assert!((rms - 8.0).abs() < 1e-6, "{rms}");
    }
}
