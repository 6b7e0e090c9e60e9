//! Criterion bench of the Nyström sketch on a 1024×2048 float32 matrix with spectrum i^-1.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lorax_core::nystrom::{nystrom, Layout, NystromOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A matrix with singular values decaying like i^-1: sum of rank-one terms built from
/// random sign vectors (cheap, and enough spectrum structure for timing).
fn decaying(m: usize, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut w = vec![0.0f32; m * n];
    for t in 1..=64usize {
        let u: Vec<f32> = (0..m)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        let v: Vec<f32> = (0..n)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        let s = 1.0 / (t as f32 * ((m * n) as f32).sqrt());
        for i in 0..m {
            for j in 0..n {
                w[i * n + j] += s * u[i] * v[j];
            }
        }
    }
    w
}

fn bench(c: &mut Criterion) {
    let (m, n) = (1024, 2048);
    let w = decaying(m, n);
    let mut group = c.benchmark_group("nystrom_1024x2048_f32");
    group.sample_size(10);
    for r in [8usize, 64] {
        for q in [0usize, 1] {
            let opts = NystromOptions {
                power_iters: q,
                ..NystromOptions::new(r)
            };
            group.bench_function(format!("r{r}_q{q}"), |b| {
                b.iter(|| nystrom(black_box(&w), m, n, Layout::RowMajor, &opts).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
