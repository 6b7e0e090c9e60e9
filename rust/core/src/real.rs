//! The one floating-point element trait of the crate: `f32` and `f64`.

/// A floating-point element type the core reads and writes: `f32` or `f64`.
///
/// Used by the kNN engine (which widens every element to `f64` for exact distances) and by the
/// Nyström sketch (which runs faer's GEMM in the input precision).
pub trait Real: faer::traits::RealField + Copy + Send + Sync + 'static {
    /// Name used in error messages (`"float32"`, `"float64"`).
    const NAME: &'static str;
    /// Machine epsilon, as `f64`.
    const EPS: f64;
    /// Widening conversion (exact for both implementors).
    fn to_f64(self) -> f64;
    /// Narrowing conversion (rounds to nearest).
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    const NAME: &'static str = "float32";
    const EPS: f64 = f32::EPSILON as f64;
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    const NAME: &'static str = "float64";
    const EPS: f64 = f64::EPSILON;
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f64(x: f64) -> Self {
        x
    }
}
