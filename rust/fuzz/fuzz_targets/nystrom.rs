//! The Nyström sketch over arbitrary matrices: NaN/inf, zero, rank-deficient, huge and tiny
//! values, odd shapes, ranks above min(m, n), arbitrary options. It must return `Ok` or `Err`,
//! never panic; `Ok` factors have the documented shapes and are finite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lorax_core::nystrom::{nystrom, Layout, NystromOptions};
use lorax_core_fuzz::{Bytes, Element, Matrix};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let rank = b.upto(20);
    let oversample = b.upto(12);
    let power_iters = b.upto(3);
    let seed = u64::from(b.u8());
    let rcond = match b.u8() {
        0..=191 => None,
        192..=223 => Some(10f64.powi(-i32::from(b.u8() % 20))),
        224..=239 => Some(0.0),
        _ => Some(b.value(0)),
    };
    let w = Matrix::decode(&mut b, 24, 24);
    let opts = NystromOptions {
        rank,
        oversample,
        power_iters,
        seed,
        rcond,
    };
    let layout = if w.fortran {
        Layout::ColMajor
    } else {
        Layout::RowMajor
    };
    let valid_shape = w.n > 0 && w.d > 0 && (1..=w.n.min(w.d)).contains(&rank);
    let valid_rcond = rcond.is_none_or(|r| r.is_finite() && r >= 0.0);
    // Any input may be refused (overflow in the sketch is a clear error); nothing may panic.
    if w.single {
        check::<f32>(&w, layout, &opts, valid_shape && valid_rcond);
    } else {
        check::<f64>(&w, layout, &opts, valid_shape && valid_rcond);
    }
});

/// Runs the sketch on `w` in precision `T`; accepted input must be valid (`valid` and finite),
/// and the factors must have the documented shapes and be finite.
fn check<T: Element>(w: &Matrix, layout: Layout, opts: &NystromOptions, valid: bool) {
    let x = T::stored(w);
    let Ok(f) = nystrom(&x, w.n, w.d, layout, opts) else {
        return;
    };
    let finite = |v: &[T]| v.iter().all(|e| e.to_f64().is_finite());
    assert!(valid && finite(&x), "accepted invalid input");
    let r = opts.rank;
    assert_eq!(
        [
            (f.b.nrows, f.b.ncols),
            (f.n.nrows, f.n.ncols),
            (f.a.nrows, f.a.ncols)
        ],
        [(w.n, r), (r, r), (r, w.d)],
        "factor shapes"
    );
    assert!(
        finite(&f.b.data) && finite(&f.n.data) && finite(&f.a.data),
        "non-finite factor from finite input"
    );
}
