//! Matrix products on CUDA through cuBLAS, on the buffers burn-cuda already holds.
//!
//! burn 0.21's own CUDA matmul (cubek) ran graft's training shapes at about 25 TFLOP/s
//! on an H100, where cuBLAS reaches several hundred; it also rounds f32 operands to TF32,
//! which keeps f32 parity out of reach. This module hands cubecl's device pointers to
//! `cublasGemmStridedBatchedEx` instead: no copies, transposed views read in place, f32
//! accumulation for bf16 and f16, and full f32 arithmetic for f32 (cuBLAS's default math
//! mode does not use TF32).
//!
//! The product runs on graft's side stream (`super::cuda_stream`), ordered against
//! cubecl's kernels on the device, and is handed to cubecl's device thread like a
//! kernel launch, so the training thread never waits for it.

use std::cell::RefCell;
use std::ffi::c_void;

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, FloatElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use cubecl_common::stream_id::StreamId;
use cubecl_runtime::server::{Binding, ComputeServer};
use cudarc::cublas::sys as blas;

use super::cuda_stream::{self, CudaServer};
use super::gemm::Operand;

/// The fusion-side tensor primitive of `burn::backend::Cuda`.
pub type CudaFusionTensor = FusionTensor<FusionCubeRuntime<CudaRuntime>>;
type Cube<F> = CubeBackend<CudaRuntime, F, i32, u8>;

/// Whether libcublas could be loaded (checked once).
pub fn available() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: only probes for the shared library; nothing is called through it.
    *PRESENT.get_or_init(|| unsafe { blas::is_culib_present() })
}

/// Whether cuBLAS computes in this dtype.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// `alpha · lhs @ rhs` in `out_dtype` as a fusion custom op, so it takes its place in
/// the fusion stream like any other op. Shapes `[..., m, k]` and `[..., k, n]` with
/// equal batch dims; `out_dtype` is the inputs' dtype or f32 (cuBLAS accumulates in
/// f32 either way, so an f32 output skips a cast pass).
pub fn fusion_matmul<F: FloatElement>(
    lhs: CudaFusionTensor,
    rhs: CudaFusionTensor,
    out_dtype: DType,
    alpha: f32,
) -> CudaFusionTensor {
    // Registering runs on the training thread; the op itself runs later on fusion's.
    cuda_stream::check_earlier_failure();
    let client = lhs.client.clone();
    let rank = lhs.shape.num_dims();
    let mut dims = lhs.shape.to_vec();
    dims[rank - 1] = rhs.shape[rank - 1];
    let streams = OperationStreams::with_inputs([&lhs, &rhs]);
    let out = TensorIr::uninit(client.create_empty_handle(), Shape::from(dims), out_dtype);
    let desc = CustomOpIr::new(
        "graft_cublas_matmul",
        &[lhs.into_ir(), rhs.into_ir()],
        &[out],
    );
    client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            CublasMatmul::<F> {
                desc,
                alpha,
                _float: std::marker::PhantomData,
            },
        )
        .output()
}

/// `base + alpha · lhs @ rhs` in `base`'s dtype as a fusion custom op: cuBLAS adds the
/// product onto the sum in the same call (beta = 1), rounding once, and writes into
/// `base`'s buffer where nothing else holds it (a copy of it otherwise). Shapes as
/// [`fusion_matmul`], `base` shaped as the product.
pub fn fusion_matmul_add<F: FloatElement>(
    base: CudaFusionTensor,
    lhs: CudaFusionTensor,
    rhs: CudaFusionTensor,
    alpha: f32,
) -> CudaFusionTensor {
    cuda_stream::check_earlier_failure();
    let client = lhs.client.clone();
    let streams = OperationStreams::with_inputs([&lhs, &rhs, &base]);
    let out = TensorIr::uninit(client.create_empty_handle(), base.shape.clone(), base.dtype);
    let desc = CustomOpIr::new(
        "graft_cublas_matmul_add",
        &[lhs.into_ir(), rhs.into_ir(), base.into_ir()],
        &[out],
    );
    client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            CublasMatmulAdd::<F> {
                desc,
                alpha,
                _float: std::marker::PhantomData,
            },
        )
        .output()
}

#[derive(Debug)]
struct CublasMatmulAdd<F> {
    desc: CustomOpIr,
    alpha: f32,
    _float: std::marker::PhantomData<F>,
}

impl<F: FloatElement> Operation<FusionCubeRuntime<CudaRuntime>> for CublasMatmulAdd<F> {
    fn execute(
        &self,
        handles: &mut HandleContainer<
            <FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle,
        >,
    ) {
        let ([lhs, rhs, base], [out]) = self.desc.as_fixed();
        let lhs = handles.get_float_tensor::<Cube<F>>(lhs);
        let rhs = handles.get_float_tensor::<Cube<F>>(rhs);
        let base = handles.get_float_tensor::<Cube<F>>(base);
        // The sum is written where the base lies when this op holds its last reference
        // (the projection's base product, read nowhere else), else into a copy.
        let base = if base.is_contiguous() {
            base
        } else {
            burn_cubecl::kernel::into_contiguous(base)
        };
        let base = if base.can_mut() { base } else { base.copy() };
        let sum = product(lhs, rhs, Target::Add(Box::new(base)), self.alpha);
        handles.register_float_tensor::<Cube<F>>(&out.id, sum);
    }
}

#[derive(Debug)]
struct CublasMatmul<F> {
    desc: CustomOpIr,
    alpha: f32,
    _float: std::marker::PhantomData<F>,
}

impl<F: FloatElement> Operation<FusionCubeRuntime<CudaRuntime>> for CublasMatmul<F> {
    fn execute(
        &self,
        handles: &mut HandleContainer<
            <FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle,
        >,
    ) {
        let ([lhs, rhs], [out]) = self.desc.as_fixed();
        let lhs = handles.get_float_tensor::<Cube<F>>(lhs);
        let rhs = handles.get_float_tensor::<Cube<F>>(rhs);
        let product = matmul(lhs, rhs, out.dtype, self.alpha);
        handles.register_float_tensor::<Cube<F>>(&out.id, product);
    }
}

/// Reads the layout of `[..., rows, cols]`, copying to contiguous only when the matrix
/// is neither row-major nor a transposed view, or its batch dims do not collapse into
/// one stride.
fn operand(tensor: CubeTensor<CudaRuntime>) -> (CubeTensor<CudaRuntime>, Operand) {
    if let Some(layout) = Operand::of(tensor.meta.shape(), tensor.meta.strides()) {
        return (tensor, layout);
    }
    let tensor = burn_cubecl::kernel::into_contiguous(tensor);
    let layout = Operand::of(tensor.meta.shape(), tensor.meta.strides())
        .expect("a contiguous tensor is row-major");
    (tensor, layout)
}

/// `alpha · lhs @ rhs` on cubecl tensors: `[..., m, k] @ [..., k, n]` with equal batch
/// dims and one float dtype (checked by the caller, [`super::gemm`]), written in
/// `out_dtype`.
pub fn matmul(
    lhs: CubeTensor<CudaRuntime>,
    rhs: CubeTensor<CudaRuntime>,
    out_dtype: DType,
    alpha: f32,
) -> CubeTensor<CudaRuntime> {
    product(lhs, rhs, Target::New(out_dtype), alpha)
}

/// Where a product goes: a new buffer of this dtype, or added onto a contiguous
/// tensor of the product's shape and the operands' dtype, in place.
enum Target {
    New(DType),
    Add(Box<CubeTensor<CudaRuntime>>),
}

fn product(
    lhs: CubeTensor<CudaRuntime>,
    rhs: CubeTensor<CudaRuntime>,
    target: Target,
    alpha: f32,
) -> CubeTensor<CudaRuntime> {
    let rank = lhs.meta.shape().len();
    let m = lhs.meta.shape()[rank - 2];
    let k = lhs.meta.shape()[rank - 1];
    let n = rhs.meta.shape()[rank - 1];
    let batch: usize = lhs.meta.shape()[..rank - 2].iter().product();
    let dtype = lhs.dtype;
    let mut dims = lhs.meta.shape().to_vec();
    dims[rank - 1] = n;
    let client = lhs.client.clone();
    let device = lhs.device.clone();
    let (lhs, a) = operand(lhs);
    let (rhs, b) = operand(rhs);
    let (out, beta) = match target {
        Target::New(out_dtype) => (
            burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
                client.clone(),
                device.clone(),
                Shape::from(dims),
                out_dtype,
            ),
            0.0,
        ),
        Target::Add(base) => {
            let base = *base;
            assert!(
                base.meta.shape().to_vec() == dims && base.is_contiguous(),
                "the sum is contiguous and shaped as the product"
            );
            (base, 1.0)
        }
    };
    let out_dtype = out.dtype;

    let product = Product {
        m,
        n,
        k,
        batch,
        dtype,
        out_dtype,
        alpha,
        beta,
        a,
        b,
        lhs: lhs.handle.clone().binding(),
        rhs: rhs.handle.clone().binding(),
        out: out.handle.clone().binding(),
    };
    // cubecl launches kernels from its device thread, in the order they were
    // submitted; the product is submitted the same way, so it sits in that order
    // without the caller waiting for the device thread to catch up.
    let index = device.index;
    cuda_stream::submit(&device, move |server, stream_id| {
        product.run(server, stream_id, index)
    });
    out
}

/// One product's shapes, layouts and buffers, run on cubecl's device thread.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    dtype: DType,
    out_dtype: DType,
    alpha: f32,
    /// 1 where the product is added onto what `out` holds.
    beta: f32,
    a: Operand,
    b: Operand,
    lhs: Binding,
    rhs: Binding,
    out: Binding,
}

impl Product {
    fn run(self, server: &mut CudaServer, stream_id: StreamId, device_index: usize) {
        let resource = |server: &mut CudaServer, binding| {
            server
                .get_resource(binding, stream_id)
                .expect("cubecl buffer")
        };
        let lhs = resource(server, self.lhs);
        let rhs = resource(server, self.rhs);
        let out = resource(server, self.out);
        let int = |value: i64| i32::try_from(value).expect("matmul dim fits cuBLAS's int");
        let op = |transposed: bool| {
            if transposed {
                blas::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (m, n, k) = (self.m as i64, self.n as i64, self.k as i64);
        let (a, b, dtype) = (self.a, self.b, cuda_type(self.dtype));
        let out_dtype = cuda_type(self.out_dtype);
        let (alpha, beta) = (self.alpha, self.beta);
        cuda_stream::run_ordered(server, stream_id, device_index, |side| {
            BLAS.with(|cell| {
                let mut cell = cell.borrow_mut();
                let handle = *cell.get_or_insert_with(|| create_handle(side));
                // SAFETY: the pointers are live cubecl allocations held by the resource
                // guards, and the side stream's ordering keeps cubecl from reusing them
                // before the product ends; dims and strides come from the tensors'
                // metadata; alpha and beta are read when the call is made.
                unsafe {
                    // Row-major C = A B is column-major Cᵀ = Bᵀ Aᵀ: B goes first, and a
                    // row-major buffer read column-major is already the transpose.
                    blas::cublasGemmStridedBatchedEx(
                        handle,
                        op(b.transposed),
                        op(a.transposed),
                        int(n),
                        int(m),
                        int(k),
                        &alpha as *const f32 as *const c_void,
                        rhs.resource().ptr as *const c_void,
                        dtype,
                        int(b.leading),
                        b.batch_stride,
                        lhs.resource().ptr as *const c_void,
                        dtype,
                        int(a.leading),
                        a.batch_stride,
                        &beta as *const f32 as *const c_void,
                        out.resource().ptr as *mut c_void,
                        out_dtype,
                        int(n),
                        m * n,
                        int(self.batch as i64),
                        blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                    .result()
                    .expect("cublasGemmStridedBatchedEx");
                }
            })
        });
    }
}

thread_local! {
    /// The cuBLAS handle of cubecl's device thread, bound to its side stream.
    static BLAS: RefCell<Option<blas::cublasHandle_t>> = const { RefCell::new(None) };
}

fn create_handle(side: &cuda_stream::SideStream) -> blas::cublasHandle_t {
    // SAFETY: the side stream's context is current on this thread (run_ordered).
    unsafe {
        let handle = cudarc::cublas::result::create_handle().expect("cuBLAS handle");
        cudarc::cublas::result::set_stream(handle, side.stream as _).expect("cuBLAS stream");
        handle
    }
}

fn cuda_type(dtype: DType) -> blas::cudaDataType {
    match dtype {
        DType::F32 => blas::cudaDataType::CUDA_R_32F,
        DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
        DType::F16 => blas::cudaDataType::CUDA_R_16F,
        other => panic!("cuBLAS matmul called with {other:?}"),
    }
}
