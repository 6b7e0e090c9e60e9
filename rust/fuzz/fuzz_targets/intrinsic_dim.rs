//! TwoNN and MLE (with the duplicates policy, bootstrap and scales) over arbitrary shapes and
//! values. Must return `Ok` or `Err`, never panic; accepted results are finite and positive,
//! and exact power-of-two rescaling of the data (the estimates are scale-invariant) gives
//! bit-identical results.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lorax_core::id::{
    estimate, estimate_many, Comb, Estimator, IdResult, Mle, Options, TwoNN, TwoNNMethod,
};
use lorax_core_fuzz::{Bytes, Element, Matrix};

fn estimator(b: &mut Bytes<'_>) -> Estimator {
    let sel = b.u8();
    if sel & 1 == 0 {
        let discard_fraction = match b.u8() % 8 {
            0 => 0.0,
            1 => 0.5,
            2 => 0.99,
            3 => 1.0,
            4 => -0.1,
            5 => f64::NAN,
            _ => 0.1,
        };
        let method = if sel & 2 == 0 {
            TwoNNMethod::LeastSquares
        } else {
            TwoNNMethod::Mle
        };
        Estimator::TwoNN(TwoNN {
            discard_fraction,
            method,
        })
    } else {
        let comb = match (sel >> 1) % 3 {
            0 => Comb::Mle,
            1 => Comb::Mean,
            _ => Comb::Median,
        };
        Estimator::Mle(Mle {
            k: b.upto(66),
            comb,
            unbiased: sel & 8 != 0,
        })
    }
}

fn options(b: &mut Bytes<'_>) -> Options {
    let bootstrap = match b.u8() {
        0..=159 => 0,
        v @ 160..=254 => usize::from(v - 159) % 24,
        255 => lorax_core::id::MAX_BOOTSTRAP + 1,
    };
    let duplicate_tol = match b.u8() % 8 {
        0 => 0.0,
        1 => 1e-3,
        2 => 0.5,
        3 => f64::NAN,
        4 => -1.0,
        5 => f64::INFINITY,
        _ => lorax_core::id::DEFAULT_DUPLICATE_TOL,
    };
    let flags = b.u8();
    Options {
        bootstrap,
        seed: u64::from(flags >> 1),
        scales: flags & 1 == 1,
        duplicate_tol,
    }
}

fn check(r: &IdResult, n: usize) {
    assert!(
        r.dimension.is_finite() && r.dimension > 0.0,
        "dimension {}",
        r.dimension
    );
    assert_eq!(r.n_samples, n);
    assert!(
        r.n_duplicates + 3 <= n,
        "{} duplicates of {n}",
        r.n_duplicates
    );
    if let Some((lo, hi)) = r.ci {
        assert!(
            lo.is_finite() && hi.is_finite() && lo <= hi,
            "ci ({lo}, {hi})"
        );
    }
    if let Some(s) = &r.scales {
        assert_eq!(s[0], (n - r.n_duplicates, r.dimension));
        for &(m, dim) in s {
            assert!(m <= n && dim.is_finite() && dim > 0.0, "scale ({m}, {dim})");
        }
    }
}

/// Multiplies by `2^e` only if every value stays a normal number (so the product is exact).
fn rescale<T: Element>(x: &[T], e: i32) -> Option<Vec<T>> {
    let f = 2f64.powi(e);
    x.iter()
        .map(|&v| {
            let v = v.to_f64();
            let y = v * f;
            let normal = |a: f64| a.abs() >= T::MIN_NORMAL;
            let ok = v == 0.0 || (normal(v) && normal(y) && y.abs() <= T::MAX);
            ok.then(|| T::from_f64(y))
        })
        .collect()
}

type Outcome = lorax_core::Result<IdResult>;

/// The estimate of `w` in precision `T` and, when the `2^e`-scaled data is exact, the
/// estimates of `[w, 2^e w]` from one `estimate_many` call.
fn run<T: Element>(
    w: &Matrix,
    e: i32,
    est: &Estimator,
    opts: &Options,
) -> (Outcome, Option<lorax_core::Result<Vec<IdResult>>>) {
    let s = T::stored(w);
    let r = estimate(&w.points(&s), est, opts);
    let scaled = rescale(&s, e).map(|y| estimate_many(&[w.points(&s), w.points(&y)], est, opts));
    (r, scaled)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let est = estimator(&mut b);
    let opts = options(&mut b);
    let e = i32::from(b.u8() as i8) * 4;
    let w = Matrix::decode(&mut b, 64, 12);
    let n = w.n;
    let (r, scaled) = if w.single {
        run::<f32>(&w, e, &est, &opts)
    } else {
        run::<f64>(&w, e, &est, &opts)
    };
    if let Ok(r) = &r {
        check(r, n);
    }
    if let Some(many) = scaled {
        match (&r, many) {
            (Ok(r), Ok(both)) => {
                assert_eq!(&both[0], r, "estimate_many differs from estimate");
                assert_eq!(&both[1], r, "not invariant under scaling by 2^{e}");
            }
            (Err(_), Err(_)) => {}
            (r, many) => panic!("scaling by 2^{e} changed the outcome: {r:?} vs {many:?}"),
        }
    }
});
