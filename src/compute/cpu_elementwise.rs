//! Element-wise sums on the CPU on all cores.
//!
//! Flex runs element-wise ops on one thread; the adapted projections add their
//! branch to the base product in both passes, over `[tokens, d_out]` and `[tokens,
//! d_in]`, fourteen times a layer. The arithmetic here is Flex's (`b * s` rounded,
//! then the sum rounded), so the values are the same bit for bit.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::flex_values::{flex_primitive, HostValues};

/// Elements per rayon task.
const CHUNK: usize = 32 * 1024;

/// Whether [`add_scaled`] takes these: f32 tensors of one shape.
pub fn supports<const D: usize>(a: &Tensor<Flex, D>, b: &Tensor<Flex, D>) -> bool {
    a.dims() == b.dims() && a.dtype() == DType::F32 && b.dtype() == DType::F32
}

/// `a + s b` (`a + b` when s is 1) for tensors [`supports`] takes.
pub fn add_scaled<const D: usize>(
    a: Tensor<Flex, D>,
    b: Tensor<Flex, D>,
    scale: f64,
) -> Tensor<Flex, D> {
    assert!(supports(&a, &b), "f32 tensors of one shape");
    let shape = a.dims();
    let out = sum_values(
        HostValues::new(a.into_primitive().tensor()),
        HostValues::new(b.into_primitive().tensor()),
        scale,
    );
    Tensor::from_primitive(TensorPrimitive::Float(flex_primitive(out, shape)))
}

/// `a + b` for f32 primitives of one shape, any rank: a gradient's parts summed
/// (`compute::grad_sum`). Into `a`'s buffer where `a` holds it alone, as Flex's own
/// add does, so the sum takes no memory more.
pub fn sum(mut a: FlexTensor, b: FlexTensor) -> FlexTensor {
    let shape = a.shape();
    assert_eq!(shape, b.shape(), "parts of one gradient have one shape");
    let b = HostValues::new(b);
    if let Some((start, end)) = a.layout().contiguous_offsets() {
        if let Some(values) = a.try_storage_mut::<f32>() {
            values[start..end]
                .par_chunks_mut(CHUNK)
                .zip(b.par_chunks(CHUNK))
                .for_each(|(a, b)| {
                    for (a, &b) in a.iter_mut().zip(b) {
                        *a += b;
                    }
                });
            return a;
        }
    }
    let out = sum_values(HostValues::new(a), b, 1.0);
    flex_primitive(out, shape)
}

/// `a + s b` element by element, written once (not zeroed first: a pass and a
/// parallel region fewer).
fn sum_values(a: HostValues, b: HostValues, scale: f64) -> Vec<f32> {
    assert_eq!(a.len(), b.len());
    let mut out = Vec::with_capacity(a.len());
    let s = scale as f32;
    out.spare_capacity_mut()[..a.len()]
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(out, (a, b))| {
            if scale == 1.0 {
                for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                    o.write(a + b);
                }
            } else {
                for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                    o.write(a + b * s);
                }
            }
        });
    // SAFETY: the chunks cover the first `a.len()` values and each value of a chunk is
    // written (`b` has `a`'s length, asserted above).
    unsafe { out.set_len(a.len()) };
    out
}

#[cfg(test)]
mod tests {
    use super::super::flex_values::bits;
    use super::*;
    use burn::tensor::Distribution;

    /// In place into a buffer `a` holds alone, into a new one where `a` is shared or a
    /// view: Flex's `a + b` every time.
    #[test]
    fn gradient_parts_sum_to_flex_s_bits_in_place_or_not() {
        let device = Default::default();
        let random =
            |shape| Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (random([3, 130, 700]), random([3, 130, 700]));
        let expected = bits(a.clone() + b.clone());
        let primitive = |t: Tensor<Flex, 3>| t.into_primitive().tensor();
        let wrap = |p| Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(p));
        // Alone: a deep copy that nothing else holds.
        let alone = primitive(Tensor::from_data(a.to_data(), &device));
        assert!(alone.is_unique());
        assert_eq!(bits(wrap(sum(alone, primitive(b.clone())))), expected);
        // Shared: `a` itself must keep its values.
        let before = bits(a.clone());
        assert_eq!(
            bits(wrap(sum(primitive(a.clone()), primitive(b.clone())))),
            expected
        );
        assert_eq!(bits(a.clone()), before);
        // A view in another order.
        let swapped = random([3, 700, 130]);
        let expected = bits(swapped.clone().swap_dims(1, 2) + b.clone());
        let view = primitive(swapped.swap_dims(1, 2));
        assert_eq!(bits(wrap(sum(view, primitive(b)))), expected);
    }

    #[test]
    fn sums_equal_flex_s_ops_bit_for_bit() {
        let device = Default::default();
        let random =
            || Tensor::<Flex, 2>::random([130, 700], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (random(), random());
        for scale in [1.0, 2.0, 0.3] {
            let expected = if scale == 1.0 {
                a.clone() + b.clone()
            } else {
                a.clone() + b.clone().mul_scalar(scale)
            };
            let ours = add_scaled(a.clone(), b.clone(), scale);
            assert_eq!(bits(ours), bits(expected), "scale {scale}");
        }
        // A transposed operand is read in its logical order.
        let square = Tensor::<Flex, 2>::random([64, 64], Distribution::Normal(0.0, 1.0), &device);
        let ours = add_scaled(square.clone(), square.clone().transpose(), 1.0);
        assert_eq!(bits(ours), bits(square.clone() + square.transpose()));
    }
}
