//! AdaLoRA's masking round: the globally weakest ranks leave the active set.

use super::Candidate;

/// Chooses the `n_mask` globally lowest-scoring active ranks, never taking a
/// module below `min_rank`. Ties are broken by module index, then slot index.
///
/// `scores[m]` holds one score per active rank of module `m`
/// (`scores[m].len()` is its rank). Returns the masked slots of every module,
/// ascending. Fewer than `n_mask` ranks are masked only when `min_rank` forbids more.
pub fn mask_plan(scores: &[Vec<f64>], min_rank: usize, n_mask: usize) -> Vec<Vec<usize>> {
    let mut all: Vec<Candidate> = scores
        .iter()
        .enumerate()
        .flat_map(|(module, s)| {
            s.iter().enumerate().map(move |(slot, &score)| Candidate {
                score,
                module,
                slot,
            })
        })
        .collect();
    all.sort_by(Candidate::cmp_ascending);
    let mut masked: Vec<Vec<usize>> = vec![Vec::new(); scores.len()];
    let mut left = n_mask;
    for c in all {
        if left == 0 {
            break;
        }
        let room = scores[c.module].len().saturating_sub(min_rank);
        if masked[c.module].len() < room {
            masked[c.module].push(c.slot);
            left -= 1;
        }
    }
    for slots in &mut masked {
        slots.sort_unstable();
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_global_lowest_with_floor() {
        let scores = vec![vec![0.5, 0.1, 0.9], vec![0.2, 0.05], vec![0.01]];
        // Floor 1: module 2 (rank 1) and module 1 beyond one mask are protected.
        let got = mask_plan(&scores, 1, 3);
        assert_eq!(got, vec![vec![0, 1], vec![1], vec![]]);
        // Floor 0: the three lowest overall.
        let got = mask_plan(&scores, 0, 3);
        assert_eq!(got, vec![vec![1], vec![1], vec![0]]);
    }

    #[test]
    fn ties_break_by_module_then_slot() {
        let scores = vec![vec![0.0, 0.0], vec![0.0, 0.0]];
        assert_eq!(mask_plan(&scores, 0, 3), vec![vec![0, 1], vec![0]]);
    }
}
