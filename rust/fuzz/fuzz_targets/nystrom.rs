//! The Nyström sketch over arbitrary matrices: NaN/inf, zero, rank-deficient, huge and tiny
//! values, odd shapes, ranks above min(m, n), arbitrary options. It must return `Ok` or `Err`,
//! never panic; `Ok` factors have the documented shapes and are finite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lorax_core::nystrom::{nystrom, Layout, NystromOptions};
use lorax_core_fuzz::{Bytes, Matrix};

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
    let (m, n) = (w.n, w.d);
    let valid_shape = m > 0 && n > 0 && (1..=m.min(n)).contains(&rank);
    let valid_rcond = rcond.is_none_or(|r| r.is_finite() && r >= 0.0);
    let accepted = |finite_in: bool, shapes: [(usize, usize); 3], factors_finite: bool| {
        assert!(
            valid_shape && valid_rcond && finite_in,
            "accepted invalid input"
        );
        assert_eq!(
            shapes,
            [(m, rank), (rank, rank), (rank, n)],
            "factor shapes"
        );
        assert!(factors_finite, "non-finite factor from finite input");
    };
    // Any input may be refused (overflow in the sketch is a clear error); nothing may panic.
    if w.single {
        let x = w.stored_f32();
        if let Ok(f) = nystrom(&x, m, n, layout, &opts) {
            let all = f.b.data.iter().chain(&f.n.data).chain(&f.a.data);
            accepted(
                x.iter().all(|v| v.is_finite()),
                [
                    (f.b.nrows, f.b.ncols),
                    (f.n.nrows, f.n.ncols),
                    (f.a.nrows, f.a.ncols),
                ],
                all.into_iter().all(|v| v.is_finite()),
            );
        }
    } else {
        let x = w.stored_f64();
        if let Ok(f) = nystrom(&x, m, n, layout, &opts) {
            let all = f.b.data.iter().chain(&f.n.data).chain(&f.a.data);
            accepted(
                x.iter().all(|v| v.is_finite()),
                [
                    (f.b.nrows, f.b.ncols),
                    (f.n.nrows, f.n.ncols),
                    (f.a.nrows, f.a.ncols),
                ],
                all.into_iter().all(|v| v.is_finite()),
            );
        }
    }
});
