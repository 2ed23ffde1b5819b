//! The product of activations with a quantized frozen weight, `y = x · dequant(W)ᵀ`, as
//! one autodiff node for the CPU and CUDA training backends.
//!
//! burn's autodiff keeps the operands a product's backward pass needs, so
//! `x.matmul(w)` with a dequantized `w` would hold a float copy of every quantized
//! layer from the forward pass to the backward pass: the memory a 4-bit base exists to
//! save. This node keeps the packed codes and scales instead (handles to tensors the
//! model holds anyway), dequantizes for the forward product and drops the result, and
//! dequantizes again for the backward product `dx = dy · dequant(W)`. The weight is
//! frozen, so it has no gradient. The dequantization is [`Kernels::dequantized`]: one
//! kernel on CUDA (`compute::dequantize`), burn's ops elsewhere, with the same values.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use super::gemm::matmul;
use super::kernels::Kernels;
use crate::model::quantized::QuantizedWeight;

/// `x · dequant(W)ᵀ` for x `[n, in]` and W `[out, in]` -> `[n, out]`, on any backend
/// without autodiff (inference), or where no node is needed.
pub fn quantized_product<B: Kernels>(x: Tensor<B, 2>, weight: &QuantizedWeight<B>) -> Tensor<B, 2> {
    let dequantized = B::dequantized(weight, x.dtype());
    matmul(x, dequantized.transpose())
}

/// The node over inner backend `I`: gradients flow to `x` only.
pub fn quantized_product_autodiff<I: Kernels, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 2>,
    weight: &QuantizedWeight<Autodiff<I, C>>,
) -> Tensor<Autodiff<I, C>, 2> {
    let weight = weight.valid();
    let x = x.into_primitive().tensor();
    let x_inner = Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(x.primitive.clone()));
    let dtype = x_inner.dtype();
    let out = quantized_product(x_inner, &weight);
    let output = match QuantizedProductBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            QuantizedProductState { weight, dtype },
            out.into_primitive().tensor(),
        ),
        OpsKind::UnTracked(prep) => prep.finish(out.into_primitive().tensor()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct QuantizedProductBackward;

#[derive(Debug, Clone)]
struct QuantizedProductState<I: Kernels> {
    /// The packed weight: no float copy lives between the passes.
    weight: QuantizedWeight<I>,
    /// The activations' dtype, which the weight is dequantized to.
    dtype: DType,
}

impl<I: Kernels> Backward<I, 1> for QuantizedProductBackward {
    type State = QuantizedProductState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let Some(node) = node_x else {
            return;
        };
        let dy =
            Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<I>(&ops.node)));
        let weight = I::dequantized(&ops.state.weight, ops.state.dtype);
        let dx = matmul(dy, weight);
        grads.register::<I>(node.id, dx.into_primitive().tensor());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quantize::{quantize_int8, quantize_nf4};
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::{Distribution, TensorData};

    type Inner = burn::backend::Flex;
    type B = Autodiff<Inner, NoCheckpointing>;

    /// Output and dx equal the op-by-op product with the dequantized weight, for both
    /// schemes, and the device dequantization equals the host reference exactly.
    #[test]
    fn the_node_equals_the_product_with_the_dequantized_weight() {
        let device = Default::default();
        let values: Vec<f32> = (0..24 * 40)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0)
            .collect();
        for host in [
            quantize_nf4(&values, [24, 40]),
            quantize_int8(&values, [24, 40]),
        ] {
            let reference = host.dequantize();
            let weight = QuantizedWeight::<B>::from_host(&host, &device);
            let on_device: Vec<f32> = weight.dequantize(DType::F32).into_data().to_vec().unwrap();
            assert_eq!(on_device, reference, "{:?}", host.scheme);
            assert_eq!(weight.to_host(), host);

            let x = Tensor::<Inner, 2>::random([5, 40], Distribution::Normal(0.0, 1.0), &device);
            let upstream =
                Tensor::<Inner, 2>::random([5, 24], Distribution::Normal(0.0, 1.0), &device);
            let dense = Tensor::<B, 2>::from_data(TensorData::new(reference, [24, 40]), &device);
            let results = [true, false].map(|node| {
                let x = Tensor::<B, 2>::from_inner(x.clone()).require_grad();
                let out = if node {
                    quantized_product_autodiff(x.clone(), &weight)
                } else {
                    x.clone().matmul(dense.clone().transpose())
                };
                let grads = (out.clone() * Tensor::from_inner(upstream.clone()))
                    .sum()
                    .backward();
                (out.inner(), x.grad(&grads).expect("x is tracked"))
            });
            let [(out, dx), (out_ref, dx_ref)] = results;
            out.into_data()
                .assert_approx_eq::<f32>(&out_ref.into_data(), Default::default());
            dx.into_data()
                .assert_approx_eq::<f32>(&dx_ref.into_data(), Default::default());
        }
    }
}
