//! Fused causal attention on CUDA for training in bf16: the forward and backward
//! passes of FlashAttention-2 as three kernels (`flash_attention.cu`) that keep each
//! block of scores in registers, with the products on tensor cores (`mma.sync`) and
//! the streamed tiles loaded two stages ahead (`cp.async`).
//!
//! The blocked attention in `super::attention` writes every block of scores to global
//! memory in f32 and passes over it several times in each direction (mask, max, exp,
//! sum, casts); at llama-1b's shapes those passes, not the products, were most of
//! attention's time. Here the scores never leave the chip, and grouped kv heads are
//! read in place rather than repeated.
//!
//! On Hopper (compute capability 9.0) the head sizes 64 and 128 run on the kernels of
//! `flash_attention_sm90.cu` instead: the same three passes and arithmetic with the
//! products on warpgroup MMA (`wgmma`), which reads its operands from shared memory
//! once per four warps where `mma.sync` loads them into every warp's registers. At
//! llama-1b's shapes and 16k tokens that took the forward pass from 5.1 to 3.6 ms and
//! the backward from 18.3 to 11.4 ms on an H200 (`graft bench attention`,
//! benches/RESULTS-gpu.md).
//!
//! The kernels are CUDA C++ compiled at run time by NVRTC (which burn-cuda already
//! loads), launched on graft's side stream (`super::cuda_stream`) from fusion custom
//! ops, like the cuBLAS products. [`available`] compiles them once per process and
//! says whether that worked; where it does not (no CUDA headers, a card older than
//! compute capability 8.0), attention stays on the blocked path.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use burn::backend::{Autodiff, Cuda};
use burn::tensor::{bf16, DType, Shape};
use burn::tensor::{Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::FusionRuntime;

use super::cublas::CudaFusionTensor;
use super::cuda_kernels::{self, empty, launch, Args, Function, PerDevice};
use super::cuda_stream;
use super::kept_attention;

const SOURCE: &str = include_str!("flash_attention.cu");
/// The Hopper kernels (wgmma), appended to SOURCE on compute capability 9.0.
const SM90_SOURCE: &str = include_str!("flash_attention_sm90.cu");

/// Other kernel sources for this process, set by `graft bench attention --source` and
/// `--sm90-source` before the first launch, so that variants of the kernels can be
/// timed against each other from one build. Training never sets them.
static SOURCES_FOR_BENCH: std::sync::OnceLock<BenchSources> = std::sync::OnceLock::new();

/// Replacements for SOURCE and SM90_SOURCE; `None` keeps the built-in one.
#[derive(Debug, Default)]
pub struct BenchSources {
    pub base: Option<String>,
    /// An empty text runs the mma.sync kernels on Hopper too.
    pub sm90: Option<String>,
}

/// Uses `sources` instead of the built-in kernels in this process (for `graft bench
/// attention`); `Err` once the kernels were already compiled or other sources set.
pub fn use_sources_for_bench(sources: BenchSources) -> Result<(), String> {
    if KERNELS.iter().any(|family| family.get(0).is_some()) {
        return Err("the flash kernels are already compiled in this process".into());
    }
    SOURCES_FOR_BENCH
        .set(sources)
        .map_err(|_| "other kernel sources are already set".to_string())
}

/// The source for a device of compute capability `capability`: the mma.sync kernels,
/// and on 9.0 the wgmma ones for the head sizes they serve, unless `mma_sync` (the
/// execution's record says so: `compute.gpu_attention`).
fn source_for(capability: (i32, i32), mma_sync: bool) -> String {
    let bench = SOURCES_FOR_BENCH.get();
    let base = bench.and_then(|b| b.base.as_deref()).unwrap_or(SOURCE);
    let sm90 = bench.and_then(|b| b.sm90.as_deref()).unwrap_or(SM90_SOURCE);
    if capability == (9, 0) && !sm90.trim().is_empty() && !mma_sync {
        format!("#define FLASH_WGMMA 1\n{base}\n{sm90}")
    } else {
        base.to_string()
    }
}

type Cube = CubeBackend<CudaRuntime, bf16, i32, u8>;
type Handles = HandleContainer<<FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle>;

/// Whether the kernels serve attention with this head size and dtype.
pub fn supports(head_dim: usize, dtype: DType) -> bool {
    HEAD_DIMS.contains(&head_dim) && dtype == DType::BF16
}

/// The head sizes the source instantiates (`ENTRY_POINTS`).
const HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Causal attention through the kernels where they serve these shapes (see
/// `super::kernels::Kernels::causal_attention` for the arguments); `Err` hands the
/// inputs back otherwise.
// The inputs go back by value so the caller falls back without a copy; a box would
// allocate on every call.
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub fn causal_attention<C: CheckpointStrategy>(
    q: Tensor<Autodiff<Inner, C>, 4>,
    k: Tensor<Autodiff<Inner, C>, 4>,
    v: Tensor<Autodiff<Inner, C>, 4>,
) -> Result<Tensor<Autodiff<Inner, C>, 4>, super::kernels::Qkv<Autodiff<Inner, C>>> {
    let [_, heads, _, head_dim] = q.dims();
    let fits = supports(head_dim, q.dtype())
        && [k.dtype(), v.dtype()] == [DType::BF16; 2]
        && k.dims()[3] == head_dim
        && heads % k.dims()[1] == 0;
    if !fits || !available(q.device().index) {
        return Err((q, k, v));
    }
    Ok(attention_autodiff::<C>(q, k, v))
}

type Inner = Cuda<bf16>;

/// The kernels as one autodiff node: the forward keeps q, k, v, the output and the
/// log-sum-exp; the backward runs the two gradient kernels.
fn attention_autodiff<C: CheckpointStrategy>(
    q: Tensor<Autodiff<Inner, C>, 4>,
    k: Tensor<Autodiff<Inner, C>, 4>,
    v: Tensor<Autodiff<Inner, C>, 4>,
) -> Tensor<Autodiff<Inner, C>, 4> {
    let q = q.into_primitive().tensor();
    let k = k.into_primitive().tensor();
    let v = v.into_primitive().tensor();
    let prepared = FlashAttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let output = match prepared {
        OpsKind::Tracked(prep) => {
            // A layer rerun by per-layer recomputation takes its first pass's output
            // (`kept_attention`): the same values, without the forward kernel.
            let kept = kept_attention::take(|(out, _): &(CudaFusionTensor, CudaFusionTensor)| {
                out.shape == q.primitive.shape && out.client.device() == q.primitive.client.device()
            });
            let (out, lse) = kept.unwrap_or_else(|| {
                forward(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                )
            });
            let state = FlashState {
                q: q.primitive,
                k: k.primitive,
                v: v.primitive,
                out: out.clone(),
                lse,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => {
            let (out, lse) = forward(q.primitive, k.primitive, v.primitive);
            if kept_attention::keeping() {
                kept_attention::offer((out.clone(), lse));
            }
            prep.finish(out)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct FlashAttentionBackward;

#[derive(Debug, Clone)]
struct FlashState {
    q: CudaFusionTensor,
    k: CudaFusionTensor,
    v: CudaFusionTensor,
    out: CudaFusionTensor,
    lse: CudaFusionTensor,
}

impl Backward<Inner, 3> for FlashAttentionBackward {
    type State = FlashState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<Inner>(&ops.node);
        let grad = if grad.dtype == DType::BF16 {
            grad
        } else {
            Tensor::<Inner, 4>::from_primitive(TensorPrimitive::Float(grad))
                .cast(DType::BF16)
                .into_primitive()
                .tensor()
        };
        let s = ops.state;
        let (dq, dk, dv) = backward(s.q, s.k, s.v, s.out, s.lse, grad);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<Inner>(node.id, grad);
            }
        }
    }
}

/// Whether the kernels are built for device `index` (compiled on the first call; a
/// failure is reported once and leaves attention on the blocked path).
pub fn available(index: usize) -> bool {
    if crate::compute::options::current().attention != crate::compute::Attention::Flash {
        return false;
    }
    match kernels(index) {
        Ok(_) => true,
        Err(message) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                eprintln!(
                    "warning: graft's flash-attention kernels could not be built ({message}); \
                     attention uses the slower blocked path"
                )
            });
            false
        }
    }
}

/// The compiled kernels of one device, by head size.
struct Kernels {
    by_head_dim: [(usize, Functions); HEAD_DIMS.len()],
}

/// One kernel and the launch shape its source states for it (`flash_geometry_D`).
#[derive(Clone, Copy)]
struct Launchable {
    function: Function,
    /// Query rows (forward, dQ) or keys (dK/dV) per block.
    rows: usize,
    threads: u32,
    shared: u32,
}

impl Launchable {
    /// Launches the kernel over `grid` blocks with its own threads and shared memory.
    ///
    /// # Safety
    /// `args` must follow the kernel's parameters, and the buffers they point to must
    /// live until the kernel ends (as `cuda_kernels::launch` keeps them).
    unsafe fn launch(&self, args: Args, grid: (u32, u32), stream: cudarc::driver::sys::CUstream) {
        args.launch(self.function, grid, self.threads, self.shared, stream)
    }
}

#[derive(Clone, Copy)]
struct Functions {
    forward: Launchable,
    backward_dq: Launchable,
    backward_dkv: Launchable,
}

/// Each device's kernels in two families: as the card runs them best (index 0), and
/// the mma.sync kernels alone (index 1), for an execution recorded with them, which
/// repeats with them because wgmma's sum in another order. One process may run both:
/// a lineage that resumes an old execution and then starts new ones.
static KERNELS: [PerDevice<Result<Kernels, String>>; 2] = [PerDevice::new(), PerDevice::new()];

/// Whether the installed execution runs the mma.sync family (`KERNELS[1]`).
fn mma_sync_only() -> bool {
    crate::compute::options::current().attention_mma_sync
}

fn kernels(index: usize) -> Result<&'static Kernels, String> {
    let mma_sync = mma_sync_only();
    KERNELS[usize::from(mma_sync)]
        .get_or_init(index, || compile(index, mma_sync))
        .as_ref()
        .map_err(Clone::clone)
}

fn functions(index: usize, head_dim: usize) -> Functions {
    let kernels = KERNELS[usize::from(mma_sync_only())]
        .get(index)
        .and_then(|k| k.as_ref().ok())
        .expect("kernels compiled before launch");
    kernels
        .by_head_dim
        .iter()
        .find(|(d, _)| *d == head_dim)
        .map(|(_, f)| *f)
        .expect("supported head size")
}

fn compile(index: usize, mma_sync: bool) -> Result<Kernels, String> {
    let source = source_for(cuda_kernels::capability(index)?, mma_sync);
    let module = cuda_kernels::compile(&source, index, &["cuda_bf16.h"])?;
    let (major, minor) = module.capability;
    if major < 8 {
        return Err(format!(
            "compute capability {major}.{minor}; bf16 tensor cores need 8.0"
        ));
    }
    let mut by_head_dim = Vec::new();
    for d in HEAD_DIMS {
        // Rows per block, threads and shared bytes of the forward, dQ and dK/dV
        // kernels, as the source lays them out.
        let geometry = module.ints(&format!("flash_geometry_{d}"), 9)?;
        let kernel = |name: &str, at: usize| -> Result<Launchable, String> {
            let [rows, threads, shared] = [0, 1, 2].map(|i| geometry[at + i]);
            if rows <= 0 || threads <= 0 || shared < 0 {
                return Err(format!(
                    "flash_geometry_{d}: {name}: {rows} rows, {threads} threads, {shared} bytes"
                ));
            }
            Ok(Launchable {
                function: module.function(&format!("{name}_{d}"), shared as u32)?,
                rows: rows as usize,
                threads: threads as u32,
                shared: shared as u32,
            })
        };
        by_head_dim.push((
            d,
            Functions {
                forward: kernel("flash_forward", 0)?,
                backward_dq: kernel("flash_backward_dq", 3)?,
                backward_dkv: kernel("flash_backward_dkv", 6)?,
            },
        ));
    }
    Ok(Kernels {
        by_head_dim: by_head_dim
            .try_into()
            .ok()
            .expect("one entry per head size"),
    })
}

/// Batch, head and row strides of a `[batch, heads, rows, d]` operand, in elements
/// (`struct Strides` in the source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Strides {
    batch: i64,
    head: i64,
    row: i64,
}

/// The operand with unit stride along its last dim and the others multiples of 8
/// elements (16-byte rows for the kernels' vector loads), copying when it has not.
fn operand(tensor: CubeTensor<CudaRuntime>) -> (CubeTensor<CudaRuntime>, Strides) {
    let fits = |t: &CubeTensor<CudaRuntime>| {
        let strides = t.meta.strides();
        let shape = t.meta.shape();
        strides[3] == 1 && (0..3).all(|i| shape[i] == 1 || strides[i].is_multiple_of(8))
    };
    let tensor = if fits(&tensor) {
        tensor
    } else {
        burn_cubecl::kernel::into_contiguous(tensor)
    };
    let s = tensor.meta.strides();
    let strides = Strides {
        batch: s[0] as i64,
        head: s[1] as i64,
        row: s[2] as i64,
    };
    (tensor, strides)
}

/// The shapes one launch needs.
#[derive(Debug, Clone, Copy)]
struct Problem {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    keys: usize,
    head_dim: usize,
}

impl Problem {
    fn of(q: &[usize], k: &[usize]) -> Problem {
        Problem {
            batch: q[0],
            heads: q[1],
            kv_heads: k[1],
            seq: q[2],
            keys: k[2],
            head_dim: q[3],
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Output and per-row log2-sum-exp2 of causal attention over q `[b, h, s, d]` and k, v
/// `[b, kv_h, t, d]` (bf16, `h` a multiple of `kv_h`): `[b, h, s, d]` bf16 and
/// `[b, h, s]` f32, as a fusion custom op.
pub fn forward(
    q: CudaFusionTensor,
    k: CudaFusionTensor,
    v: CudaFusionTensor,
) -> (CudaFusionTensor, CudaFusionTensor) {
    cuda_stream::check_earlier_failure();
    let client = q.client.clone();
    let dims = q.shape.to_vec();
    let streams = OperationStreams::with_inputs([&q, &k, &v]);
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from(dims.clone()),
        DType::BF16,
    );
    let lse = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from(dims[..3].to_vec()),
        DType::F32,
    );
    let desc = CustomOpIr::new(
        "graft_flash_attention_forward",
        &[q.into_ir(), k.into_ir(), v.into_ir()],
        &[out, lse],
    );
    let [out, lse] = client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            FlashForward { desc },
        )
        .outputs();
    (out, lse)
}

/// Gradients of q, k and v from the output's gradient `dout`, with the forward's
/// output and log-sum-exp.
pub fn backward(
    q: CudaFusionTensor,
    k: CudaFusionTensor,
    v: CudaFusionTensor,
    out: CudaFusionTensor,
    lse: CudaFusionTensor,
    dout: CudaFusionTensor,
) -> (CudaFusionTensor, CudaFusionTensor, CudaFusionTensor) {
    cuda_stream::check_earlier_failure();
    let client = q.client.clone();
    let shape = |t: &CudaFusionTensor| Shape::from(t.shape.to_vec());
    let (q_shape, k_shape) = (shape(&q), shape(&k));
    let streams = OperationStreams::with_inputs([&q, &k, &v, &out, &lse, &dout]);
    let grad = |shape: Shape| TensorIr::uninit(client.create_empty_handle(), shape, DType::BF16);
    let (dq, dk, dv) = (grad(q_shape), grad(k_shape.clone()), grad(k_shape));
    let desc = CustomOpIr::new(
        "graft_flash_attention_backward",
        &[
            q.into_ir(),
            k.into_ir(),
            v.into_ir(),
            out.into_ir(),
            lse.into_ir(),
            dout.into_ir(),
        ],
        &[dq, dk, dv],
    );
    let [dq, dk, dv] = client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            FlashBackward { desc },
        )
        .outputs();
    (dq, dk, dv)
}

#[derive(Debug)]
struct FlashForward {
    desc: CustomOpIr,
}

impl Operation<FusionCubeRuntime<CudaRuntime>> for FlashForward {
    fn execute(&self, handles: &mut Handles) {
        let ([q, k, v], [out_ir, lse_ir]) = self.desc.as_fixed();
        let (q, qs) = operand(handles.get_float_tensor::<Cube>(q));
        let (k, ks) = operand(handles.get_float_tensor::<Cube>(k));
        let (v, vs) = operand(handles.get_float_tensor::<Cube>(v));
        let problem = Problem::of(q.meta.shape(), k.meta.shape());
        let out = empty(&q, out_ir.shape.clone(), DType::BF16);
        let lse = empty(&q, lse_ir.shape.clone(), DType::F32);
        let buffers = [&q, &k, &v, &out, &lse]
            .map(|t| t.handle.clone().binding())
            .to_vec();
        let index = q.device.index;
        launch(&q, buffers, move |pointers, stream| {
            let [q, k, v, out, lse] = aligned(pointers);
            let f = functions(index, problem.head_dim).forward;
            let grid = (
                problem.seq.div_ceil(f.rows) as u32,
                (problem.batch * problem.heads) as u32,
            );
            let mut args = qkv_args([(q, qs), (k, ks), (v, vs)]);
            args.push(out).push(lse);
            shape_args(&mut args, &problem);
            // SAFETY: the arguments follow flash_forward's parameters; the buffers are
            // held until the kernel ends (cuda_kernels::launch).
            unsafe { f.launch(args, grid, stream) };
        });
        handles.register_float_tensor::<Cube>(&out_ir.id, out);
        handles.register_float_tensor::<Cube>(&lse_ir.id, lse);
    }
}

#[derive(Debug)]
struct FlashBackward {
    desc: CustomOpIr,
}

impl Operation<FusionCubeRuntime<CudaRuntime>> for FlashBackward {
    fn execute(&self, handles: &mut Handles) {
        let ([q, k, v, out, lse, dout], [dq_ir, dk_ir, dv_ir]) = self.desc.as_fixed();
        let (q, qs) = operand(handles.get_float_tensor::<Cube>(q));
        let (k, ks) = operand(handles.get_float_tensor::<Cube>(k));
        let (v, vs) = operand(handles.get_float_tensor::<Cube>(v));
        let (dout, dos) = operand(handles.get_float_tensor::<Cube>(dout));
        // The forward wrote both contiguous.
        let out = handles.get_float_tensor::<Cube>(out);
        let lse = handles.get_float_tensor::<Cube>(lse);
        let problem = Problem::of(q.meta.shape(), k.meta.shape());
        let dq = empty(&q, dq_ir.shape.clone(), DType::BF16);
        let dk = empty(&q, dk_ir.shape.clone(), DType::BF16);
        let dv = empty(&q, dv_ir.shape.clone(), DType::BF16);
        let delta = empty(&q, Shape::from(lse.meta.shape().to_vec()), DType::F32);
        let buffers = [&q, &k, &v, &out, &lse, &dout, &delta, &dq, &dk, &dv]
            .map(|t| t.handle.clone().binding())
            .to_vec();
        let index = q.device.index;
        launch(&q, buffers, move |pointers, stream| {
            let [q, k, v, out, lse, dout, delta, dq, dk, dv] = aligned(pointers);
            let functions = functions(index, problem.head_dim);
            let heads = (problem.batch * problem.heads) as u32;
            let mut args = qkv_args([(q, qs), (k, ks), (v, vs)]);
            args.push(out)
                .push(dout)
                .push(dos)
                .push(lse)
                .push(delta)
                .push(dq);
            shape_args(&mut args, &problem);
            let dq_kernel = functions.backward_dq;
            let grid = (problem.seq.div_ceil(dq_kernel.rows) as u32, heads);
            // SAFETY: as for the forward, with flash_backward_dq's parameters.
            unsafe { dq_kernel.launch(args, grid, stream) };
            // Queued after dQ on the same stream, so it reads the finished deltas.
            let mut args = qkv_args([(q, qs), (k, ks), (v, vs)]);
            args.push(dout)
                .push(dos)
                .push(lse)
                .push(delta)
                .push(dk)
                .push(dv);
            shape_args(&mut args, &problem);
            let dkv_kernel = functions.backward_dkv;
            let grid = (
                problem.keys.div_ceil(dkv_kernel.rows) as u32,
                (problem.batch * problem.kv_heads) as u32,
            );
            // SAFETY: as for the forward, with flash_backward_dkv's parameters.
            unsafe { dkv_kernel.launch(args, grid, stream) };
        });
        handles.register_float_tensor::<Cube>(&dq_ir.id, dq);
        handles.register_float_tensor::<Cube>(&dk_ir.id, dk);
        handles.register_float_tensor::<Cube>(&dv_ir.id, dv);
    }
}

/// The device addresses, checked for the 16-byte alignment of the kernels' vector
/// loads.
fn aligned<const N: usize>(pointers: Vec<u64>) -> [u64; N] {
    assert!(
        pointers.iter().all(|p| p % 16 == 0),
        "flash attention: a buffer is not 16-byte aligned"
    );
    pointers.try_into().expect("one address per buffer")
}

/// Arguments that open every kernel's list: q, k and v, each address then strides.
fn qkv_args(operands: [(u64, Strides); 3]) -> Args {
    let mut args = Args::default();
    for (address, strides) in operands {
        args.push(address).push(strides);
    }
    args
}

/// `heads, kv_heads, seq, keys, scale, scale_log2`, the last arguments of every
/// kernel.
fn shape_args(args: &mut Args, p: &Problem) {
    let int = |n: usize| i32::try_from(n).expect("attention dims fit in int");
    let scale = p.scale();
    args.push(int(p.heads))
        .push(int(p.kv_heads))
        .push(int(p.seq))
        .push(int(p.keys))
        .push(scale)
        .push(scale * std::f32::consts::LOG2_E);
}

/// The shapes of one `graft bench attention` measurement.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BenchShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

/// Milliseconds of one forward and one backward pass of the kernels on device 0,
/// averaged over `steps` passes of each after `warmup` untimed ones, on random bf16
/// inputs.
pub fn time_passes(shape: BenchShape, steps: usize, warmup: usize) -> Result<(f64, f64), String> {
    use burn::tensor::backend::Backend;
    let device = burn::backend::cuda::CudaDevice::default();
    if !supports(shape.head_dim, DType::BF16) {
        return Err(format!(
            "the flash kernels serve head sizes {HEAD_DIMS:?}, not {}",
            shape.head_dim
        ));
    }
    if [shape.batch, shape.heads, shape.kv_heads, shape.seq].contains(&0) {
        return Err(format!("every size must be at least 1: {shape:?}"));
    }
    if !shape.heads.is_multiple_of(shape.kv_heads) {
        return Err(format!(
            "{} query heads do not share {} kv heads evenly",
            shape.heads, shape.kv_heads
        ));
    }
    if !available(device.index) {
        return Err(
            "the flash kernels did not build on this machine (see the message above)".into(),
        );
    }
    let random = |heads: usize| {
        let dims = [shape.batch, heads, shape.seq, shape.head_dim];
        Tensor::<Inner, 4>::random(dims, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
    };
    let (q, k, v, dout) = (
        random(shape.heads),
        random(shape.kv_heads),
        random(shape.kv_heads),
        random(shape.heads),
    );
    let raw = |t: &Tensor<Inner, 4>| t.clone().into_primitive().tensor();
    let wrap = |t: CudaFusionTensor| Tensor::<Inner, 4>::from_primitive(TensorPrimitive::Float(t));
    // A burn kernel that reads an output, then a read on the host: the side stream's
    // work is ordered before it, so this waits for the kernels themselves.
    let finish = |t: CudaFusionTensor| {
        let _ = wrap(t).slice([0..1, 0..1, 0..1, 0..1]).into_data();
        Inner::sync(&device).ok();
    };
    let (out, lse) = forward(raw(&q), raw(&k), raw(&v));
    for _ in 0..warmup {
        let (o, l) = forward(raw(&q), raw(&k), raw(&v));
        let (dq, _, _) = backward(raw(&q), raw(&k), raw(&v), o, l, raw(&dout));
        finish(dq);
    }
    let started = std::time::Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(forward(raw(&q), raw(&k), raw(&v)).0);
    }
    finish(last.expect("at least one step"));
    let forward_ms = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let started = std::time::Instant::now();
    let mut last = None;
    for _ in 0..steps {
        let grads = backward(
            raw(&q),
            raw(&k),
            raw(&v),
            out.clone(),
            lse.clone(),
            raw(&dout),
        );
        last = Some(grads.0);
    }
    finish(last.expect("at least one step"));
    let backward_ms = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
    Ok((forward_ms, backward_ms))
}

/// Max |a - b| over max |b|.
fn relative_error(a: burn::tensor::TensorData, b: burn::tensor::TensorData) -> f32 {
    let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().collect(), b.iter().collect());
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    worst / scale
}

/// The kernels' output and q, k, v gradients against burn's op-by-op attention in f32
/// on the same bf16 inputs (normal draws, a weighted sum as the loss), with `heads`
/// query heads over `kv_heads`: each one's largest error over its largest value. The
/// reference holds every score, so `seq` must stay small.
pub fn errors_against_f32(
    batch: usize,
    (heads, kv_heads): (usize, usize),
    seq: usize,
    head_dim: usize,
) -> Result<[(&'static str, f32); 4], String> {
    type B = Autodiff<Inner>;
    type Exact = Autodiff<Cuda<f32>>;
    let device = Default::default();
    // Drawn on the host and rounded to bf16, so both sides see the same values.
    let mut seed = 0u64;
    let mut make = |heads: usize| {
        seed += 1;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let shape = [batch, heads, seq, head_dim];
        // Box-Muller: standard normal values.
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                let (u, v): (f32, f32) = (rand::Rng::random(&mut rng), rand::Rng::random(&mut rng));
                (-2.0 * (1.0 - u).ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect();
        let data = burn::tensor::TensorData::new(values, shape);
        data.convert::<bf16>()
    };
    let (q0, k0, v0, weight) = (make(heads), make(kv_heads), make(kv_heads), make(heads));
    let low = |t: &burn::tensor::TensorData| Tensor::<B, 4>::from_data(t.clone(), &device);
    let (q, k, v) = (
        low(&q0).require_grad(),
        low(&k0).require_grad(),
        low(&v0).require_grad(),
    );
    let Ok(out) = causal_attention(q.clone(), k.clone(), v.clone()) else {
        return Err("the flash kernels do not serve these shapes on this machine".into());
    };
    let grads = (out.clone() * low(&weight)).sum().backward();
    let high = |t: Tensor<Inner, 4>| t.into_data().convert::<f32>();
    let flash = [
        high(out.inner()),
        high(q.grad(&grads).unwrap()),
        high(k.grad(&grads).unwrap()),
        high(v.grad(&grads).unwrap()),
    ];

    let exact = |t: &burn::tensor::TensorData| {
        Tensor::<Exact, 4>::from_data(t.clone().convert::<f32>(), &device)
    };
    let (q, k, v) = (
        exact(&q0).require_grad(),
        exact(&k0).require_grad(),
        exact(&v0).require_grad(),
    );
    let groups = heads / kv_heads;
    let k_all = super::attention::repeat_kv(k.clone(), groups);
    let v_all = super::attention::repeat_kv(v.clone(), groups);
    let scores = q.clone().matmul(k_all.swap_dims(2, 3)) / (head_dim as f64).sqrt();
    let future: Vec<bool> = (0..batch * heads * seq * seq)
        .map(|i| (i % seq) > (i / seq) % seq)
        .collect();
    let future = Tensor::<Exact, 4, burn::tensor::Bool>::from_data(
        burn::tensor::TensorData::new(future, [batch, heads, seq, seq]),
        &device,
    );
    let probs = burn::tensor::activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3);
    let out = probs.matmul(v_all);
    let grads = (out.clone() * exact(&weight)).sum().backward();
    let reference = [
        out.inner().into_data(),
        q.grad(&grads).unwrap().into_data(),
        k.grad(&grads).unwrap().into_data(),
        v.grad(&grads).unwrap().into_data(),
    ];
    Ok(["out", "dq", "dk", "dv"]
        .into_iter()
        .zip(flash.into_iter().zip(reference))
        .map(|(name, (a, b))| (name, relative_error(a, b)))
        .collect::<Vec<_>>()
        .try_into()
        .expect("four tensors"))
}

/// These need a CUDA GPU (run with `--features cuda` on the device machine).
#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type B = Autodiff<Inner>;

    /// The tests below change the process's installed kernel options: one at a time.
    static OPTIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Runs `work` with the mma.sync family installed (as an execution recorded with
    /// it runs), or the card's best, then puts the defaults back.
    fn with_family<R>(mma_sync: bool, work: impl FnOnce() -> R) -> R {
        let options = crate::compute::options::KernelOptions {
            attention_mma_sync: mma_sync,
            ..Default::default()
        };
        crate::compute::options::install(options);
        let result = work();
        crate::compute::options::install(Default::default());
        result
    }

    /// Normal q (8 heads), k and v (2 heads) of 300 tokens of head size 64, and a weight
    /// for each output.
    fn random_heads(
        batch: usize,
    ) -> (
        Tensor<Inner, 4>,
        Tensor<Inner, 4>,
        Tensor<Inner, 4>,
        Tensor<Inner, 4>,
    ) {
        let device = Default::default();
        let make = |heads: usize| {
            Tensor::<Inner, 4>::random(
                [batch, heads, 300, 64],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        };
        (make(8), make(2), make(2), make(8))
    }

    /// The gradients at q, k and v of the weighted sum of the kernels' attention.
    fn gradients(
        q: &Tensor<Inner, 4>,
        k: &Tensor<Inner, 4>,
        v: &Tensor<Inner, 4>,
        weight: &Tensor<Inner, 4>,
    ) -> [burn::tensor::TensorData; 3] {
        let leaf = |t: &Tensor<Inner, 4>| Tensor::<B, 4>::from_inner(t.clone()).require_grad();
        let (q, k, v) = (leaf(q), leaf(k), leaf(v));
        let out = causal_attention(q.clone(), k.clone(), v.clone())
            .ok()
            .unwrap();
        let grads = (out * Tensor::from_inner(weight.clone())).sum().backward();
        [q.grad(&grads), k.grad(&grads), v.grad(&grads)].map(|g| g.unwrap().into_data())
    }

    /// The kernels' output and gradients against burn's op-by-op attention in f32.
    fn check(batch: usize, heads: (usize, usize), seq: usize, head_dim: usize) {
        for (name, error) in errors_against_f32(batch, heads, seq, head_dim).unwrap() {
            println!("{batch}x{heads:?}x{seq}x{head_dim} {name}: {error:.2e}");
            // bf16 keeps 8 bits: a few roundings of the inputs, probabilities and
            // outputs stay well inside 2%.
            assert!(error < 2e-2, "{name}: relative error {error}");
        }
    }

    #[test]
    fn flash_attention_matches_f32_attention_and_its_gradients() {
        let _turn = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        // Both families (on a card without wgmma, the same kernels twice). Grouped
        // heads (llama's 4 query heads per kv head), a short last tile.
        for mma_sync in [false, true] {
            with_family(mma_sync, || {
                check(2, (8, 2), 200, 64);
                check(1, (3, 3), 64, 64);
                check(1, (4, 2), 130, 128);
                check(2, (8, 4), 100, 32);
            });
        }
    }

    #[test]
    fn flash_attention_gradients_are_the_same_bits_on_every_run() {
        let _turn = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        let (q0, k0, v0, weight) = random_heads(2);
        let run = || gradients(&q0, &k0, &v0, &weight);
        let best = with_family(false, || [run(), run()]);
        assert_eq!(best[0], best[1]);
        // The mma.sync family, which an execution recorded with it runs, in the same
        // process: its own bits every time, and on Hopper not wgmma's.
        let mma_sync = with_family(true, || [run(), run()]);
        assert_eq!(mma_sync[0], mma_sync[1]);
        let hopper = cuda_kernels::device_capability(0) == Some((9, 0));
        assert_eq!(
            best[0] != mma_sync[0],
            hopper,
            "families differ exactly on Hopper"
        );
        // And the first family again, as a lineage's next execution would run it.
        assert_eq!(with_family(false, run), best[0]);
    }

    #[test]
    fn a_rerun_that_takes_the_kept_output_has_the_same_gradients() {
        let _turn = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        let (q0, k0, v0, weight) = random_heads(1);
        let untracked = |t: &Tensor<Inner, 4>| Tensor::<B, 4>::from_inner(t.clone());
        let first_pass = || {
            causal_attention(untracked(&q0), untracked(&k0), untracked(&v0))
                .ok()
                .unwrap()
        };
        let first = kept_attention::assert_rerun_takes_the_kept_output(
            || gradients(&q0, &k0, &v0, &weight),
            first_pass,
        );
        // The first pass's output is the kernels' own.
        assert_eq!(first.into_data(), first_pass().into_data());
    }
}
