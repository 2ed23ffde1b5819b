//! The token loss's rows on CUDA in one kernel each way (`cuda_loss.cu`), as fusion
//! custom ops, for [`super::cross_entropy`]'s node (`compute.cuda_fused_loss`).
//!
//! Through burn's ops the node's rows took five kernels forward (a cast to f32, two
//! reductions whose launches use 64 blocks for the whole `[tokens, vocab]` tensor, and
//! the element-wise passes between) and three backward (an f32 softmax, a scatter and
//! a cast): on llama-1b at 16k tokens, 35 ms of a 477 ms step on an H200 (ncu). Here
//! the forward reads the logits once and the backward reads them and writes their
//! gradient once, one block a row.

use burn::backend::Cuda;
use burn::tensor::{DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::FloatElement;

use super::cross_entropy::LossKernels;
use super::cublas::CudaFusionTensor;
use super::cuda_kernels::{launch, Args, ByDtype, Function, PerDevice};
use super::cuda_op::register_op;

const SOURCE: &str = concat!(
    include_str!("cuda_elements.cuh"),
    include_str!("cuda_loss.cu")
);
/// Threads per block (`THREADS` in the source).
const THREADS: u32 = 256;

struct Kernels {
    rows: ByDtype,
    gradient: ByDtype,
}

/// Device `index`'s kernels, compiled on first use (`None` where NVRTC cannot build
/// them, after a warning; the node's rows then run on burn's ops).
fn kernels(index: usize) -> Option<&'static Kernels> {
    static KERNELS: PerDevice<Option<Kernels>> = PerDevice::new();
    KERNELS.build_or_warn(
        index,
        SOURCE,
        ("token loss kernels", "the loss runs on burn's ops"),
        |module| {
            Ok(Kernels {
                rows: module.by_dtype("loss_rows")?,
                gradient: module.by_dtype("loss_gradient")?,
            })
        },
    )
}

/// Whether the kernels serve these logits and targets: bf16 or f32 logits, i32
/// targets, on a device where the kernels build.
pub fn supports<B: burn::tensor::backend::Backend, T: burn::tensor::backend::Backend>(
    logits: &Tensor<B, 2>,
    targets: &Tensor<T, 1, Int>,
    device_index: usize,
) -> bool {
    matches!(logits.dtype(), DType::BF16 | DType::F32)
        && targets.dtype() == DType::I32
        && kernels(device_index).is_some()
}

/// The node's rows on these kernels. Call where [`supports`] said yes.
pub fn loss_kernels<F: FloatElement>() -> LossKernels<Cuda<F>> {
    LossKernels {
        rows: rows::<F>,
        gradient: gradient::<F>,
    }
}

fn float<F: FloatElement, const D: usize>(t: &Tensor<Cuda<F>, D>) -> CudaFusionTensor {
    t.clone().into_primitive().tensor()
}

fn wrap<F: FloatElement, const D: usize>(t: CudaFusionTensor) -> Tensor<Cuda<F>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn rows<F: FloatElement>(
    logits: &Tensor<Cuda<F>, 2>,
    targets: &Tensor<Cuda<F>, 2, Int>,
    weights: &Tensor<Cuda<F>, 2>,
) -> (Tensor<Cuda<F>, 2>, Tensor<Cuda<F>, 2>) {
    let [rows, vocab] = logits.dims();
    let inputs = vec![
        float(logits),
        targets.clone().into_primitive(),
        float(weights),
    ];
    let column = (vec![rows, 1], DType::F32);
    let mut out = register_op::<F>(
        "graft_loss_rows",
        inputs,
        vec![column.clone(), column],
        move |inputs, outputs| {
            let [logits, targets, weights] = inputs else {
                unreachable!("three inputs")
            };
            let [lse, terms] = outputs else {
                unreachable!("two outputs")
            };
            let kernels = kernels(logits.device.index).expect("built before the op was registered");
            let function = kernels.rows.of(logits.dtype);
            launch_rows(function, [logits, targets, weights, lse, terms], vocab);
        },
    );
    let terms = out.pop().expect("terms");
    let lse = out.pop().expect("lse");
    (wrap(lse), wrap(terms))
}

fn gradient<F: FloatElement>(
    logits: Tensor<Cuda<F>, 2>,
    lse: Tensor<Cuda<F>, 2>,
    targets: Tensor<Cuda<F>, 2, Int>,
    row_weight: Tensor<Cuda<F>, 2>,
) -> Tensor<Cuda<F>, 2> {
    let [rows, vocab] = logits.dims();
    let dtype = logits.dtype();
    let inputs = vec![
        float(&logits),
        float(&lse),
        targets.into_primitive(),
        float(&row_weight),
    ];
    let mut out = register_op::<F>(
        "graft_loss_gradient",
        inputs,
        vec![(vec![rows, vocab], dtype)],
        move |inputs, outputs| {
            let [logits, lse, targets, row_weight] = inputs else {
                unreachable!("four inputs")
            };
            let kernels = kernels(logits.device.index).expect("built before the op was registered");
            let function = kernels.gradient.of(logits.dtype);
            launch_rows(
                function,
                [logits, lse, targets, row_weight, &outputs[0]],
                vocab,
            );
        },
    );
    wrap(out.pop().expect("gradient"))
}

/// Launches `function` (`loss_rows` or `loss_gradient`: five buffers, then the
/// vocabulary) with a block for each row of the logits, the first of `tensors`.
fn launch_rows(function: Function, tensors: [&CubeTensor<CudaRuntime>; 5], vocab: usize) {
    let logits = tensors[0];
    let rows = logits.meta.shape()[0] as u32;
    if rows == 0 {
        return;
    }
    let vocab = vocab as i64;
    let buffers = tensors.map(|t| t.handle.clone().binding()).to_vec();
    launch(logits, buffers, move |p, stream| {
        let mut args = Args::default();
        for pointer in p {
            args.push(pointer);
        }
        args.push(vocab);
        // SAFETY: the arguments follow both kernels' parameters in the source (five
        // buffers in the order given, then the vocabulary); the buffers are held until
        // the kernel ends (cuda_kernels::launch).
        unsafe { args.launch(function, (rows, 1), THREADS, 0, stream) };
    });
}

#[cfg(test)]
mod tests {
    //! Runs where a CUDA device is present (the GPU machine's test binary); elsewhere
    //! each test says why it was skipped.
    use super::*;
    use crate::compute::cross_entropy::cross_entropy_autodiff_with;
    use crate::compute::cuda_kernels::no_gpu;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, TensorData};

    type I = Cuda<burn::tensor::bf16>;
    type B = Autodiff<I, NoCheckpointing>;

    /// Loss and logits' gradient from the node with `kernels`, read back as f32.
    fn loss_and_gradient(
        x: &Tensor<I, 2>,
        targets: &Tensor<I, 1, Int>,
        weights: &Tensor<I, 1>,
        kernels: LossKernels<I>,
    ) -> (f32, Vec<f32>) {
        let logits = Tensor::<B, 2>::from_inner(x.clone()).require_grad();
        let loss = cross_entropy_autodiff_with::<I, NoCheckpointing>(
            logits.clone(),
            targets.clone(),
            weights.clone(),
            kernels,
        );
        let grads = loss.backward();
        let gradient = logits.grad(&grads).expect("a gradient");
        let read = |d: TensorData| d.convert::<f32>().into_vec::<f32>().unwrap();
        (
            read(loss.inner().into_data())[0],
            read(gradient.into_data()),
        )
    }

    /// The loss, the logits' gradient and each row's log-sum-exp in f64 on the host,
    /// from the logits as the device holds them.
    fn exact(
        x: &[f32],
        vocab: usize,
        targets: &[i32],
        weights: &[f32],
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let mut loss = 0.0;
        let mut gradient = Vec::with_capacity(x.len());
        let mut lses = Vec::new();
        for (r, row) in x.chunks(vocab).enumerate() {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            lses.push(lse);
            let (t, w) = (targets[r] as usize, weights[r] as f64);
            loss += w * (lse - row[t] as f64);
            gradient.extend(
                row.iter()
                    .enumerate()
                    .map(|(i, &v)| w * ((v as f64 - lse).exp() - if i == t { 1.0 } else { 0.0 })),
            );
        }
        (loss, gradient, lses)
    }

    /// The kernels' loss and gradient agree with the exact ones computed on the host
    /// (the loss to f32 rounding, each gradient element to one rounding of its dtype
    /// plus f32's), and with burn's ops, on bf16 and f32 logits, rows read 16 bytes at a
    /// time and one by one (a vocabulary that is not a multiple of 8), with a
    /// zero-weight row, logits far above exp's range and a row of one repeated value;
    /// and a second run gives the same bits.
    #[test]
    fn the_loss_kernels_agree_with_burns_ops_and_repeat_to_the_bit() {
        if let Some(reason) = no_gpu() {
            eprintln!(
                "skipped the_loss_kernels_agree_with_burns_ops_and_repeat_to_the_bit: {reason}"
            );
            return;
        }
        let device = Default::default();
        for (rows, vocab) in [(7, 128_256), (5, 1001), (33, 2048)] {
            for dtype in [DType::BF16, DType::F32] {
                let mut x =
                    Tensor::<I, 2>::random([rows, vocab], Distribution::Normal(0.0, 4.0), &device);
                // Row 1: one value throughout; row 2: logits far above exp's range.
                x = x.slice_assign([1..2, 0..vocab], Tensor::full([1, vocab], 0.5, &device));
                x = x.clone().slice_assign(
                    [2..3, 0..vocab],
                    x.clone().slice([2..3, 0..vocab]).add_scalar(300.0),
                );
                let x = x.cast(dtype);
                let targets: Vec<i32> = (0..rows).map(|r| ((r * 7919) % vocab) as i32).collect();
                let weights: Vec<f32> = (0..rows)
                    .map(|r| if r == 3 { 0.0 } else { 0.5 + r as f32 / 4.0 })
                    .collect();
                let host_x = x
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .unwrap();
                let (exact_loss, exact_gradient, lses) = exact(&host_x, vocab, &targets, &weights);
                let targets =
                    Tensor::<I, 1, Int>::from_data(TensorData::from(&targets[..]), &device);
                let weights = Tensor::<I, 1>::from_data(TensorData::from(&weights[..]), &device);
                assert!(supports(&x, &targets, 0));

                let (loss, gradient) =
                    loss_and_gradient(&x, &targets, &weights, loss_kernels::<burn::tensor::bf16>());
                let (again, gradient_again) =
                    loss_and_gradient(&x, &targets, &weights, loss_kernels::<burn::tensor::bf16>());
                let (ops_loss, _) = loss_and_gradient(&x, &targets, &weights, LossKernels::ops());
                let case = format!("{rows} x {vocab} {dtype:?}");
                assert_eq!(loss.to_bits(), again.to_bits(), "{case}: loss repeats");
                let bits = |v: &[f32]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&gradient),
                    bits(&gradient_again),
                    "{case}: gradient repeats"
                );
                for (what, value) in [("kernels", loss), ("burn's ops", ops_loss)] {
                    assert!(
                        (value as f64 - exact_loss).abs() <= 1e-5 * exact_loss.abs().max(1.0),
                        "{case}: {what}' loss {value} against {exact_loss}"
                    );
                }
                // One rounding of the dtype (bf16: 2^-8 relative) on f32 arithmetic, whose
                // log-sum-exp, stored in f32, is off by up to half an ulp of its own size
                // (at logits near 300, 1.5e-5: exp(x - lse) carries that relative error).
                for (i, (g, e)) in gradient.iter().zip(&exact_gradient).enumerate() {
                    let lse_ulp = f32::EPSILON as f64 * lses[i / vocab].abs();
                    let relative = if dtype == DType::BF16 {
                        1.0 / 128.0
                    } else {
                        1e-5 + lse_ulp
                    };
                    assert!(
                        (*g as f64 - e).abs() <= relative * e.abs() + 1e-7,
                        "{case}: gradient[{i}] {g} against {e}"
                    );
                }
                // The zero-weight row has no gradient.
                assert!(gradient[3 * vocab..4 * vocab].iter().all(|g| *g == 0.0));
            }
        }
    }
}
