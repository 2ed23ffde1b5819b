//! A fusion custom op over graft's own CUDA kernels: the inputs made contiguous, fresh
//! contiguous outputs of the shapes and dtypes asked for, and a launch over them. The
//! token loss, RMSNorm and SwiGLU nodes (`cuda_loss`, `cuda_norm`, `cuda_swiglu`)
//! register their passes as such ops, so that fusion orders them among burn's own.
//! Inputs may be float or int tensors (the loss's targets): cubecl keeps both as one
//! tensor type, read from the handles the same way.

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, FloatElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::FusionRuntime;

use super::cublas::CudaFusionTensor;
use super::cuda_kernels::empty;
use super::cuda_stream;

type Cube<F> = CubeBackend<CudaRuntime, F, i32, u8>;
type Handles = HandleContainer<<FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle>;

/// The launch of an op: its contiguous inputs and its fresh outputs, in order.
type KernelFn =
    Box<dyn Fn(&[CubeTensor<CudaRuntime>], &[CubeTensor<CudaRuntime>]) + Send + Sync + 'static>;

/// Registers custom op `name` over `inputs` with outputs of these shapes and dtypes;
/// `kernel` launches over them when fusion runs the op (not at all when the first input
/// is empty).
pub fn register_op<F: FloatElement>(
    name: &'static str,
    inputs: Vec<CudaFusionTensor>,
    outputs: Vec<(Vec<usize>, DType)>,
    kernel: impl Fn(&[CubeTensor<CudaRuntime>], &[CubeTensor<CudaRuntime>]) + Send + Sync + 'static,
) -> Vec<CudaFusionTensor> {
    cuda_stream::check_earlier_failure();
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(shape, dtype)| {
            TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), dtype)
        })
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    let op = KernelOp::<F> {
        desc: desc.clone(),
        kernel: Box::new(kernel),
        _float: std::marker::PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

/// One registered op: what [`register_op`] was given.
struct KernelOp<F> {
    desc: CustomOpIr,
    kernel: KernelFn,
    _float: std::marker::PhantomData<F>,
}

impl<F> std::fmt::Debug for KernelOp<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KernelOp({:?})", self.desc)
    }
}

impl<F: FloatElement> Operation<FusionCubeRuntime<CudaRuntime>> for KernelOp<F> {
    fn execute(&self, handles: &mut Handles) {
        let inputs: Vec<CubeTensor<CudaRuntime>> = self
            .desc
            .inputs
            .iter()
            .map(|ir| burn_cubecl::kernel::into_contiguous(handles.get_float_tensor::<Cube<F>>(ir)))
            .collect();
        let outputs: Vec<CubeTensor<CudaRuntime>> = self
            .desc
            .outputs
            .iter()
            .map(|ir| empty(&inputs[0], ir.shape.clone(), ir.dtype))
            .collect();
        if inputs[0].meta.shape().iter().product::<usize>() > 0 {
            (self.kernel)(&inputs, &outputs);
        }
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Cube<F>>(&ir.id, tensor);
        }
    }
}
