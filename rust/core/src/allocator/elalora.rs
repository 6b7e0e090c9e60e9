//! ElaLoRA's reallocation round (docs/allocators.md): prune the weakest candidates,
//! expand the modules owning the strongest ones; total rank is conserved.

use super::Candidate;

/// Outcome of one round for every module: pruned slots (ascending) and the
/// number of new ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    /// Slots (indices into the module's active ranks) that are pruned.
    pub pruned: Vec<Vec<usize>>,
    /// Number of ranks each module gains.
    pub grown: Vec<usize>,
}

/// One reallocation round.
///
/// `scores[m]` holds one score per active rank of module `m`, `capacities[m]`
/// its storage capacity. Each module offers its `min(k, r_m - 1)` lowest ranks
/// as candidates; the `b` lowest candidates are pruned and each module owning
/// one of the `b` highest gains one rank per owned candidate. A module already
/// at capacity cannot grow: then the strongest of the pruned candidates are
/// spared so that as many ranks are pruned as are grown. Ties are broken by
/// module index, then slot index (lower first, in both directions).
pub fn realloc_plan(scores: &[Vec<f64>], capacities: &[usize], b: usize, k: usize) -> RoundPlan {
    let n_modules = scores.len();
    let mut candidates: Vec<Candidate> = Vec::new();
    for (module, s) in scores.iter().enumerate() {
        let k_m = k.min(s.len().saturating_sub(1));
        let mut own: Vec<Candidate> = s
            .iter()
            .enumerate()
            .map(|(slot, &score)| Candidate {
                score,
                module,
                slot,
            })
            .collect();
        own.sort_by(Candidate::cmp_ascending);
        candidates.extend(own.into_iter().take(k_m));
    }
    candidates.sort_by(Candidate::cmp_ascending);
    let mut descending = candidates.clone();
    descending.sort_by(Candidate::cmp_descending);

    let mut n = b.min(candidates.len());
    loop {
        let mut pruned_count = vec![0usize; n_modules];
        for c in &candidates[..n] {
            pruned_count[c.module] += 1;
        }
        let mut grown = vec![0usize; n_modules];
        let mut n_grown = 0;
        for c in &descending[..n] {
            let m = c.module;
            if scores[m].len() - pruned_count[m] + grown[m] < capacities[m] {
                grown[m] += 1;
                n_grown += 1;
            }
        }
        if n_grown == n {
            let mut pruned: Vec<Vec<usize>> = vec![Vec::new(); n_modules];
            for c in &candidates[..n] {
                pruned[c.module].push(c.slot);
            }
            for slots in &mut pruned {
                slots.sort_unstable();
            }
            return RoundPlan { pruned, grown };
        }
        n = n_grown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_round() {
        // Module 0 rank 3, module 1 rank 2, module 2 rank 1 (offers nothing).
        let scores = vec![vec![0.3, 0.1, 0.9], vec![0.5, 0.2], vec![0.0]];
        // k = 2: candidates m0 {slot1 0.1, slot0 0.3}, m1 {slot1 0.2}.
        // b = 2: prune 0.1 (m0) and 0.2 (m1); highest: 0.3 (m0), 0.2 (m1).
        let plan = realloc_plan(&scores, &[8, 8, 8], 2, 2);
        assert_eq!(plan.pruned, vec![vec![1], vec![1], vec![]]);
        assert_eq!(plan.grown, vec![1, 1, 0]);
    }

    #[test]
    fn capacity_spares_prunes() {
        // Module 0 is full; the strongest candidate is its own.
        let scores = vec![vec![0.9, 0.8, 0.7], vec![0.1, 0.05]];
        let plan = realloc_plan(&scores, &[3, 4], 2, 2);
        // Candidates ascending: m1 0.05, m0 0.7, m0 0.8. b=2 -> prune m1.1, m0.2;
        // highest m0 0.8, m0 0.7: m0 has room for one after its prune -> only one grows,
        // so only the weakest candidate is pruned, and then m0 (full) cannot grow at all.
        let total_before: usize = scores.iter().map(Vec::len).sum();
        let total_after: usize = scores
            .iter()
            .enumerate()
            .map(|(m, s)| s.len() - plan.pruned[m].len() + plan.grown[m])
            .sum();
        assert_eq!(total_before, total_after);
        assert_eq!(plan.pruned, vec![Vec::<usize>::new(), Vec::new()]);
        assert_eq!(plan.grown, vec![0, 0]);
    }
}
