//! The model's matrix products, sent to cuBLAS on CUDA and to burn's matmul elsewhere.
//!
//! [`matmul`] asks the backend's [`Kernels`] for the product where cuBLAS is worth it
//! and otherwise calls burn's `matmul`, leaving the CPU path exactly as it was. On the
//! autodiff CUDA
//! backends the product is one autodiff node whose backward pass (`dA = dC Bᵀ`,
//! `dB = Aᵀ dC`, only for tracked sides) runs through [`matmul`] again, so both passes
//! reach cuBLAS.

use super::kernels::Kernels;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorPrimitive};

// Half-precision products with fewer multiply-adds than `compute.cublas_min_macs`
// stay on burn's matmul: each cuBLAS product costs a few driver calls and buffer
// lookups on cubecl's device thread, which the smallest products do not repay. f32
// products always go to cuBLAS, because burn's kernel rounds f32 operands to TF32.

/// `lhs @ rhs` for `[..., m, k]` and `[..., k, n]` with equal batch dims (burn's
/// broadcasting cases take burn's matmul).
pub fn matmul<B: Kernels, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    if worth_cublas(&lhs, &rhs) {
        return match B::matmul(lhs, rhs) {
            Ok(product) => product,
            Err((lhs, rhs)) => B::host_matmul(lhs, rhs),
        };
    }
    B::host_matmul(lhs, rhs)
}

/// `alpha · lhs @ rhs` in f32 whatever the inputs' dtype, for products whose result
/// feeds f32 arithmetic (attention scores, f32 gradients of bf16 products). On inner
/// CUDA backends cuBLAS writes f32 with the scale applied; elsewhere it is `matmul`, a
/// cast and a scalar multiply.
pub fn matmul_f32<B: Kernels, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
    alpha: f64,
) -> Tensor<B, D> {
    scaled_product(lhs, rhs, alpha, true)
}

/// `base + alpha · lhs @ rhs` in the inputs' dtype: the product, its scale and (with
/// `compute.cuda_accumulate`) the sum from cuBLAS where the product reaches it, else
/// the backend's own product and sum ([`Kernels::host_matmul`], [`Kernels::add_scaled`]).
pub fn add_matmul_scaled<B: Kernels, const D: usize>(
    base: Tensor<B, D>,
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
    alpha: f64,
) -> Tensor<B, D> {
    if worth_cublas(&lhs, &rhs) {
        let (base, lhs, rhs) = match B::matmul_add(base, lhs, rhs, alpha) {
            Ok(sum) => return sum,
            Err(operands) => operands,
        };
        return base + matmul_scaled(lhs, rhs, alpha);
    }
    B::add_scaled(base, B::host_matmul(lhs, rhs), alpha)
}

/// `alpha · lhs @ rhs` in the inputs' dtype, the scale applied by cuBLAS where the
/// product reaches it.
pub fn matmul_scaled<B: Kernels, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
    alpha: f64,
) -> Tensor<B, D> {
    scaled_product(lhs, rhs, alpha, false)
}

fn scaled_product<B: Kernels, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
    alpha: f64,
    out_f32: bool,
) -> Tensor<B, D> {
    // Without cuBLAS, an f32 result is the product of the operands cast to f32: the
    // sums cuBLAS accumulates, where a product in the inputs' dtype would round them
    // first. (Under `compute.matmul = "burn"` burn's kernel rounds f32 operands to TF32, which
    // holds bf16 operands exactly.)
    let product = |lhs: Tensor<B, D>, rhs: Tensor<B, D>| {
        let product = if out_f32 {
            matmul(lhs.cast(FloatDType::F32), rhs.cast(FloatDType::F32))
        } else {
            matmul(lhs, rhs)
        };
        scaled(product, alpha)
    };
    if worth_cublas(&lhs, &rhs) {
        return match B::matmul_with(lhs, rhs, alpha, out_f32) {
            Ok(product) => product,
            Err((lhs, rhs)) => product(lhs, rhs),
        };
    }
    product(lhs, rhs)
}

fn scaled<B: Backend, const D: usize>(tensor: Tensor<B, D>, alpha: f64) -> Tensor<B, D> {
    if alpha == 1.0 {
        tensor
    } else {
        tensor.mul_scalar(alpha)
    }
}

/// Whether libcublas could be loaded (checked once; a missing library is reported once
/// and leaves the products on burn's kernel).
#[cfg(feature = "cuda")]
pub fn cublas_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        let present = super::cublas::available();
        if !present {
            eprintln!(
                "warning: libcublas was not found (add its folder to LD_LIBRARY_PATH); \
                 CUDA matmuls use burn's kernel"
            );
        }
        present
    })
}

fn worth_cublas<B: Kernels, const D: usize>(lhs: &Tensor<B, D>, rhs: &Tensor<B, D>) -> bool {
    if D < 2 || !B::accelerated_matmul() {
        return false;
    }
    let (l, r) = (lhs.dims(), rhs.dims());
    let dtype = lhs.dtype();
    let shapes_fit = l[..D - 2] == r[..D - 2]
        && l[D - 1] == r[D - 2]
        && l.iter().chain(r.iter()).all(|&d| d > 0);
    if !shapes_fit || dtype != rhs.dtype() || !cublas_supports(dtype) {
        return false;
    }
    let macs = l.iter().product::<usize>() * r[D - 1];
    dtype == burn::tensor::DType::F32 || macs >= crate::compute::options::current().cublas_min_macs
}

#[cfg(feature = "cuda")]
fn cublas_supports(dtype: burn::tensor::DType) -> bool {
    super::cublas::supports(dtype)
}

#[cfg(not(feature = "cuda"))]
fn cublas_supports(_dtype: burn::tensor::DType) -> bool {
    false
}

/// `base + alpha · lhs @ rhs` by cuBLAS on an inner CUDA backend, the sum rounded once
/// to `base`'s dtype (which the operands share).
#[cfg(feature = "cuda")]
pub fn fusion_product_add<F: burn_cubecl::FloatElement, const D: usize>(
    base: Tensor<burn::backend::Cuda<F>, D>,
    lhs: Tensor<burn::backend::Cuda<F>, D>,
    rhs: Tensor<burn::backend::Cuda<F>, D>,
    alpha: f32,
) -> Tensor<burn::backend::Cuda<F>, D> {
    let sum = super::cublas::fusion_matmul_add::<F>(
        base.into_primitive().tensor(),
        lhs.into_primitive().tensor(),
        rhs.into_primitive().tensor(),
        alpha,
    );
    Tensor::from_primitive(TensorPrimitive::Float(sum))
}

/// `alpha · lhs @ rhs` by cuBLAS on an inner CUDA backend, the result in `dtype`.
#[cfg(feature = "cuda")]
pub fn fusion_product<F: burn_cubecl::FloatElement, const D: usize>(
    lhs: Tensor<burn::backend::Cuda<F>, D>,
    rhs: Tensor<burn::backend::Cuda<F>, D>,
    dtype: burn::tensor::DType,
    alpha: f32,
) -> Tensor<burn::backend::Cuda<F>, D> {
    let product = super::cublas::fusion_matmul::<F>(
        lhs.into_primitive().tensor(),
        rhs.into_primitive().tensor(),
        dtype,
        alpha,
    );
    Tensor::from_primitive(TensorPrimitive::Float(product))
}

/// How one operand's last two dims lie in memory, in cuBLAS's column-major terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    /// The buffer holds the row-major matrix's transpose (a `transpose()` view).
    pub transposed: bool,
    pub leading: i64,
    pub batch_stride: i64,
}

impl Operand {
    /// The layout of a `[..., rows, cols]` tensor with these strides, or `None` when
    /// it must be copied first: neither rows nor columns are unit-stride, or the batch
    /// dims do not step by one stride.
    pub fn of(shape: &[usize], strides: &[usize]) -> Option<Operand> {
        let rank = shape.len();
        let (rows, cols) = (shape[rank - 2], shape[rank - 1]);
        let (row_stride, col_stride) = (strides[rank - 2], strides[rank - 1]);
        let (transposed, leading) = if (col_stride == 1 || cols == 1) && row_stride >= cols {
            (false, row_stride)
        } else if (row_stride == 1 || rows == 1) && col_stride >= rows {
            (true, col_stride)
        } else {
            return None;
        };
        // `[b, h]` collapses into one batch dim when h's stride times h is b's stride.
        let mut batch: Option<(usize, usize)> = None;
        for dim in (0..rank - 2).rev() {
            if shape[dim] == 1 {
                continue;
            }
            batch = match batch {
                None => Some((strides[dim], shape[dim])),
                Some((stride, count)) if strides[dim] == stride * count => {
                    Some((stride, count * shape[dim]))
                }
                Some(_) => return None,
            };
        }
        Some(Operand {
            transposed,
            leading: leading.max(1) as i64,
            batch_stride: batch.map_or(0, |(stride, _)| stride) as i64,
        })
    }
}

/// The product as one autodiff node over inner backend `I`, each pass through
/// [`matmul`] on `I`. Public so tests can compare it with burn's gradients on the CPU.
pub fn autodiff_matmul<I: Kernels, C: CheckpointStrategy, const D: usize>(
    lhs: Tensor<Autodiff<I, C>, D>,
    rhs: Tensor<Autodiff<I, C>, D>,
) -> Tensor<Autodiff<I, C>, D> {
    let lhs = lhs.into_primitive().tensor();
    let rhs = rhs.into_primitive().tensor();
    let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
    let output = match MatmulBackward::<D>
        .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            // Each side's gradient needs the other side's value, and only then.
            let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
            let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
            let product = inner_product::<I, D>(lhs.primitive, rhs.primitive);
            prep.finish((lhs_state, rhs_state), product)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(inner_product::<I, D>(lhs.primitive, rhs.primitive))
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

fn inner_product<I: Kernels, const D: usize>(
    lhs: I::FloatTensorPrimitive,
    rhs: I::FloatTensorPrimitive,
) -> I::FloatTensorPrimitive {
    let wrap = |p| Tensor::<I, D>::from_primitive(TensorPrimitive::Float(p));
    matmul(wrap(lhs), wrap(rhs)).into_primitive().tensor()
}

fn transposed<I: Backend, const D: usize>(p: I::FloatTensorPrimitive) -> I::FloatTensorPrimitive {
    Tensor::<I, D>::from_primitive(TensorPrimitive::Float(p))
        .transpose()
        .into_primitive()
        .tensor()
}

#[derive(Debug)]
struct MatmulBackward<const D: usize>;

impl<I: Kernels, const D: usize> Backward<I, 2> for MatmulBackward<D> {
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (lhs, rhs) = ops.state;
        let lhs: Option<I::FloatTensorPrimitive> =
            lhs.map(|id| checkpointer.retrieve_node_output(id));
        let rhs: Option<I::FloatTensorPrimitive> =
            rhs.map(|id| checkpointer.retrieve_node_output(id));
        binary::<I, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| inner_product::<I, D>(grad, transposed::<I, D>(rhs.expect("rhs kept"))),
            |grad| inner_product::<I, D>(transposed::<I, D>(lhs.expect("lhs kept")), grad),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::Distribution;

    #[test]
    fn layouts_are_read_in_place_where_cublas_can() {
        let row = Operand::of(&[4, 3], &[3, 1]).unwrap();
        assert_eq!(
            (row.transposed, row.leading, row.batch_stride),
            (false, 3, 0)
        );
        let transposed = Operand::of(&[3, 4], &[1, 3]).unwrap();
        assert_eq!((transposed.transposed, transposed.leading), (true, 3));
        let batched = Operand::of(&[2, 5, 4, 3], &[60, 12, 3, 1]).unwrap();
        assert_eq!(batched.batch_stride, 12);
        let swapped = Operand::of(&[2, 5, 3, 4], &[60, 12, 1, 3]).unwrap();
        assert!(swapped.transposed && swapped.batch_stride == 12);
        // A narrowed sequence keeps its row stride as the leading dimension.
        let narrowed = Operand::of(&[2, 5, 4, 3], &[150, 30, 3, 1]).unwrap();
        assert_eq!((narrowed.leading, narrowed.batch_stride), (3, 30));
        // Heads before batch in memory: the batch dims do not collapse.
        assert!(Operand::of(&[2, 5, 4, 3], &[12, 24, 3, 1]).is_none());
        // Neither rows nor columns are unit-stride.
        assert!(Operand::of(&[4, 3], &[6, 2]).is_none());
    }

    /// The node's value and both gradients equal burn's matmul's on the CPU, with the
    /// right-hand side seen through a transpose as the model's tied head does.
    #[test]
    fn autodiff_matmul_matches_burns_matmul_and_its_gradients() {
        type Inner = burn::backend::Flex;
        type B = Autodiff<Inner, NoCheckpointing>;
        let device = Default::default();
        let a = Tensor::<Inner, 3>::random([2, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<Inner, 3>::random([2, 4, 7], Distribution::Normal(0.0, 1.0), &device);
        let weights =
            Tensor::<Inner, 3>::random([2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let a = Tensor::<B, 3>::from_inner(a.clone()).require_grad();
            let b = Tensor::<B, 3>::from_inner(b.clone()).require_grad();
            let bt = b.clone().swap_dims(1, 2);
            let out = if ours {
                autodiff_matmul::<Inner, NoCheckpointing, 3>(a.clone(), bt)
            } else {
                a.clone().matmul(bt)
            };
            let loss = (out.clone() * Tensor::from_inner(weights.clone())).sum();
            let grads = loss.backward();
            (
                out.inner(),
                a.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            )
        };
        let (ours, theirs) = (run(true), run(false));
        ours.0
            .into_data()
            .assert_approx_eq::<f32>(&theirs.0.into_data(), Default::default());
        ours.1
            .into_data()
            .assert_approx_eq::<f32>(&theirs.1.into_data(), Default::default());
        ours.2
            .into_data()
            .assert_approx_eq::<f32>(&theirs.2.into_data(), Default::default());
    }

    /// The model's head on the CPU training backend (`lora::project`) gives burn's
    /// `linear`'s bits, in the value and in the gradients of the hidden states and (an
    /// unfrozen head) of the weight, tied (a transposed view of the embedding) or not,
    /// frozen (through the node and the CPU product) or trained; 2 x 150 rows, enough for
    /// gemm to run on several threads, and 1 x 3 and 2 x 40 rows with a head 64 wide,
    /// which gemm would sum in other passes if they were folded (so they keep `linear`).
    #[test]
    fn the_cpu_head_equals_burns_linear_bit_for_bit() {
        use super::super::flex_values::bits;
        use burn::backend::Flex;
        type B = Autodiff<Flex, NoCheckpointing>;
        let device = Default::default();
        let random = |shape: [usize; 3]| {
            Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        // [2, 40]: 80 rows, but `linear` multiplies matrices of 40, which gemm sums in
        // other passes (k = 1000 > 512) when the output is 64 wide.
        let shapes = [[2, 150, 64], [1, 3, 64], [2, 40, 64]];
        let embedding = random([1, 1000, 64]).reshape([1000, 64]);
        let untied = random([1, 64, 1000]).reshape([64, 1000]);
        let cases = [(true, false), (false, false), (true, true), (false, true)];
        for ((tied, trained), shape) in cases.into_iter().flat_map(|c| shapes.map(|s| (c, s))) {
            let hidden = random(shape);
            let weights = random([shape[0], shape[1], 1000]);
            let rows = shape[0] * shape[1];
            // Only the frozen head over matrices of more than 64 rows takes the node.
            let frozen = Tensor::<B, 2>::from_inner(untied.clone());
            assert_eq!(
                <B as crate::compute::kernels::Kernels>::folds_projection(&frozen, shape[1]),
                shape[1] > 64
            );
            let run = |ours: bool| {
                let x = Tensor::<B, 3>::from_inner(hidden.clone()).require_grad();
                let mut table = Tensor::<B, 2>::from_inner(embedding.clone());
                let mut own = Tensor::<B, 2>::from_inner(untied.clone());
                if trained {
                    (table, own) = (table.require_grad(), own.require_grad());
                }
                let w = if tied {
                    table.clone().transpose()
                } else {
                    own.clone()
                };
                let out = if ours {
                    crate::model::lora::project(x.clone(), w, None)
                } else {
                    burn::tensor::module::linear(x.clone(), w, None)
                };
                let loss = (out.clone() * Tensor::from_inner(weights.clone())).sum();
                let grads = loss.backward();
                let weight_grad = if tied {
                    table.grad(&grads)
                } else {
                    own.grad(&grads)
                };
                assert_eq!(weight_grad.is_some(), trained);
                (
                    bits(out.inner().reshape([rows, 1000])),
                    bits(x.grad(&grads).unwrap().reshape([rows, 64])),
                    weight_grad.map(|g| bits(g.reshape([-1, 64]))),
                )
            };
            assert!(
                run(true) == run(false),
                "tied: {tied}, trained: {trained}, {shape:?}"
            );
        }
    }

    /// A frozen side gets no gradient and costs no product.
    #[test]
    fn autodiff_matmul_leaves_a_frozen_side_without_gradient() {
        type Inner = burn::backend::Flex;
        type B = Autodiff<Inner, NoCheckpointing>;
        let device = Default::default();
        let x =
            Tensor::<B, 2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let w = Tensor::<B, 2>::random([4, 2], Distribution::Normal(0.0, 1.0), &device);
        let out = autodiff_matmul::<Inner, NoCheckpointing, 2>(x.clone(), w.clone());
        let grads = out.sum().backward();
        assert!(w.grad(&grads).is_none());
        let expected = Tensor::<Inner, 2>::ones([3, 2], &device).matmul(w.inner().transpose());
        x.grad(&grads)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
    }
}
