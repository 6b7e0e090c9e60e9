//! Criterion benches of the ID engine: exact kNN, TwoNN and MLE on Gaussian data of intrinsic
//! dimension 10 linearly embedded in D = 768 (float32).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lorax_core::id::{estimate, Estimator, Mle, Options, TwoNN};
use lorax_core::knn::{knn, MatRef, Points};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const D: usize = 768;
const ID: usize = 10;

/// `n` points `z W` with `z ~ N(0, I_ID)` and a Gaussian `ID × D` map `W`, row-major float32.
fn embedded(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = || -> f32 { StandardNormal.sample(&mut rng) };
    let w: Vec<f32> = (0..ID * D).map(|_| normal()).collect();
    let mut x = vec![0.0f32; n * D];
    for row in x.chunks_mut(D) {
        let z: Vec<f32> = (0..ID).map(|_| normal()).collect();
        for (t, &zt) in z.iter().enumerate() {
            for (o, &wv) in row.iter_mut().zip(&w[t * D..(t + 1) * D]) {
                *o += zt * wv;
            }
        }
    }
    x
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("id");
    group.sample_size(10);
    for n in [2_000usize, 10_000] {
        let x = embedded(n, 0);
        let points = Points::F32(MatRef::row_major(&x, n, D).expect("shape"));
        // Effective flops of a full (non-symmetric) distance matrix: 2·N²·D.
        group.throughput(Throughput::Elements((2 * n * n * D) as u64));
        group.bench_with_input(BenchmarkId::new("knn_k2", n), &points, |b, p| {
            b.iter(|| knn(p, 2).expect("knn"))
        });
        let opts = Options::default();
        group.bench_with_input(BenchmarkId::new("twonn", n), &points, |b, p| {
            b.iter(|| estimate(p, &Estimator::TwoNN(TwoNN::default()), &opts).expect("twonn"))
        });
        group.bench_with_input(BenchmarkId::new("mle_k20", n), &points, |b, p| {
            b.iter(|| estimate(p, &Estimator::Mle(Mle::default()), &opts).expect("mle"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
