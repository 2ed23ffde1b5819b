//! RMSNorm on CUDA as one autodiff node (`cuda_norm.cu`), for `compute.cuda_fused_norm`.
//!
//! Op by op a bf16 norm was three kernels forward (a reduction launched with 64 blocks
//! for the whole activation and two broadcast products) and about five backward; on
//! llama-1b at 16k tokens the model's 33 norms took 18 ms of a 477 ms step on an H200
//! (ncu). Here a warp norms a row forward and takes its gradient backward, one kernel
//! each way; the weight's gradient, where the weight trains, is two more (fixed chunks
//! of rows, then the chunks in order).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Cuda};
use burn::tensor::{DType, FloatDType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;

use super::cublas::CudaFusionTensor;
use super::cuda_kernels::{empty, launch, Args, ByDtype, Function, PerDevice};
use super::cuda_op::register_op;
use super::grad_sum::register_summed;
use super::kernels::FlashFloat;

const SOURCE: &str = concat!(
    include_str!("cuda_elements.cuh"),
    include_str!("cuda_norm.cu")
);
/// Warps per block (`WARPS` in the source): one row each.
const WARPS: u32 = 8;
/// Threads per block (`THREADS`).
const THREADS: u32 = WARPS * 32;
/// Rows per partial sum of the weight's gradient (`CHUNK_ROWS`).
const CHUNK_ROWS: usize = 64;

struct Kernels {
    forward: ByDtype,
    backward: ByDtype,
    weight_partials: ByDtype,
    weight_sum: Function,
}

/// Device `index`'s kernels, compiled on first use (`None` where NVRTC cannot build
/// them, after a warning; the norm then runs op by op).
fn kernels(index: usize) -> Option<&'static Kernels> {
    static KERNELS: PerDevice<Option<Kernels>> = PerDevice::new();
    KERNELS.build_or_warn(
        index,
        SOURCE,
        ("RMSNorm kernels", "the norm runs op by op"),
        |module| {
            Ok(Kernels {
                forward: module.by_dtype("norm_forward")?,
                backward: module.by_dtype("norm_backward")?,
                weight_partials: module.by_dtype("norm_weight_partials")?,
                weight_sum: module.function("norm_weight_sum", 0)?,
            })
        },
    )
}

/// Whether the kernels serve this norm: bf16 or f32 activations and a weight of the
/// same dtype, on a device where the kernels build.
pub fn supports<B: burn::tensor::backend::Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 1>,
    device_index: usize,
) -> bool {
    let width = x.dims()[D - 1];
    let rows = x.dims().iter().product::<usize>() / width.max(1);
    matches!(x.dtype(), DType::BF16 | DType::F32)
        && weight.dtype() == x.dtype()
        // Rows to norm, and few enough that the weight's gradient's chunks fit a grid's
        // second dimension (65,535 of CHUNK_ROWS rows).
        && rows > 0
        && rows.div_ceil(CHUNK_ROWS) <= 65_535
        && kernels(device_index).is_some()
}

/// `x / sqrt(mean(x²) + eps) * w` over x's last dimension (Gemma: `* (1 + w)`) as one
/// node. Call where [`supports`] said yes.
pub fn rms_norm<F: FlashFloat, C: CheckpointStrategy, const D: usize>(
    x: Tensor<Autodiff<Cuda<F>, C>, D>,
    weight: Tensor<Autodiff<Cuda<F>, C>, 1>,
    eps: f64,
    plus_one: bool,
) -> Tensor<Autodiff<Cuda<F>, C>, D> {
    let shape = x.dims();
    let width = shape[D - 1];
    assert_eq!(weight.dims(), [width], "one weight per normed element");
    let rows = shape.iter().product::<usize>() / width.max(1);
    let x = x.reshape([rows, width]).into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let prepared = NormBackward::<F>(std::marker::PhantomData)
        .prepare::<C>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful();
    let (out, inverse) = forward::<F>(&x.primitive, &weight.primitive, eps as f32, plus_one);
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(
            NormState {
                x: x.primitive,
                weight: weight.primitive,
                inverse,
                plus_one,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::<Autodiff<Cuda<F>, C>, 2>::from_primitive(TensorPrimitive::Float(output)).reshape(shape)
}

#[derive(Debug)]
struct NormBackward<F>(std::marker::PhantomData<F>);

#[derive(Debug, Clone)]
struct NormState {
    x: CudaFusionTensor,
    weight: CudaFusionTensor,
    /// `1 / sqrt(mean(x²) + eps)` per row, f32.
    inverse: CudaFusionTensor,
    plus_one: bool,
}

impl<F: FlashFloat> Backward<Cuda<F>, 2> for NormBackward<F> {
    type State = NormState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Cuda<F>>(&ops.node);
        let state = ops.state;
        if let Some(node) = node_w {
            let dw = weight_gradient::<F>(&state.x, &state.inverse, &dy);
            let dw =
                Tensor::<Cuda<F>, 1>::from_primitive(TensorPrimitive::Float(dw)).cast(match state
                    .weight
                    .dtype
                {
                    DType::BF16 => FloatDType::BF16,
                    _ => FloatDType::F32,
                });
            grads.register::<Cuda<F>>(node.id, dw.into_primitive().tensor());
        }
        if let Some(node) = node_x {
            let dx = input_gradient::<F>(&state, dy);
            // The residual stream's other part came from the residual sum.
            register_summed!(grads, node, Cuda<F>, dx);
        }
    }
}

fn forward<F: FlashFloat>(
    x: &CudaFusionTensor,
    weight: &CudaFusionTensor,
    eps: f32,
    plus_one: bool,
) -> (CudaFusionTensor, CudaFusionTensor) {
    let [rows, width] = [x.shape[0], x.shape[1]];
    let dtype = x.dtype;
    let mut out = register_op::<F>(
        "graft_rms_norm",
        vec![x.clone(), weight.clone()],
        vec![(vec![rows, width], dtype), (vec![rows], DType::F32)],
        move |inputs, outputs| {
            let [x, w] = inputs else {
                unreachable!("two inputs")
            };
            let [out, inverse] = outputs else {
                unreachable!("two outputs")
            };
            let kernels = kernels(x.device.index).expect("built before the op was registered");
            let function = kernels.forward.of(x.dtype);
            let buffers = [x, w, out, inverse]
                .map(|t| t.handle.clone().binding())
                .to_vec();
            launch(x, buffers, move |p, stream| {
                let mut args = Args::default();
                args.push(p[0]).push(p[1]).push(p[2]).push(p[3]);
                args.push(rows as i64)
                    .push(width as i64)
                    .push(eps)
                    .push(plus_one as i32);
                // SAFETY: the arguments follow `norm_forward`'s parameters in the
                // source; the buffers are held until the kernel ends.
                unsafe { args.launch(function, (row_blocks(rows), 1), THREADS, 0, stream) };
            });
        },
    );
    let inverse = out.pop().expect("inverse");
    (out.pop().expect("out"), inverse)
}

fn input_gradient<F: FlashFloat>(state: &NormState, dy: CudaFusionTensor) -> CudaFusionTensor {
    let [rows, width] = [state.x.shape[0], state.x.shape[1]];
    let plus_one = state.plus_one;
    let inputs = vec![
        state.x.clone(),
        state.weight.clone(),
        state.inverse.clone(),
        dy,
    ];
    let mut out = register_op::<F>(
        "graft_rms_norm_backward",
        inputs,
        vec![(vec![rows, width], state.x.dtype)],
        move |inputs, outputs| {
            let [x, w, inverse, dy] = inputs else {
                unreachable!("four inputs")
            };
            assert_same_dtype(x, dy);
            let kernels = kernels(x.device.index).expect("built before the op was registered");
            let function = kernels.backward.of(x.dtype);
            let buffers = [x, w, inverse, dy, &outputs[0]]
                .map(|t| t.handle.clone().binding())
                .to_vec();
            launch(x, buffers, move |p, stream| {
                let mut args = Args::default();
                args.push(p[0]).push(p[1]).push(p[2]).push(p[3]).push(p[4]);
                args.push(rows as i64)
                    .push(width as i64)
                    .push(plus_one as i32);
                // SAFETY: the arguments follow `norm_backward`'s parameters.
                unsafe { args.launch(function, (row_blocks(rows), 1), THREADS, 0, stream) };
            });
        },
    );
    out.pop().expect("dx")
}

/// `dw = Σ_rows dy (x r)` in f32 `[width]`.
fn weight_gradient<F: FlashFloat>(
    x: &CudaFusionTensor,
    inverse: &CudaFusionTensor,
    dy: &CudaFusionTensor,
) -> CudaFusionTensor {
    let [rows, width] = [x.shape[0], x.shape[1]];
    let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
    let mut out = register_op::<F>(
        "graft_rms_norm_weight_gradient",
        vec![x.clone(), inverse.clone(), dy.clone()],
        vec![(vec![width], DType::F32)],
        move |inputs, outputs| {
            let [x, inverse, dy] = inputs else {
                unreachable!("three inputs")
            };
            assert_same_dtype(x, dy);
            let kernels = kernels(x.device.index).expect("built before the op was registered");
            let (partials_fn, sum_fn) = (kernels.weight_partials.of(x.dtype), kernels.weight_sum);
            let partials = empty(x, Shape::from(vec![chunks, width]), DType::F32);
            let buffers = [x, inverse, dy, &partials, &outputs[0]]
                .map(|t| t.handle.clone().binding())
                .to_vec();
            let column_blocks = (width as u32).div_ceil(THREADS);
            launch(x, buffers, move |p, stream| {
                let mut args = Args::default();
                args.push(p[0]).push(p[1]).push(p[2]).push(p[3]);
                args.push(rows as i64).push(width as i64);
                // SAFETY: the arguments follow `norm_weight_partials`'s parameters.
                unsafe {
                    args.launch(
                        partials_fn,
                        (column_blocks, chunks as u32),
                        THREADS,
                        0,
                        stream,
                    )
                };
                let mut args = Args::default();
                args.push(p[3])
                    .push(p[4])
                    .push(chunks as i64)
                    .push(width as i64);
                // SAFETY: `norm_weight_sum`'s parameters; the same stream orders it
                // after the partials.
                unsafe { args.launch(sum_fn, (column_blocks, 1), THREADS, 0, stream) };
            });
        },
    );
    out.pop().expect("dw")
}

/// The kernels read x and dy as one element type (and w too: `supports` checked it).
fn assert_same_dtype(x: &CubeTensor<CudaRuntime>, dy: &CubeTensor<CudaRuntime>) {
    assert!(
        dy.dtype == x.dtype,
        "RMSNorm: the activations and their gradient share one dtype"
    );
}

/// Blocks for one warp a row.
fn row_blocks(rows: usize) -> u32 {
    (rows as u32).div_ceil(WARPS).max(1)
}

#[cfg(test)]
mod tests {
    //! Runs where a CUDA device is present (the GPU machine's test binary); elsewhere
    //! each test says why it was skipped.
    use super::*;
    use crate::compute::cuda_kernels::no_gpu;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::Distribution;

    type I = Cuda<burn::tensor::bf16>;
    type B = Autodiff<I, NoCheckpointing>;

    fn read<const D: usize>(t: Tensor<I, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    /// Output, dx and dw of the node for inputs `x` and `w` and upstream gradient `dy`.
    fn node(
        x: &Tensor<I, 3>,
        w: &Tensor<I, 1>,
        dy: &Tensor<I, 3>,
        plus_one: bool,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let xt = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
        let wt = Tensor::<B, 1>::from_inner(w.clone()).require_grad();
        assert!(supports(&xt, &wt, 0));
        let y = rms_norm::<burn::tensor::bf16, NoCheckpointing, 3>(
            xt.clone(),
            wt.clone(),
            1e-5,
            plus_one,
        );
        let grads = (y.clone() * Tensor::from_inner(dy.clone()))
            .sum()
            .backward();
        (
            read(y.inner()),
            read(xt.grad(&grads).unwrap()),
            read(wt.grad(&grads).unwrap()),
        )
    }

    /// The same from burn's ops in f32 on the same (bf16) values.
    fn reference(
        x: &Tensor<I, 3>,
        w: &Tensor<I, 1>,
        dy: &Tensor<I, 3>,
        plus_one: bool,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let f32 = FloatDType::F32;
        let xt = Tensor::<B, 3>::from_inner(x.clone().cast(f32)).require_grad();
        let wt = Tensor::<B, 1>::from_inner(w.clone().cast(f32)).require_grad();
        let variance = xt.clone().square().mean_dim(2);
        let normed = xt.clone() * (variance + 1e-5).sqrt().recip();
        let factor = if plus_one {
            wt.clone() + 1.0
        } else {
            wt.clone()
        };
        let y = normed * factor.unsqueeze::<3>();
        let grads = (y.clone() * Tensor::from_inner(dy.clone().cast(f32)))
            .sum()
            .backward();
        (
            read(y.inner()),
            read(xt.grad(&grads).unwrap()),
            read(wt.grad(&grads).unwrap()),
        )
    }

    fn assert_close(case: &str, what: &str, got: &[f32], want: &[f32], relative: f32) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= relative * w.abs() + 1e-3 * scale,
                "{case}: {what}[{i}] {g} against {w}"
            );
        }
    }

    /// Output and gradients agree with burn's ops in f32 on the same values (within the
    /// node's bf16 roundings: the normed row, the product with the weight, dx), for a
    /// width read 16 bytes at a time and one that is not (Llama's and Gemma's weight),
    /// with the weight trained; and a second run gives the same bits.
    #[test]
    fn the_norm_kernels_agree_with_burns_ops_and_repeat_to_the_bit() {
        if let Some(reason) = no_gpu() {
            eprintln!(
                "skipped the_norm_kernels_agree_with_burns_ops_and_repeat_to_the_bit: {reason}"
            );
            return;
        }
        let device = Default::default();
        for (rows, width) in [(2 * 75, 2048), (3 * 7, 100), (130, 64)] {
            for plus_one in [false, true] {
                let case = format!("{rows} x {width}, plus_one {plus_one}");
                let x = Tensor::<I, 3>::random(
                    [2, rows / 2, width],
                    Distribution::Normal(0.0, 2.0),
                    &device,
                );
                let w = Tensor::<I, 1>::random([width], Distribution::Normal(1.0, 0.5), &device);
                let dy = Tensor::<I, 3>::random(
                    [2, rows / 2, width],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let (y, dx, dw) = node(&x, &w, &dy, plus_one);
                let (y2, dx2, dw2) = node(&x, &w, &dy, plus_one);
                let bits = |v: &[f32]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&y2), "{case}: output repeats");
                assert_eq!(bits(&dx), bits(&dx2), "{case}: dx repeats");
                assert_eq!(bits(&dw), bits(&dw2), "{case}: dw repeats");
                let (ry, rdx, rdw) = reference(&x, &w, &dy, plus_one);
                assert_close(&case, "y", &y, &ry, 1.0 / 64.0);
                assert_close(&case, "dx", &dx, &rdx, 1.0 / 64.0);
                // dw is summed in f32 and rounded once to the weight's bf16.
                assert_close(&case, "dw", &dw, &rdw, 1.0 / 64.0);
            }
        }
    }
}
