//! SwiGLU's gating on CUDA as one autodiff node (`cuda_swiglu.cu`), for
//! `compute.cuda_fused_swiglu`.
//!
//! The fused node over burn's ops (`fused_swiglu`) already ran each pass as one kernel,
//! but burn's sigmoid is three precise transcendentals an element, which made those
//! kernels arithmetic-bound: on llama-1b at 16k tokens about 0.8 ms a layer of an H200's
//! time for what is a read of two tensors and a write of one forward, and a read of three
//! and a write of two backward. These kernels take the sigmoid from one fast
//! exponential and a reciprocal and move 16 bytes at a time.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Cuda};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;

use super::cublas::CudaFusionTensor;
use super::cuda_kernels::{launch, Args, ByDtype, Function, PerDevice};
use super::cuda_op::register_op;
use super::kernels::FlashFloat;

const SOURCE: &str = concat!(
    include_str!("cuda_elements.cuh"),
    include_str!("cuda_swiglu.cu")
);
/// Threads per block (`THREADS` in the source).
const THREADS: u32 = 256;

struct Kernels {
    forward: ByDtype,
    backward: ByDtype,
}

/// Device `index`'s kernels, compiled on first use (`None` where NVRTC cannot build
/// them, after a warning; the gating then runs on burn's ops).
fn kernels(index: usize) -> Option<&'static Kernels> {
    static KERNELS: PerDevice<Option<Kernels>> = PerDevice::new();
    KERNELS.build_or_warn(
        index,
        SOURCE,
        ("SwiGLU kernels", "the gating runs on burn's ops"),
        |module| {
            Ok(Kernels {
                forward: module.by_dtype("swiglu_forward")?,
                backward: module.by_dtype("swiglu_backward")?,
            })
        },
    )
}

/// Whether the kernels serve this gating: gate and up of one shape and one dtype, bf16
/// or f32, on a device where the kernels build.
pub fn supports<B: burn::tensor::backend::Backend>(
    gate: &Tensor<B, 3>,
    up: &Tensor<B, 3>,
    device_index: usize,
) -> bool {
    matches!(gate.dtype(), DType::BF16 | DType::F32)
        && up.dtype() == gate.dtype()
        && up.dims() == gate.dims()
        && kernels(device_index).is_some()
}

/// `silu(gate) * up` as one node. Call where [`supports`] said yes.
pub fn gate<F: FlashFloat, C: CheckpointStrategy>(
    gate: Tensor<Autodiff<Cuda<F>, C>, 3>,
    up: Tensor<Autodiff<Cuda<F>, C>, 3>,
) -> Tensor<Autodiff<Cuda<F>, C>, 3> {
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let prepared = SwigluBackward::<F>(std::marker::PhantomData)
        .prepare::<C>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful();
    let (g, u) = (gate.primitive, up.primitive);
    let out = forward::<F>(&g, &u);
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish((g, u), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct SwigluBackward<F>(std::marker::PhantomData<F>);

impl<F: FlashFloat> Backward<Cuda<F>, 2> for SwigluBackward<F> {
    type State = (CudaFusionTensor, CudaFusionTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_gate, node_up] = ops.parents;
        let dy = grads.consume::<Cuda<F>>(&ops.node);
        let (g, u) = ops.state;
        let (dgate, dup) = backward::<F>(&g, &u, dy);
        for (node, grad) in [(node_gate, dgate), (node_up, dup)] {
            if let Some(node) = node {
                grads.register::<Cuda<F>>(node.id, grad);
            }
        }
    }
}

/// Launches `function` (`swiglu_forward` or `swiglu_backward`: the buffers in the order
/// given, then the element count and whether every buffer is 16-byte aligned) with a
/// thread for each 16-byte piece of the first of `tensors`.
fn launch_gating(function: Function, tensors: &[&CubeTensor<CudaRuntime>]) {
    let first = tensors[0];
    let n = first.meta.shape().iter().product::<usize>();
    let piece = 16 / first.dtype.size();
    let blocks = n.div_ceil(piece).div_ceil(THREADS as usize) as u32;
    let n = n as i64;
    let buffers = tensors.iter().map(|t| t.handle.clone().binding()).collect();
    launch(first, buffers, move |p, stream| {
        let wide = p.iter().all(|pointer| pointer % 16 == 0);
        let mut args = Args::default();
        for &pointer in &p {
            args.push(pointer);
        }
        args.push(n).push(wide as i32);
        // SAFETY: the arguments follow both kernels' parameters in the source; the
        // buffers are held until the kernel ends; `wide` only where all are aligned.
        unsafe { args.launch(function, (blocks, 1), THREADS, 0, stream) };
    });
}

fn forward<F: FlashFloat>(g: &CudaFusionTensor, u: &CudaFusionTensor) -> CudaFusionTensor {
    let shape = g.shape.dims::<3>().to_vec();
    let mut out = register_op::<F>(
        "graft_swiglu",
        vec![g.clone(), u.clone()],
        vec![(shape, g.dtype)],
        move |inputs, outputs| {
            let [g, u] = inputs else {
                unreachable!("two inputs")
            };
            let kernels = kernels(g.device.index).expect("built before the op was registered");
            launch_gating(kernels.forward.of(g.dtype), &[g, u, &outputs[0]]);
        },
    );
    out.pop().expect("out")
}

fn backward<F: FlashFloat>(
    g: &CudaFusionTensor,
    u: &CudaFusionTensor,
    dy: CudaFusionTensor,
) -> (CudaFusionTensor, CudaFusionTensor) {
    let shape = g.shape.dims::<3>().to_vec();
    let mut out = register_op::<F>(
        "graft_swiglu_backward",
        vec![g.clone(), u.clone(), dy],
        vec![(shape.clone(), g.dtype), (shape, u.dtype)],
        move |inputs, outputs| {
            let [g, u, dy] = inputs else {
                unreachable!("three inputs")
            };
            let [dg, du] = outputs else {
                unreachable!("two outputs")
            };
            assert!(
                dy.dtype == g.dtype,
                "SwiGLU: the gating and its gradient share one dtype"
            );
            let kernels = kernels(g.device.index).expect("built before the op was registered");
            launch_gating(kernels.backward.of(g.dtype), &[g, u, dy, dg, du]);
        },
    );
    let du = out.pop().expect("du");
    (out.pop().expect("dg"), du)
}

#[cfg(test)]
mod tests {
    //! Runs where a CUDA device is present (the GPU machine's test binary); elsewhere
    //! it says why it was skipped.
    use super::*;
    use crate::compute::cuda_kernels::no_gpu;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::Distribution;

    type I = Cuda<burn::tensor::bf16>;
    type B = Autodiff<I, NoCheckpointing>;

    fn read(t: Tensor<I, 3>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    /// The gating and both gradients against the fused node over burn's ops (precise
    /// sigmoid, f32), bf16 and f32, on a shape whose last piece is ragged; a second run
    /// gives the same bits.
    #[test]
    fn the_swiglu_kernels_agree_with_burns_ops_and_repeat_to_the_bit() {
        if let Some(reason) = no_gpu() {
            eprintln!(
                "skipped the_swiglu_kernels_agree_with_burns_ops_and_repeat_to_the_bit: {reason}"
            );
            return;
        }
        let device = Default::default();
        let shape = [2, 5, 301];
        for dtype in [DType::BF16, DType::F32] {
            let random = |spread: f64| {
                Tensor::<I, 3>::random(shape, Distribution::Normal(0.0, spread), &device)
                    .cast(dtype)
            };
            let (g0, u0, dy) = (random(4.0), random(2.0), random(1.0));
            let run = |ours: bool| {
                let g = Tensor::<B, 3>::from_inner(g0.clone()).require_grad();
                let u = Tensor::<B, 3>::from_inner(u0.clone()).require_grad();
                let y = if ours {
                    assert!(supports(&g, &u, 0));
                    gate::<burn::tensor::bf16, NoCheckpointing>(g.clone(), u.clone())
                } else {
                    crate::compute::fused_swiglu::gate::<I, NoCheckpointing>(g.clone(), u.clone())
                };
                let grads = (y.clone() * Tensor::<B, 3>::from_inner(dy.clone()))
                    .sum()
                    .backward();
                [
                    read(y.inner()),
                    read(g.grad(&grads).unwrap()),
                    read(u.grad(&grads).unwrap()),
                ]
            };
            let ours = run(true);
            let again = run(true);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let theirs = run(false);
            // bf16: the two sigmoids may round an output to neighbouring bf16 values.
            let relative = if dtype == DType::BF16 {
                1.0 / 64.0
            } else {
                1e-5
            };
            for (what, (got, (repeat, want))) in ["output", "gate gradient", "up gradient"]
                .iter()
                .zip(ours.iter().zip(again.iter().zip(theirs.iter())))
            {
                assert_eq!(bits(got), bits(repeat), "{dtype:?}: {what} repeats");
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (g - w).abs() <= relative * (w.abs() + scale / 64.0),
                        "{dtype:?}: {what}[{i}] {g} against {w}"
                    );
                }
            }
        }
    }
}
