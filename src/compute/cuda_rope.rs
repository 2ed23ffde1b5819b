//! Rotary position embedding on CUDA as one autodiff node (`cuda_rope.cu`), for
//! `compute.cuda_fused_rope`.
//!
//! Op by op, rotating the queries or keys of a layer was two slices, a negation, a
//! concatenation, two products and a sum forward and as many kernels backward, and the
//! gradient then went back into the projection's layout through a copy. Here one kernel
//! rotates each way. Both write `[batch, seq, heads, dim]` in memory (the projection's
//! order) and hand back a `[batch, heads, seq, dim]` view of it: the attention reads
//! views, and the gradient reaching the projection is then contiguous as it needs.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use burn::backend::{Autodiff, Cuda};
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::FusionRuntime;

use super::cublas::CudaFusionTensor;
use super::cuda_kernels::{empty, launch, Args, ByDtype, PerDevice};
use super::cuda_stream;
use super::kernels::FlashFloat;

const SOURCE: &str = concat!(
    include_str!("cuda_elements.cuh"),
    include_str!("cuda_rope.cu")
);
/// Threads per block (`THREADS` in the source).
const THREADS: u32 = 256;

type Cube<F> = CubeBackend<CudaRuntime, F, i32, u8>;
type Handles = HandleContainer<<FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle>;

/// Forward and backward kernels: a pair a thread, and 16 bytes of pairs a thread
/// (`wide`) where the rows allow it.
struct Kernels {
    forward: ByDtype,
    backward: ByDtype,
    wide_forward: ByDtype,
    wide_backward: ByDtype,
}

/// Device `index`'s kernels, compiled on first use (`None` where NVRTC cannot build
/// them, after a warning; the rotation then runs op by op).
fn kernels(index: usize) -> Option<&'static Kernels> {
    static KERNELS: PerDevice<Option<Kernels>> = PerDevice::new();
    KERNELS.build_or_warn(
        index,
        SOURCE,
        ("RoPE kernels", "the rotation runs op by op"),
        |module| {
            Ok(Kernels {
                forward: module.by_dtype("rope_forward")?,
                backward: module.by_dtype("rope_backward")?,
                wide_forward: module.by_dtype("rope_wide_forward")?,
                wide_backward: module.by_dtype("rope_wide_backward")?,
            })
        },
    )
}

/// Whether the kernels serve this rotation: bf16 or f32, tables of the same dtype
/// shaped `[1, 1, seq, dim]`, an even head size, on a device where the kernels build.
pub fn supports<B: burn::tensor::backend::Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    device_index: usize,
) -> bool {
    let [_, _, seq, dim] = x.dims();
    matches!(x.dtype(), DType::BF16 | DType::F32)
        && cos.dtype() == x.dtype()
        && sin.dtype() == x.dtype()
        && cos.dims() == [1, 1, seq, dim]
        && sin.dims() == [1, 1, seq, dim]
        && dim % 2 == 0
        && kernels(device_index).is_some()
}

/// `x * cos + rotate_half(x) * sin` for x `[batch, heads, seq, dim]` and tables
/// `[1, 1, seq, dim]` as one node; the tables get no gradient. Call where
/// [`supports`] said yes.
pub fn rotate<F: FlashFloat, C: CheckpointStrategy>(
    x: Tensor<Autodiff<Cuda<F>, C>, 4>,
    cos: &Tensor<Autodiff<Cuda<F>, C>, 4>,
    sin: &Tensor<Autodiff<Cuda<F>, C>, 4>,
) -> Tensor<Autodiff<Cuda<F>, C>, 4> {
    let table = |t: &Tensor<Autodiff<Cuda<F>, C>, 4>| -> CudaFusionTensor {
        t.clone().inner().into_primitive().tensor()
    };
    let (cos, sin) = (table(cos), table(sin));
    let x = x.into_primitive().tensor();
    let prepared = RopeBackward::<F>(std::marker::PhantomData)
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful();
    let out = register::<F>(x.primitive, cos.clone(), sin.clone(), false);
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(RopeState { cos, sin }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct RopeBackward<F>(std::marker::PhantomData<F>);

#[derive(Debug, Clone)]
struct RopeState {
    cos: CudaFusionTensor,
    sin: CudaFusionTensor,
}

impl<F: FlashFloat> Backward<Cuda<F>, 1> for RopeBackward<F> {
    type State = RopeState;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let dy = grads.consume::<Cuda<F>>(&ops.node);
        let Some(node) = node else { return };
        let dx = register::<F>(dy, ops.state.cos, ops.state.sin, true);
        grads.register::<Cuda<F>>(node.id, dx);
    }
}

/// The rotation (or, `backward`, its gradient) of `x` as a custom op.
fn register<F: FlashFloat>(
    x: CudaFusionTensor,
    cos: CudaFusionTensor,
    sin: CudaFusionTensor,
    backward: bool,
) -> CudaFusionTensor {
    cuda_stream::check_earlier_failure();
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs([&x, &cos, &sin]);
    let out = TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
    let desc = CustomOpIr::new(
        if backward {
            "graft_rope_backward"
        } else {
            "graft_rope"
        },
        &[x.into_ir(), cos.into_ir(), sin.into_ir()],
        &[out],
    );
    let op = Rope::<F> {
        desc: desc.clone(),
        backward,
        _float: std::marker::PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .output()
}

/// Set by a test to run the pair-a-thread kernels everywhere, to compare their bits with
/// the wide ones'; nothing else sets it.
static SCALAR_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn scalar_only() -> bool {
    SCALAR_ONLY.load(std::sync::atomic::Ordering::Relaxed)
}

/// The kernels' `struct Strides`: elements between batches, heads and rows.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Strides {
    batch: i64,
    head: i64,
    row: i64,
}

/// The kernels' `struct Shape`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct KernelShape {
    batch: i32,
    heads: i32,
    seq: i32,
    dim: i32,
}

#[derive(Debug)]
struct Rope<F> {
    desc: CustomOpIr,
    backward: bool,
    _float: std::marker::PhantomData<F>,
}

impl<F: FlashFloat> Operation<FusionCubeRuntime<CudaRuntime>> for Rope<F> {
    fn execute(&self, handles: &mut Handles) {
        let ([x, cos, sin], [out_ir]) = self.desc.as_fixed();
        let x = handles.get_float_tensor::<Cube<F>>(x);
        // Rows may lie anywhere; their elements must be adjacent.
        let x = if x.meta.strides()[3] == 1 {
            x
        } else {
            burn_cubecl::kernel::into_contiguous(x)
        };
        let contiguous = burn_cubecl::kernel::into_contiguous::<CudaRuntime>;
        let cos = contiguous(handles.get_float_tensor::<Cube<F>>(cos));
        let sin = contiguous(handles.get_float_tensor::<Cube<F>>(sin));
        assert!(
            cos.dtype == x.dtype && sin.dtype == x.dtype,
            "RoPE: the tables are read in the rotated tensor's dtype"
        );
        let [batch, heads, seq, dim] = [0, 1, 2, 3].map(|i| x.meta.shape()[i]);
        // [batch, seq, heads, dim] in memory, seen as [batch, heads, seq, dim].
        let memory = empty(&x, Shape::from(vec![batch, seq, heads, dim]), x.dtype);
        let out: CubeTensor<CudaRuntime> = burn_cubecl::ops::permute(memory, &[0, 2, 1, 3]);
        let strides = |t: &CubeTensor<CudaRuntime>| {
            let s = t.meta.strides();
            Strides {
                batch: s[0] as i64,
                head: s[1] as i64,
                row: s[2] as i64,
            }
        };
        let (xs, os) = (strides(&x), strides(&out));
        let shape = KernelShape {
            batch: batch as i32,
            heads: heads as i32,
            seq: seq as i32,
            dim: dim as i32,
        };
        let kernels = kernels(x.device.index).expect("built before the op was registered");
        let (scalar, wide) = if self.backward {
            (kernels.backward, kernels.wide_backward)
        } else {
            (kernels.forward, kernels.wide_forward)
        };
        let (scalar, wide) = (scalar.of(x.dtype), wide.of(x.dtype));
        let pairs = batch * heads * seq * (dim / 2);
        // Elements in a 16-byte piece: the wide kernel needs every row start, half-row
        // and table row to be whole pieces (pointers are checked at launch).
        let piece = 16 / x.dtype.size();
        let whole = |s: &Strides| {
            [s.batch, s.head, s.row]
                .iter()
                .all(|v| v % piece as i64 == 0)
        };
        let wide_fits =
            (dim / 2) % piece == 0 && whole(&xs) && whole(&os) && pairs / piece < i32::MAX as usize;
        if pairs > 0 {
            let buffers = [&x, &cos, &sin, &out]
                .map(|t| t.handle.clone().binding())
                .to_vec();
            launch(&x, buffers, move |p, stream| {
                let aligned = p.iter().all(|pointer| pointer % 16 == 0);
                let (function, threads) = if wide_fits && aligned && !scalar_only() {
                    (wide, pairs / piece)
                } else {
                    (scalar, pairs)
                };
                let blocks = threads.div_ceil(THREADS as usize) as u32;
                let mut args = Args::default();
                args.push(p[0]).push(xs).push(p[1]).push(p[2]).push(p[3]);
                args.push(os).push(shape);
                // SAFETY: the arguments follow the rope kernels' shared parameters; the
                // buffers are held until the kernel ends; the wide kernel only runs
                // where its pieces are whole and aligned (checked above).
                unsafe { args.launch(function, (blocks, 1), THREADS, 0, stream) };
            });
        }
        handles.register_float_tensor::<Cube<F>>(&out_ir.id, out);
    }
}

#[cfg(test)]
mod tests {
    //! Runs where a CUDA device is present (the GPU machine's test binary); elsewhere
    //! it says why it was skipped.
    use super::*;
    use crate::compute::cuda_kernels::no_gpu;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::{Distribution, FloatDType};

    type I = Cuda<burn::tensor::bf16>;
    type B = Autodiff<I, NoCheckpointing>;

    fn read(t: Tensor<I, 4>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    /// The rotation of a head-transposed view (as the model splits its projections)
    /// and its gradient: the kernel's against burn's ops in f32 on the same values
    /// (within the kernel's bf16 roundings), bf16 and f32; a second run gives the same
    /// bits.
    #[test]
    fn the_rope_kernels_agree_with_burns_ops_and_repeat_to_the_bit() {
        if let Some(reason) = no_gpu() {
            eprintln!(
                "skipped the_rope_kernels_agree_with_burns_ops_and_repeat_to_the_bit: {reason}"
            );
            return;
        }
        let device = Default::default();
        let [batch, seq, heads, dim] = [2, 37, 3, 64];
        for dtype in [DType::BF16, DType::F32] {
            let cast = |t: Tensor<I, 4>| t.cast(dtype);
            let projected = cast(
                Tensor::<I, 3>::random(
                    [batch, seq, heads * dim],
                    Distribution::Normal(0.0, 2.0),
                    &device,
                )
                .reshape([batch, seq, heads, dim]),
            );
            let cos = cast(Tensor::<I, 4>::random(
                [1, 1, seq, dim],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            ));
            let sin = cast(Tensor::<I, 4>::random(
                [1, 1, seq, dim],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            ));
            let dy = cast(Tensor::<I, 4>::random(
                [batch, heads, seq, dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            ));
            let run = |ours: bool| {
                let p = Tensor::<B, 4>::from_inner(projected.clone()).require_grad();
                let x = p.clone().swap_dims(1, 2);
                let (c, s) = (
                    Tensor::<B, 4>::from_inner(cos.clone()),
                    Tensor::<B, 4>::from_inner(sin.clone()),
                );
                let out = if ours {
                    assert!(supports(&x, &c, &s, 0));
                    rotate::<burn::tensor::bf16, NoCheckpointing>(x, &c, &s)
                } else {
                    let f32 = FloatDType::F32;
                    let (x, c, s) = (x.cast(f32), c.cast(f32), s.cast(f32));
                    let half = dim / 2;
                    let rotated = Tensor::cat(
                        vec![
                            x.clone().narrow(3, half, half).neg(),
                            x.clone().narrow(3, 0, half),
                        ],
                        3,
                    );
                    x * c + rotated * s
                };
                let upstream = Tensor::<B, 4>::from_inner(dy.clone());
                let upstream = if ours {
                    upstream
                } else {
                    upstream.cast(FloatDType::F32)
                };
                let grads = (out.clone() * upstream).sum().backward();
                (read(out.inner()), read(p.grad(&grads).unwrap()))
            };
            let (out, grad) = run(true);
            let (out2, grad2) = run(true);
            let bits = |v: &[f32]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&out2), "{dtype:?}: output repeats");
            assert_eq!(bits(&grad), bits(&grad2), "{dtype:?}: gradient repeats");
            let (want, want_grad) = run(false);
            let relative = if dtype == DType::BF16 {
                1.0 / 64.0
            } else {
                1e-6
            };
            for (what, got, want) in [("output", &out, &want), ("gradient", &grad, &want_grad)] {
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (g - w).abs() <= relative * (w.abs() + scale / 8.0),
                        "{dtype:?}: {what}[{i}] {g} against {w}"
                    );
                }
            }
        }
    }

    /// The wide kernels (16 bytes of pairs a thread) give the bits of the pair-a-thread
    /// kernels, forward and backward, bf16 and f32, on the model's head-transposed view.
    #[test]
    fn the_wide_rope_kernels_give_the_scalar_kernels_bits() {
        if let Some(reason) = no_gpu() {
            eprintln!("skipped the_wide_rope_kernels_give_the_scalar_kernels_bits: {reason}");
            return;
        }
        let device = Default::default();
        let [batch, seq, heads, dim] = [2, 37, 3, 64];
        for dtype in [DType::BF16, DType::F32] {
            let random = |shape: [usize; 4], spread: f64| {
                Tensor::<I, 4>::random(shape, Distribution::Normal(0.0, spread), &device)
                    .cast(dtype)
            };
            let projected = random([batch, seq, heads, dim], 2.0);
            let (cos, sin) = (random([1, 1, seq, dim], 0.7), random([1, 1, seq, dim], 0.7));
            let dy = random([batch, heads, seq, dim], 1.0);
            let run = |scalar: bool| {
                SCALAR_ONLY.store(scalar, std::sync::atomic::Ordering::Relaxed);
                let p = Tensor::<B, 4>::from_inner(projected.clone()).require_grad();
                let (c, s) = (
                    Tensor::<B, 4>::from_inner(cos.clone()),
                    Tensor::<B, 4>::from_inner(sin.clone()),
                );
                let out = rotate::<burn::tensor::bf16, NoCheckpointing>(
                    p.clone().swap_dims(1, 2),
                    &c,
                    &s,
                );
                let grads = (out.clone() * Tensor::<B, 4>::from_inner(dy.clone()))
                    .sum()
                    .backward();
                let bits =
                    |t: Tensor<I, 4>| read(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let result = (bits(out.inner()), bits(p.grad(&grads).unwrap()));
                SCALAR_ONLY.store(false, std::sync::atomic::Ordering::Relaxed);
                result
            };
            let (wide_out, wide_grad) = run(false);
            let (scalar_out, scalar_grad) = run(true);
            assert!(wide_out == scalar_out, "{dtype:?}: outputs differ");
            assert!(wide_grad == scalar_grad, "{dtype:?}: gradients differ");
        }
    }
}
