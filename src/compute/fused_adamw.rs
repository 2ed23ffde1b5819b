//! AdamW with global-norm clipping over a group of f32 parameters on CUDA, in a few
//! kernel launches (`fused_adamw.cu`) instead of several ops per parameter.
//!
//! The optimizer's general path concatenates the group's gradients and parameters
//! into flat tensors, updates them, and hands each parameter a view back: with
//! LoRA's 224 matrices on llama-1b that was about 700 small kernels and 20 ms a step,
//! nearly all of it the host issuing them. Here the gradients, parameters and the
//! flat moments go to one fusion custom op; the kernels read each tensor where it is.

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::backend::Cuda;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, FloatElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::FusionRuntime;

use crate::compute::cublas::CudaFusionTensor;
use crate::compute::cuda_kernels::{empty, launch, Args, Function, PerDevice};
use crate::compute::cuda_stream;
pub use crate::compute::kernels::Hyper;

const SOURCE: &str = include_str!("fused_adamw.cu");
/// Tensors per launch (`MAX_TENSORS` in the source).
const MAX_TENSORS: usize = 48;
/// Elements per block (`CHUNK`).
const CHUNK: usize = 4096;
/// Threads per block (`THREADS`).
const THREADS: u32 = 256;

/// One AdamW step over `params` (each with its gradient) and the group's flat moments
/// `m` and `v` (the members' in order), clipping the scaled gradients' global norm to
/// `clip` when it is positive. All tensors f32. Returns the new parameters, moments
/// and the gradients' norm (`[1]`, before clipping). Call only where [`kernels`] built.
pub fn step<F: FloatElement>(
    params: Vec<Tensor<Cuda<F>, 1>>,
    grads: Vec<Tensor<Cuda<F>, 1>>,
    m: Tensor<Cuda<F>, 1>,
    v: Tensor<Cuda<F>, 1>,
    hyper: Hyper,
    clip: f32,
) -> crate::compute::kernels::AdamWUpdate<Cuda<F>> {
    // Built here, on the training thread, for the device this group lives on.
    kernels(m.device().index).expect("the fused AdamW kernels build on every device");
    let to = |t: Tensor<Cuda<F>, 1>| -> CudaFusionTensor { t.into_primitive().tensor() };
    let back =
        |p: CudaFusionTensor| Tensor::<Cuda<F>, 1>::from_primitive(TensorPrimitive::Float(p));
    let (params, m, v, norm) = register::<F>(
        params.into_iter().map(to).collect(),
        grads.into_iter().map(to).collect(),
        to(m),
        to(v),
        hyper,
        clip,
    );
    (
        params.into_iter().map(back).collect(),
        back(m),
        back(v),
        back(norm),
    )
}

pub(crate) struct Kernels {
    sum_squares: Function,
    clip_factor: Function,
    adamw: Function,
}

/// Device `index`'s kernels, compiled on first use (`None` where NVRTC cannot build
/// them).
pub(crate) fn kernels(index: usize) -> Option<&'static Kernels> {
    static KERNELS: PerDevice<Option<Kernels>> = PerDevice::new();
    KERNELS.build_or_warn(
        index,
        SOURCE,
        ("fused AdamW kernels", "the optimizer runs op by op"),
        |module| {
            Ok(Kernels {
                sum_squares: module.function("sum_squares", 0)?,
                clip_factor: module.function("clip_factor", 0)?,
                adamw: module.function("adamw", 0)?,
            })
        },
    )
}

#[allow(clippy::type_complexity)]
fn register<F: FloatElement>(
    params: Vec<CudaFusionTensor>,
    grads: Vec<CudaFusionTensor>,
    m: CudaFusionTensor,
    v: CudaFusionTensor,
    hyper: Hyper,
    clip: f32,
) -> (
    Vec<CudaFusionTensor>,
    CudaFusionTensor,
    CudaFusionTensor,
    CudaFusionTensor,
) {
    cuda_stream::check_earlier_failure();
    let count = params.len();
    assert_eq!(count, grads.len());
    let client = m.client.clone();
    let inputs: Vec<&CudaFusionTensor> = params.iter().chain(&grads).chain([&m, &v]).collect();
    let streams = OperationStreams::with_inputs(inputs);
    let output = |t: &CudaFusionTensor| {
        TensorIr::uninit(
            client.create_empty_handle(),
            Shape::from(t.shape.to_vec()),
            DType::F32,
        )
    };
    let mut outputs: Vec<TensorIr> = params.iter().chain([&m, &v]).map(output).collect();
    outputs.push(TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from(vec![1]),
        DType::F32,
    ));
    let inputs: Vec<TensorIr> = params
        .into_iter()
        .chain(grads)
        .chain([m, v])
        .map(|t| t.into_ir())
        .collect();
    let desc = CustomOpIr::new("graft_fused_adamw", &inputs, &outputs);
    let mut out = client.register(
        streams,
        OperationIr::Custom(desc.clone()),
        FusedAdamW::<F> {
            desc,
            count,
            hyper,
            clip,
            _float: std::marker::PhantomData,
        },
    );
    let norm = out.pop().expect("norm");
    let v = out.pop().expect("v");
    let m = out.pop().expect("m");
    (out, m, v, norm)
}

#[derive(Debug)]
struct FusedAdamW<F> {
    desc: CustomOpIr,
    count: usize,
    hyper: Hyper,
    clip: f32,
    _float: std::marker::PhantomData<F>,
}

/// The kernels' table of tensors (`struct TensorList` in the source).
#[repr(C)]
#[derive(Clone, Copy)]
struct TensorList {
    param: [u64; MAX_TENSORS],
    grad: [u64; MAX_TENSORS],
    out: [u64; MAX_TENSORS],
    offset: [i64; MAX_TENSORS],
    len: [i64; MAX_TENSORS],
    count: i32,
    first: i32,
}

type Handles = HandleContainer<<FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle>;

impl<F: FloatElement> Operation<FusionCubeRuntime<CudaRuntime>> for FusedAdamW<F> {
    fn execute(&self, handles: &mut Handles) {
        type Cube<F> = CubeBackend<CudaRuntime, F, i32, u8>;
        let n = self.count;
        let contiguous = |t: CubeTensor<CudaRuntime>| {
            if t.meta.strides()[0] == 1 {
                t
            } else {
                burn_cubecl::kernel::into_contiguous(t)
            }
        };
        let inputs: Vec<CubeTensor<CudaRuntime>> = self
            .desc
            .inputs
            .iter()
            .map(|ir| contiguous(handles.get_float_tensor::<Cube<F>>(ir)))
            .collect();
        let lens: Vec<usize> = inputs[..n].iter().map(|t| t.meta.shape()[0]).collect();
        let total: usize = lens.iter().sum();
        let m = &inputs[2 * n];
        assert_eq!(m.meta.shape()[0], total, "moments cover the group");
        let outputs: Vec<CubeTensor<CudaRuntime>> = self
            .desc
            .outputs
            .iter()
            .map(|ir| empty(m, ir.shape.clone(), DType::F32))
            .collect();
        let chunks = lens
            .iter()
            .max()
            .copied()
            .unwrap_or(1)
            .div_ceil(CHUNK)
            .max(1);
        let partials = empty(m, Shape::from(vec![n * chunks]), DType::F32);
        let factor = empty(m, Shape::from(vec![1]), DType::F32);
        // Buffers in order: params, grads, m, v, params out, m out, v out, norm,
        // partials, factor.
        let buffers = inputs
            .iter()
            .chain(&outputs)
            .chain([&partials, &factor])
            .map(|t| t.handle.clone().binding())
            .collect();
        let (hyper, clip) = (self.hyper, self.clip);
        let kernels = kernels(m.device.index).expect("kernels built before use");
        launch(m, buffers, move |p, stream| {
            let (params, grads) = (&p[..n], &p[n..2 * n]);
            let (m, v) = (p[2 * n], p[2 * n + 1]);
            let params_out = &p[2 * n + 2..3 * n + 2];
            let (m_out, v_out, norm) = (p[3 * n + 2], p[3 * n + 3], p[3 * n + 4]);
            let (partials, factor) = (p[3 * n + 5], p[3 * n + 6]);
            let mut offset = 0i64;
            let lists: Vec<TensorList> = (0..n)
                .step_by(MAX_TENSORS)
                .map(|first| {
                    let mut list = TensorList {
                        param: [0; MAX_TENSORS],
                        grad: [0; MAX_TENSORS],
                        out: [0; MAX_TENSORS],
                        offset: [0; MAX_TENSORS],
                        len: [0; MAX_TENSORS],
                        count: (n - first).min(MAX_TENSORS) as i32,
                        first: first as i32,
                    };
                    for j in 0..list.count as usize {
                        let i = first + j;
                        list.param[j] = params[i];
                        list.grad[j] = grads[i];
                        list.out[j] = params_out[i];
                        list.offset[j] = offset;
                        list.len[j] = lens[i] as i64;
                        offset += lens[i] as i64;
                    }
                    list
                })
                .collect();
            let grid = |list: &TensorList| (chunks as u32, list.count as u32);
            // SAFETY: each launch's arguments follow its kernel's parameters in the
            // source; the buffers are held until the kernels end (cuda_kernels::launch).
            unsafe {
                for list in &lists {
                    let mut args = Args::default();
                    args.push(*list)
                        .push(hyper.scale)
                        .push(partials)
                        .push(chunks as i32);
                    args.launch(kernels.sum_squares, grid(list), THREADS, 0, stream);
                }
                let mut args = Args::default();
                args.push(partials)
                    .push((n * chunks) as i32)
                    .push(clip)
                    .push(norm)
                    .push(factor);
                args.launch(kernels.clip_factor, (1, 1), THREADS, 0, stream);
                for list in &lists {
                    let mut args = Args::default();
                    args.push(*list)
                        .push(hyper)
                        .push(factor)
                        .push(m)
                        .push(v)
                        .push(m_out)
                        .push(v_out);
                    args.launch(kernels.adamw, grid(list), THREADS, 0, stream);
                }
            }
        });
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Cube<F>>(&ir.id, tensor);
        }
    }
}

/// These need a CUDA GPU (run with `--features cuda` on the device machine).
#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{bf16, TensorData};

    /// The kernels against the same arithmetic on the host, over more tensors than one
    /// launch takes, lengths that do and do not fill a block, with and without
    /// clipping.
    #[test]
    fn fused_adamw_matches_the_update_on_the_host() {
        type B = Cuda<bf16>;
        assert!(<B as crate::compute::kernels::Kernels>::fused_adamw());
        let device = Default::default();
        let lens: Vec<usize> = (0..53).map(|i| 1 + (i * 977) % 9000).collect();
        let total: usize = lens.iter().sum();
        let value =
            |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0;
        let host = |salt: usize, len: usize| (0..len).map(|i| value(i, salt)).collect::<Vec<_>>();
        let tensor = |data: Vec<f32>| {
            let len = data.len();
            // f32 as the optimizer keeps them (the backend's default is bf16).
            Tensor::<B, 1>::from_data(TensorData::new(data, [len]), (&device, DType::F32))
        };
        let params: Vec<Vec<f32>> = lens.iter().enumerate().map(|(i, &l)| host(i, l)).collect();
        let grads: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| host(100 + i, l))
            .collect();
        let (m0, v0) = (
            host(1000, total),
            host(1001, total)
                .iter()
                .map(|x| x.abs())
                .collect::<Vec<_>>(),
        );
        let hyper = Hyper {
            scale: 0.5,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decay: 1.0 - 1e-3 * 0.01,
            correction1: 1.0 - 0.9f32.powi(3),
            correction2: 1.0 - 0.999f32.powi(3),
        };
        for clip in [0.0f32, 1.0] {
            let (out, m, v, norm) = step::<bf16>(
                params.iter().cloned().map(tensor).collect(),
                grads.iter().cloned().map(tensor).collect(),
                tensor(m0.clone()),
                tensor(v0.clone()),
                hyper,
                clip,
            );
            let read = |t: Tensor<B, 1>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
            let expected_norm = grads
                .iter()
                .flatten()
                .map(|g| ((g * hyper.scale) as f64).powi(2))
                .sum::<f64>()
                .sqrt() as f32;
            let norm = read(norm)[0];
            assert!(
                (norm - expected_norm).abs() <= 1e-5 * expected_norm,
                "{norm} {expected_norm}"
            );
            let factor = if clip > 0.0 {
                (clip / (norm + 1e-6)).min(1.0)
            } else {
                1.0
            };
            let (m, v) = (read(m), read(v));
            let mut offset = 0;
            for (i, out) in out.into_iter().enumerate() {
                let out = read(out);
                for (j, &p) in params[i].iter().enumerate() {
                    let g = grads[i][j] * factor * hyper.scale;
                    let k = offset + j;
                    let m1 = m0[k] * hyper.beta1 + g * (1.0 - hyper.beta1);
                    let v1 = v0[k] * hyper.beta2 + g * g * (1.0 - hyper.beta2);
                    let update =
                        (m1 / hyper.correction1) / ((v1 / hyper.correction2).sqrt() + hyper.eps);
                    let expected = p * hyper.decay - update * hyper.lr;
                    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
                    assert!(close(m[k], m1) && close(v[k], v1), "moments of {i}[{j}]");
                    assert!(close(out[j], expected), "{i}[{j}]: {} {expected}", out[j]);
                }
                offset += params[i].len();
            }
        }
    }
}
