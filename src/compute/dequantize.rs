//! A quantized base weight dequantized on CUDA in one kernel (`dequantize.cu`), as a
//! fusion custom op, for the quantized projections' forward and backward products.
//!
//! [`QuantizedWeight::dequantize`] writes the same values with burn's ops: unpacking
//! the words, a table lookup, the block scales and a cast, about a dozen kernels with
//! three f32 intermediates the size of the weight. An 8B model's projections are
//! dequantized three times a step with per-layer recomputation, so that chain cost half
//! the step and its intermediates set the memory peak. The kernel reads the packed codes
//! once and writes the weight once, with the host reference's arithmetic step by step
//! (no fused multiply-add), so its values are those of
//! [`QuantizedHost::dequantize`](crate::model::quantize::QuantizedHost::dequantize) bit
//! for bit, which the op chain's are too (a NaN keeps its sign and payload, as `half`
//! rounds it).

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use burn::backend::Cuda;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{CubeBackend, FloatElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::FusionRuntime;

use super::cublas::CudaFusionTensor;
use super::cuda_kernels::{empty, launch, Args, Function, PerDevice};
use super::cuda_stream;
use crate::model::quantize::QuantScheme;
use crate::model::quantized::QuantizedWeight;

const SOURCE: &str = concat!(
    include_str!("cuda_elements.cuh"),
    include_str!("dequantize.cu")
);
/// Threads per block (`__launch_bounds__` in the source).
const THREADS: u32 = 256;
/// Blocks of a launch at most; each thread loops over the words beyond.
const MAX_BLOCKS: usize = 16_384;

type Cube<F> = CubeBackend<CudaRuntime, F, i32, u8>;

/// Device `index`'s kernel, compiled on first use (`None` where NVRTC cannot build it,
/// after a warning; the op chain serves then).
fn kernel(index: usize) -> Option<Function> {
    static KERNEL: PerDevice<Option<Function>> = PerDevice::new();
    let what = (
        "dequantization kernel",
        "quantized weights are dequantized op by op",
    );
    KERNEL
        .build_or_warn(index, SOURCE, what, |module| {
            module.function("dequantize", 0)
        })
        .copied()
}

/// `weight` as `[out, in]` values in `dtype` (bf16 or f32) from the one-pass kernel;
/// `None` (the caller runs the op chain) for other dtypes or where the kernel does not
/// build.
pub fn dequantize<F: FloatElement>(
    weight: &QuantizedWeight<Cuda<F>>,
    dtype: DType,
) -> Option<Tensor<Cuda<F>, 2>> {
    let layout = weight.layout;
    let nf4 = layout.scheme == QuantScheme::Nf4;
    let float_inputs_f32 = weight.scales.dtype() == DType::F32
        && weight
            .table
            .as_ref()
            .is_none_or(|t| t.dtype() == DType::F32)
        && weight
            .scale_map
            .as_ref()
            .is_none_or(|t| t.dtype() == DType::F32);
    let words_i32 = weight.words.dtype() == DType::I32
        && weight
            .scale_words
            .as_ref()
            .is_none_or(|t| t.dtype() == DType::I32);
    if !matches!(dtype, DType::BF16 | DType::F32)
        || !float_inputs_f32
        || !words_i32
        || nf4 != weight.table.is_some()
        || layout.nested.is_some() != weight.scale_words.is_some()
        || layout.nested.is_some() != weight.scale_map.is_some()
        || !layout.block.is_multiple_of(8)
    {
        return None;
    }
    kernel(weight.device().index)?;
    cuda_stream::check_earlier_failure();
    let float =
        |t: &Tensor<Cuda<F>, _>| -> CudaFusionTensor { t.clone().into_primitive().tensor() };
    let int = |t: &Tensor<Cuda<F>, 1, burn::tensor::Int>| -> CudaFusionTensor {
        t.clone().into_primitive()
    };
    let mut inputs = vec![int(&weight.words), float(&weight.scales)];
    inputs.extend(
        weight
            .table
            .as_ref()
            .map(|t| t.clone().into_primitive().tensor()),
    );
    if let (Some(words), Some(map)) = (&weight.scale_words, &weight.scale_map) {
        inputs.extend([int(words), float(map)]);
    }
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from(layout.shape.to_vec()),
        dtype,
    );
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new("graft_dequantize", &inputs, &[out]);
    let (nested_block, offset) = layout.nested.unwrap_or((0, 0.0));
    let op = Dequantize::<F> {
        desc: desc.clone(),
        layout: KernelLayout {
            len: (layout.shape[0] * layout.shape[1]) as i64,
            words: weight.words.dims()[0] as i64,
            nf4: nf4 as i32,
            block: layout.block as i32,
            nested_block: nested_block as i32,
            offset,
            bf16: (dtype == DType::BF16) as i32,
        },
        _float: std::marker::PhantomData,
    };
    let out = client
        .register(streams, OperationIr::Custom(desc), op)
        .output();
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// The kernel's `struct Layout`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct KernelLayout {
    len: i64,
    words: i64,
    nf4: i32,
    block: i32,
    nested_block: i32,
    offset: f32,
    bf16: i32,
}

#[derive(Debug)]
struct Dequantize<F> {
    desc: CustomOpIr,
    layout: KernelLayout,
    _float: std::marker::PhantomData<F>,
}

type Handles = HandleContainer<<FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle>;

impl<F: FloatElement> Operation<FusionCubeRuntime<CudaRuntime>> for Dequantize<F> {
    fn execute(&self, handles: &mut Handles) {
        // A no-op for the contiguous tensors the weight holds.
        let contiguous = burn_cubecl::kernel::into_contiguous::<CudaRuntime>;
        let inputs = &self.desc.inputs;
        let words = contiguous(handles.get_int_tensor::<Cube<F>>(&inputs[0]));
        let scales = contiguous(handles.get_float_tensor::<Cube<F>>(&inputs[1]));
        // Inputs: words, scales, then NF4's pairs, then the nested codes and map.
        let pairs = (self.layout.nf4 == 1)
            .then(|| contiguous(handles.get_float_tensor::<Cube<F>>(&inputs[2])));
        let rest = 2 + pairs.is_some() as usize;
        let nested = (self.layout.nested_block > 0).then(|| {
            let codes = contiguous(handles.get_int_tensor::<Cube<F>>(&inputs[rest]));
            let map = contiguous(handles.get_float_tensor::<Cube<F>>(&inputs[rest + 1]));
            (codes, map)
        });
        let out_ir = &self.desc.outputs[0];
        let out = empty(&words, out_ir.shape.clone(), out_ir.dtype);
        let layout = self.layout;
        let mut buffers = vec![
            words.handle.clone().binding(),
            scales.handle.clone().binding(),
            out.handle.clone().binding(),
        ];
        buffers.extend(pairs.iter().map(|t| t.handle.clone().binding()));
        if let Some((codes, map)) = &nested {
            buffers.extend([codes.handle.clone().binding(), map.handle.clone().binding()]);
        }
        let function = kernel(words.device.index).expect("built before the op was registered");
        let has_pairs = pairs.is_some();
        let blocks = (layout.words as usize)
            .div_ceil(THREADS as usize)
            .clamp(1, MAX_BLOCKS);
        launch(&words, buffers, move |p, stream| {
            let (words, scales, out) = (p[0], p[1], p[2]);
            let pairs = if has_pairs { p[3] } else { 0 };
            let tail = if has_pairs { 4 } else { 3 };
            let (codes, map) = if p.len() > tail {
                (p[tail], p[tail + 1])
            } else {
                (0, 0)
            };
            let mut args = Args::default();
            args.push(words)
                .push(pairs)
                .push(scales)
                .push(codes)
                .push(map)
                .push(layout)
                .push(out);
            // SAFETY: the arguments follow `dequantize`'s parameters in the source; the
            // buffers are held until the kernel ends (cuda_kernels::launch).
            unsafe { args.launch(function, (blocks as u32, 1), THREADS, 0, stream) };
        });
        handles.register_float_tensor::<Cube<F>>(&out_ir.id, out);
    }
}

#[cfg(test)]
mod tests {
    //! Runs where a CUDA device is present (the GPU machine's test binary); elsewhere
    //! it says why it was skipped.
    use super::*;
    use crate::compute::cuda_kernels::no_gpu;
    use crate::model::quantize::{quantize_int8, quantize_nf4, BlockScales, QuantizedHost};

    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919) % 2003) as f32 - 1001.0) / 613.0 * (1.0 + (i % 5) as f32))
            .collect()
    }

    fn on_device(host: &QuantizedHost, dtype: DType) -> (Vec<f32>, Vec<f32>) {
        type B = Cuda<burn::tensor::bf16>;
        let device = Default::default();
        let weight = QuantizedWeight::<B>::from_host(host, &device);
        let read = |t: Tensor<B, 2>| -> Vec<f32> {
            t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
        };
        let kernel = dequantize::<burn::tensor::bf16>(&weight, dtype).expect("the kernel serves");
        (read(kernel), read(weight.dequantize(dtype)))
    }

    /// The kernel's values equal the host reference's bit for bit, in f32 and rounded
    /// to bf16, for NF4 with double-quantized scales, NF4 with plain scales and int8, on
    /// shapes whose last word and last block are partial; and the op chain's agree.
    #[test]
    fn the_kernel_writes_the_host_references_values() {
        if let Some(reason) = no_gpu() {
            eprintln!("skipped the_kernel_writes_the_host_references_values: {reason}");
            return;
        }
        for shape in [[7, 9], [24, 40], [301, 517], [1024, 4096]] {
            let v = values(shape[0] * shape[1]);
            let double = quantize_nf4(&v, shape);
            let plain = QuantizedHost {
                scales: BlockScales::Plain(double.scales.expand()),
                ..double.clone()
            };
            for host in [double, plain, quantize_int8(&v, shape)] {
                let reference = host.dequantize();
                let bf16_reference: Vec<f32> = reference
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_f32())
                    .collect();
                for (dtype, expected) in [(DType::F32, &reference), (DType::BF16, &bf16_reference)]
                {
                    let (kernel, chain) = on_device(&host, dtype);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&kernel),
                        bits(expected),
                        "{:?} {shape:?} {dtype:?}",
                        host.scheme
                    );
                    assert_eq!(
                        bits(&chain),
                        bits(expected),
                        "op chain, {:?} {shape:?} {dtype:?}",
                        host.scheme
                    );
                }
            }
        }
    }
}
