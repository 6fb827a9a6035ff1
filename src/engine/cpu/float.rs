//! The float types the CPU engine runs in, and its elementwise functions: the library ones in
//! f64 (the specification), vectorisable approximations in f32 (fast paths, each pinned by a test
//! named in the [module doc](super)).

/// The float types the CPU engine runs in (f32 and f64).
pub trait Float:
    ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + num_traits::Float
    + num_traits::FromPrimitive
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// From f64, rounding as `as` does.
    fn of(v: f64) -> Self;
    /// To f64, exactly.
    fn f64(self) -> f64;
    /// From f32, exactly.
    fn from_f32_lossless(v: f32) -> Self;
    /// To f32, rounding.
    fn to_f32_lossy(self) -> f32;
    /// `tanh` applied to every element of `x` in place: the library function in f64 (the
    /// reference precision), a vectorisable rational approximation in f32 ([`tanh_f32`]).
    #[inline]
    fn tanh_in_place(x: &mut [Self]) {
        for v in x {
            *v = v.tanh();
        }
    }
    /// `exp` applied to every element of `x` in place: the library function in f64, a
    /// vectorisable polynomial in f32 ([`exp_f32`]).
    #[inline]
    fn exp_in_place(x: &mut [Self]) {
        for v in x {
            *v = v.fast_exp();
        }
    }
    /// `e^x` for the gates and the softmax (`x <= 88`): the library function in f64, the
    /// inline polynomial [`exp_f32`] in f32 (which vectorises in loops over contiguous rows).
    #[inline]
    fn fast_exp(self) -> Self {
        self.exp()
    }
}

/// `e^x` in f32 for `x <= 88` (the softmax's max-subtracted logits are <= 0): `x = n ln 2 + r`
/// with n rounded to nearest and |r| <= ln(2)/2, `e^r` from Cephes' degree-6 polynomial, and
/// `2^n` built in the exponent bits. Accurate to about one ulp down to x = -87.3 (where it
/// flushes to the smallest normal); plain arithmetic and bit operations (no float-to-integer
/// conversion, whose saturating Rust semantics do not vectorise), so a loop of it vectorises,
/// where the library `expf` is a call per element and dominated the softmax of large
/// vocabularies.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // n + 127 is an integer in 1..=254; added to 2^23 it fills the low mantissa bits, and
    // shifting those into the exponent field gives 2^n.
    const BIAS: f32 = 8_388_735.0; // 2^23 + 127
    er * f32::from_bits((n + BIAS).to_bits() << 23)
}

/// `tanh` in f32 as `x * p(x^2) / q(x^2)` with x clamped to +-7.905 (where tanh rounds to 1):
/// a rational minimax approximation (the coefficients of Eigen's fast float tanh) accurate to a
/// few ulps, written in plain arithmetic so the compiler vectorises a loop of it, where the
/// library `tanhf` is a call per element and dominated the forward recurrence.
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = x * (A1 + x2 * (A3 + x2 * (A5 + x2 * (A7 + x2 * (A9 + x2 * (A11 + x2 * A13))))));
    let q = B0 + x2 * (B2 + x2 * (B4 + x2 * B6));
    p / q
}

impl Float for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn from_f32_lossless(v: f32) -> Self {
        v
    }
    fn to_f32_lossy(self) -> f32 {
        self
    }
    #[inline]
    fn tanh_in_place(x: &mut [Self]) {
        for v in x {
            *v = tanh_f32(*v);
        }
    }
    #[inline]
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
}

impl Float for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
    fn from_f32_lossless(v: f32) -> Self {
        v as f64
    }
    fn to_f32_lossy(self) -> f32 {
        self as f32
    }
}

/// The logistic function `1 / (1 + e^-x)` of the gates, written as the shaders write it.
#[inline]
pub fn sigmoid<F: Float>(x: F) -> F {
    F::one() / (F::one() + (-x).fast_exp())
}

/// `tanh(x)` of the gated cells written as `2 σ(2x) - 1`: the same function to rounding (an
/// absolute error of a few ulps of 1 near 0), at the cost of one `exp`, where the library
/// `tanh` costs several times more and dominated the gated cells' element-wise work.
#[inline]
pub fn tanh_via_sigmoid<F: Float>(x: F) -> F {
    let two = F::one() + F::one();
    two * sigmoid(two * x) - F::one()
}

#[cfg(test)]
mod tests {
    use super::{sigmoid, tanh_via_sigmoid};

    /// Every input of `[lo, hi]` at a step of about a thousandth of its magnitude (at least
    /// 1e-3), both ends included.
    fn sweep(lo: f64, hi: f64) -> impl Iterator<Item = f64> {
        std::iter::successors(Some(lo), move |&x| {
            let next = x + 1e-3 * x.abs().max(1.0);
            (next <= hi).then_some(next)
        })
        .chain([hi])
    }

    /// The largest error of `got` against `want` over `xs`, relative to `max(|want|, floor)`.
    fn worst(
        xs: impl Iterator<Item = f64>,
        got: impl Fn(f64) -> f64,
        want: impl Fn(f64) -> f64,
        floor: f64,
    ) -> (f64, f64) {
        xs.map(|x| {
            let w = want(x);
            ((got(x) - w).abs() / w.abs().max(floor), x)
        })
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
    }

    fn sigmoid_f64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn sigmoid_in_f32_is_the_logistic_function_to_a_few_ulps() {
        // Relative to the value, wherever e^-x stays in exp_f32's range.
        let (err, at) = worst(
            sweep(-87.0, 87.0),
            |x| sigmoid(x as f32) as f64,
            |x| sigmoid_f64(x as f32 as f64),
            0.0,
        );
        assert!(err < SIGMOID_F32_REL, "relative error {err} at x = {at}");
        // Beyond it: 0 or 1 to within the smallest normal f32.
        for x in [-1e4f32, -200.0, -88.5, 88.5, 200.0, 1e4] {
            let got = sigmoid(x) as f64;
            let want = sigmoid_f64(x as f64);
            assert!(
                (got - want).abs() < 1.2e-38 + 1e-7 * want,
                "sigmoid({x}) = {got}"
            );
        }
    }

    #[test]
    fn sigmoid_in_f64_is_the_logistic_function() {
        let (err, at) = worst(sweep(-700.0, 700.0), sigmoid, sigmoid_f64, 0.0);
        assert_eq!(err, 0.0, "relative error {err} at x = {at}");
    }

    #[test]
    fn tanh_via_sigmoid_is_tanh_to_a_few_ulps_of_one() {
        // Absolute errors (relative to 1): near 0 the difference 2 σ(2x) - 1 cancels.
        let (err, at) = worst(
            sweep(-20.0, 20.0),
            |x| tanh_via_sigmoid(x as f32) as f64,
            |x| (x as f32 as f64).tanh(),
            1.0,
        );
        assert!(
            err < TANH_VIA_SIGMOID_F32_ABS,
            "f32: error {err} at x = {at}"
        );
        let (err, at) = worst(sweep(-40.0, 40.0), tanh_via_sigmoid, f64::tanh, 1.0);
        assert!(
            err < TANH_VIA_SIGMOID_F64_ABS,
            "f64: error {err} at x = {at}"
        );
        for x in [-1e4f32, -100.0, 100.0, 1e4] {
            assert_eq!(tanh_via_sigmoid(x), x.signum(), "tanh({x})");
        }
    }

    /// Bounds of the tests above: three ulps (of the value for the sigmoid, of 1 for tanh; the
    /// worst errors of these sweeps are 1.0, 1.4 and 1.5 ulps).
    const SIGMOID_F32_REL: f64 = 3.0 * f32::EPSILON as f64;
    const TANH_VIA_SIGMOID_F32_ABS: f64 = 3.0 * f32::EPSILON as f64;
    const TANH_VIA_SIGMOID_F64_ABS: f64 = 3.0 * f64::EPSILON;
}
