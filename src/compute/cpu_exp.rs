//! `exp` for the CPU kernels: libm's, or a polynomial the compiler vectorizes.
//!
//! libm's `expf` is a scalar call per element, about a tenth of a CPU step's samples
//! (the attention softmax, the token loss, SwiGLU's sigmoid). [`Polynomial`] is
//! branch-free plain arithmetic (a range reduction by ln 2, a degree-6 polynomial and
//! an exponent written into the bits), so loops over it compile to vector code. Rust
//! never fuses a multiply and an add on its own, so every lane computes the same
//! IEEE operations in the same order: the same bits on every CPU and at every vector
//! width, which libm (whose `expf` differs between C libraries) does not promise.
//! `compute.vector_exp` picks it; false computes with libm, as graft did before.

use super::cpu_vectors::in_widest_vectors;

/// An `exp` the kernels are generic over, so each loop is compiled (and vectorized)
/// for one of them.
pub trait Exp {
    fn exp(x: f32) -> f32;
}

/// The C library's `expf`.
pub struct Libm;

impl Exp for Libm {
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        x.exp()
    }
}

/// Cephes' single-precision `exp` polynomial, within 2 ulp of the exact value for
/// results in f32's normal range up to `exp(88)` (checked against f64 in the tests);
/// 0 below it and infinity above 88 (where `expf` still gives up to 3.4e38: the
/// kernels only take `exp` of values at most 0, and SwiGLU's `1 / (1 + exp(-g))`
/// is then 0 against about 1e-38).
pub struct Polynomial;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that n * LN2_HI is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// Below it the result is under f32's smallest normal: 0, as the kernels want.
const LOWEST: f32 = -87.336_55;
// Above it 2^n would need the exponent 255: infinity (an early one, see above).
const HIGHEST: f32 = 88.0;
// 1.5 * 2^23: adding it rounds to an integer, to nearest even, without a branch.
const ROUNDER: f32 = 12_582_912.0;

impl Exp for Polynomial {
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        let clamped = x.clamp(LOWEST, HIGHEST);
        let n = (clamped * LOG2_E + ROUNDER) - ROUNDER;
        let r = (clamped - n * LN2_HI) - n * LN2_LO;
        let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let p = p * (r * r) + r + 1.0;
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        let y = p * scale;
        let y = if x < LOWEST { 0.0 } else { y };
        let y = if x > HIGHEST { f32::INFINITY } else { y };
        // NaN passes through, so a diverged step still shows as one.
        if x.is_nan() {
            x
        } else {
            y
        }
    }
}

/// `exp` of every element in place, in the widest vectors the CPU has (the same bits
/// at every width: each lane computes the scalar operations).
pub fn exp_in_place<E: Exp>(values: &mut [f32]) {
    in_widest_vectors(|| exp_loop::<E>(values))
}

#[inline(always)]
fn exp_loop<E: Exp>(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = E::exp(*v);
    }
}

/// Runs `$body` with `$E` bound to the `exp` that `compute.vector_exp` picks.
macro_rules! with_exp {
    ($E:ident => $body:expr) => {
        if $crate::compute::options::current().vector_exp {
            type $E = $crate::compute::cpu_exp::Polynomial;
            $body
        } else {
            type $E = $crate::compute::cpu_exp::Libm;
            $body
        }
    };
}
pub(crate) use with_exp;

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn the_polynomial_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulps(Polynomial::exp(x), exact));
            x += 0.000_37;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(Polynomial::exp(0.0), 1.0);
    }

    #[test]
    fn the_edges_are_zero_infinity_and_nan() {
        assert_eq!(Polynomial::exp(-88.0), 0.0);
        assert_eq!(Polynomial::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(Polynomial::exp(89.0), f32::INFINITY);
        assert_eq!(Polynomial::exp(f32::INFINITY), f32::INFINITY);
        assert!(Polynomial::exp(f32::NAN).is_nan());
        assert!(Polynomial::exp(-87.3) > 0.0);
    }

    #[test]
    fn every_vector_width_computes_as_one_element_at_a_time() {
        // The loops compiled for each width and the scalar call agree bit for bit,
        // lanes and tail, edges included.
        let mut values: Vec<f32> = (0..1037).map(|i| (i as f32 - 700.0) * 0.137).collect();
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -87.4, 88.5, 0.0]);
        let bits = |values: &[f32]| values.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let one_by_one: Vec<f32> = values.iter().map(|&x| Polynomial::exp(x)).collect();
        let mut widest = values.clone();
        exp_in_place::<Polynomial>(&mut widest);
        assert_eq!(bits(&widest), bits(&one_by_one));
        let mut plain = values.clone();
        exp_loop::<Polynomial>(&mut plain);
        assert_eq!(bits(&plain), bits(&one_by_one));
    }
}
