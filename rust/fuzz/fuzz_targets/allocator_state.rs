//! Allocator state JSON from an untrusted file: `from_json`, then a run of steps and
//! allocations. Every call must return `Ok` or `Err`, never panic, and every state reached must
//! stay valid and round-trip through JSON.
//!
//! Input: JSON text, then optionally a 0 byte and control bytes choosing the steps and scores.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lorax_core::allocator::{Allocator, Method};
use lorax_core_fuzz::Bytes;

/// Most slots over all modules: keeps one execution fast (a state may claim capacities up to
/// 2^20 per module, which is valid but slow to permute thousands of times).
const MAX_SLOTS: usize = 4096;

fn roundtrip(a: &Allocator) {
    a.state()
        .validate()
        .expect("every reachable state is valid");
    let json = a.to_json().expect("a valid state serialises");
    let back = Allocator::from_json(&json).expect("a serialised state loads back");
    assert_eq!(back.state(), a.state());
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let mut b = Bytes::new(data.get(split + 1..).unwrap_or(&[]));
    let Ok(mut a) = Allocator::from_json(text) else {
        return;
    };
    let slots: usize = a.state().modules.iter().map(|m| m.capacity).sum();
    if slots > MAX_SLOTS {
        return;
    }
    roundtrip(&a);
    let mut t = a.state().last_step.unwrap_or(0);
    t = t.saturating_sub(b.upto(2) as u64);
    for _ in 0..24 {
        let mode = b.u8();
        if mode < 64 {
            t = t.saturating_add(1 + u64::from(mode));
        } else if mode < 72 {
            t = t.saturating_sub(u64::from(mode - 63));
        } else if mode < 80 {
            t = u64::MAX - u64::from(mode - 72);
        } else {
            // Jump to the next allocation step, if one comes soon.
            let mut s = t.saturating_add(1);
            for _ in 0..4096 {
                if a.is_allocation_step(s) {
                    break;
                }
                s = s.saturating_add(1);
            }
            t = s;
        }
        let _ = a.budget(t);
        let _ = a.updates_scores(t);
        let due = a.is_allocation_step(t);
        let before = a.state().clone();
        let ranks = a.ranks();
        let shape = b.u8();
        let mut scores: Vec<Vec<f64>> = ranks
            .iter()
            .map(|&r| {
                let extra = usize::from(shape & 3 == 1 && b.u8() & 1 == 1);
                (0..r + extra).map(|_| b.value(0)).collect()
            })
            .collect();
        if shape & 3 == 2 {
            scores.pop();
        }
        let well_formed = shape & 3 != 1 || scores.iter().zip(&ranks).all(|(s, &r)| s.len() == r);
        let well_formed = well_formed && scores.len() == ranks.len();
        let finite = scores.iter().flatten().all(|v| v.is_finite());
        let after_last = before.last_step.is_none_or(|last| t > last);
        match a.allocate(t, &scores) {
            Ok(plans) => {
                assert!(due && well_formed && finite && after_last);
                assert_eq!(plans.len(), before.modules.len());
                for ((p, m), new_rank) in plans.iter().zip(&before.modules).zip(a.ranks()) {
                    let mut perm = p.perm.clone();
                    perm.sort_unstable();
                    assert!(perm.iter().copied().eq(0..m.capacity), "not a permutation");
                    assert!(p.n_keep <= p.new_rank && p.new_rank <= m.capacity);
                    assert!(p.n_keep <= m.rank);
                    assert_eq!(p.new_rank, new_rank);
                }
                if let Method::AdaLoRA(c) = a.state().method {
                    // Masking only shrinks, and never below min_rank.
                    for (m, r) in before.modules.iter().zip(a.ranks()) {
                        assert!(r <= m.rank && r >= m.rank.min(c.min_rank));
                    }
                }
                assert_eq!(a.state().last_step, Some(t));
                roundtrip(&a);
                // The same step again is refused and changes nothing.
                let snapshot = a.state().clone();
                assert!(a.allocate(t, &scores).is_err());
                assert_eq!(a.state(), &snapshot);
            }
            Err(_) => {
                assert_eq!(a.state(), &before, "a refused allocation changed the state");
                assert!(
                    !(due && well_formed && finite && after_last),
                    "valid call refused"
                );
            }
        }
        if !b.has_more() {
            break;
        }
    }
});
