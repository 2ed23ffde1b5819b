//! AdamW over a flat group of f32 parameters on the CPU, on all cores, with the bits
//! of the op-by-op update in `train::optim`.
//!
//! Op by op, an update is about a dozen Flex element-wise ops over the whole group
//! (its moments, the clip factor, the bias corrections, decay), each on one thread,
//! plus a copy of every parameter into one flat tensor and a view of each back out:
//! at 16 threads, a few percent of a smol-135m step with the other cores waiting.
//! Here each element goes through the same IEEE operations in the same order (Rust
//! never fuses a multiply and an add), in chunks on all cores, reading each parameter
//! where it is and writing the moments in place where the group holds them alone.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::flex_values::{flex_primitive, zeros, HostValues};

/// Elements per rayon task.
const CHUNK: usize = 32 * 1024;

/// The scalars of one update, each as Flex's scalar ops round it (an `f64` cast to
/// `f32`): `m * beta1 + g * one_minus_beta1`, and so on.
#[derive(Debug, Clone, Copy)]
pub struct Scalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub correction1: f32,
    pub correction2: f32,
    pub eps: f32,
    pub lr: f32,
    /// The parameter's factor before the update (decoupled weight decay).
    pub decay: Option<f32>,
    /// The gradient's factor first (global-norm clipping).
    pub clip: Option<f32>,
}

/// One update: each of `params` (f32, flat, the group's members in order) and the
/// group's flat gradient and moments. Returns the new parameters and moments.
pub fn step(
    params: Vec<FlexTensor>,
    grad: FlexTensor,
    m: FlexTensor,
    v: FlexTensor,
    s: Scalars,
) -> (Vec<FlexTensor>, FlexTensor, FlexTensor) {
    let params: Vec<HostValues> = params.into_iter().map(HostValues::new).collect();
    let grad = HostValues::new(grad);
    let total: usize = params.iter().map(|p| p.len()).sum();
    assert_eq!(grad.len(), total, "the group's gradient covers its members");
    let (mut m_tensor, mut v_tensor) = (writable(m), writable(v));
    let m = values_mut(&mut m_tensor);
    let v = values_mut(&mut v_tensor);
    assert!(
        m.len() == total && v.len() == total,
        "moments cover the group"
    );
    let mut outs: Vec<Vec<f32>> = params.par_iter().map(|p| zeros(p.len())).collect();

    // Every member cut into chunks, each with its slices of the flat gradient and moments.
    let mut tasks = Vec::new();
    let (mut m_rest, mut v_rest, mut g_rest) = (m, v, &grad[..]);
    for (param, out) in params.iter().zip(outs.iter_mut()) {
        let n = param.len();
        let (m_k, m_after) = std::mem::take(&mut m_rest).split_at_mut(n);
        let (v_k, v_after) = std::mem::take(&mut v_rest).split_at_mut(n);
        let (g_k, g_after) = g_rest.split_at(n);
        (m_rest, v_rest, g_rest) = (m_after, v_after, g_after);
        tasks.extend(
            out.chunks_mut(CHUNK)
                .zip(param.chunks(CHUNK))
                .zip(g_k.chunks(CHUNK))
                .zip(m_k.chunks_mut(CHUNK).zip(v_k.chunks_mut(CHUNK))),
        );
    }
    tasks
        .into_par_iter()
        .for_each(|(((out, param), grad), (m, v))| update(out, param, grad, m, v, &s));

    let params = outs
        .into_iter()
        .map(|values| {
            let n = values.len();
            flex_primitive(values, [n])
        })
        .collect();
    (params, m_tensor, v_tensor)
}

/// The moments as a tensor whose buffer this update may write: their own where they
/// hold it alone and are contiguous in it, else a copy.
fn writable(mut moments: FlexTensor) -> FlexTensor {
    let contiguous = moments.layout().contiguous_offsets().is_some();
    if contiguous && moments.try_storage_mut::<f32>().is_some() {
        return moments;
    }
    let values = HostValues::new(moments).to_vec();
    let n = values.len();
    flex_primitive(values, [n])
}

/// The values of a tensor [`writable`] returned.
fn values_mut(tensor: &mut FlexTensor) -> &mut [f32] {
    let (start, end) = tensor
        .layout()
        .contiguous_offsets()
        .expect("writable tensors are contiguous");
    &mut tensor
        .try_storage_mut::<f32>()
        .expect("writable tensors hold their buffer alone")[start..end]
}

/// The update of one chunk, in the order of `train::optim::AdamW::adamw`'s ops.
#[inline(always)]
fn update(out: &mut [f32], param: &[f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: &Scalars) {
    super::cpu_vectors::in_widest_vectors(|| {
        for ((((out, &p), &g), m), v) in out.iter_mut().zip(param).zip(grad).zip(m).zip(v) {
            let g = match s.clip {
                Some(factor) => g * factor,
                None => g,
            };
            let m_new = *m * s.beta1 + g * s.one_minus_beta1;
            let v_new = *v * s.beta2 + (g * g) * s.one_minus_beta2;
            let step = (m_new / s.correction1) / ((v_new / s.correction2).sqrt() + s.eps);
            let p = match s.decay {
                Some(factor) => p * factor,
                None => p,
            };
            *out = p - step * s.lr;
            *m = m_new;
            *v = v_new;
        }
    })
}
