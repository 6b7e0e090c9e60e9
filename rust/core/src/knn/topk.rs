//! Bounded, sorted candidate lists: the `cap` smallest `(distance², index)` pairs of each row.

/// Candidate lists for a block of consecutive rows, stored flat (`rows × cap`).
///
/// Each list is kept sorted ascending by `(value, index)`, so ties are broken by the smaller
/// index. `bound[r]` is the largest accepted value of row `r` (`+∞` until the list is full):
/// a value above it can be rejected with one comparison.
#[derive(Debug, Clone)]
pub struct TopK {
    cap: usize,
    len: Vec<usize>,
    value: Vec<f32>,
    index: Vec<u32>,
    bound: Vec<f32>,
}

impl TopK {
    /// Empty lists for `rows` rows holding at most `cap ≥ 1` candidates each.
    pub fn new(rows: usize, cap: usize) -> Self {
        Self {
            cap,
            len: vec![0; rows],
            value: vec![f32::INFINITY; rows * cap],
            index: vec![u32::MAX; rows * cap],
            bound: vec![f32::INFINITY; rows],
        }
    }

    /// Per-row rejection bounds (`+∞` while a row's list is not full).
    #[inline]
    pub fn bounds(&self) -> &[f32] {
        &self.bound
    }

    /// Offers candidate `(value, index)` to row `r`; kept if it is among the `cap` smallest.
    #[inline]
    pub fn push(&mut self, r: usize, value: f32, index: u32) {
        let cap = self.cap;
        let n = self.len[r];
        let vals = &mut self.value[r * cap..(r + 1) * cap];
        let idxs = &mut self.index[r * cap..(r + 1) * cap];
        let less = |v: f32, i: u32, w: f32, j: u32| v < w || (v == w && i < j);
        if n == cap && !less(value, index, vals[cap - 1], idxs[cap - 1]) {
            return;
        }
        let mut pos = if n == cap { cap - 1 } else { n };
        while pos > 0 && less(value, index, vals[pos - 1], idxs[pos - 1]) {
            vals[pos] = vals[pos - 1];
            idxs[pos] = idxs[pos - 1];
            pos -= 1;
        }
        vals[pos] = value;
        idxs[pos] = index;
        if n < cap {
            self.len[r] = n + 1;
        }
        if self.len[r] == cap {
            self.bound[r] = vals[cap - 1];
        }
    }

    /// The sorted candidates of row `r` as `(values, indices)`.
    pub fn row(&self, r: usize) -> (&[f32], &[u32]) {
        let n = self.len[r];
        let s = r * self.cap;
        (&self.value[s..s + n], &self.index[s..s + n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_smallest_with_index_ties() {
        let mut t = TopK::new(1, 3);
        for (v, i) in [(5.0, 0), (1.0, 1), (3.0, 2), (1.0, 3), (0.5, 4), (3.0, 5)] {
            t.push(0, v, i);
        }
        let (v, i) = t.row(0);
        assert_eq!(v, &[0.5, 1.0, 1.0]);
        assert_eq!(i, &[4, 1, 3]);
        assert_eq!(t.bounds()[0], 1.0);
        // A tie with a smaller index displaces the last entry.
        t.push(0, 1.0, 2);
        assert_eq!(t.row(0).1, &[4, 1, 2]);
    }
}
