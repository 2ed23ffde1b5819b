//! Plain values in and out of CPU tensor primitives, for the fused CPU nodes that work
//! on slices.
//!
//! Everything here runs on all cores or not at all: burn's Flex backend copies a
//! strided view (a head-transposed query, the gradient of a `swap_dims`) with one
//! thread, and `TensorData::to_vec` copies even a contiguous buffer, so reading the
//! nodes' inputs that way was about a third of the single-threaded part of a CPU
//! training step. A [`HostValues`] borrows the primitive's buffer when it is
//! contiguous and makes it so in parallel when it is not; outputs are filled in
//! parallel ([`zeros`]) and handed to Flex without a copy ([`flex_primitive`]).

use burn::tensor::{DType, TensorData};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per rayon task of a copy or fill: enough to amortise a task, small
/// enough that every core gets work on the tensors of the tiny presets.
const CHUNK: usize = 32 * 1024;

/// The f32 values of a CPU tensor primitive in logical (row-major) order, shared with
/// the primitive where its layout allows (cloning is a reference count).
#[derive(Debug, Clone)]
pub struct HostValues(FlexTensor);

impl HostValues {
    /// The values of `primitive`, which must be f32.
    pub fn new(primitive: FlexTensor) -> Self {
        assert_eq!(
            primitive.dtype(),
            DType::F32,
            "the fused CPU nodes take f32"
        );
        if primitive.as_slice::<f32>().is_some() {
            HostValues(primitive)
        } else {
            HostValues(contiguous(&primitive))
        }
    }

    /// The primitive holding these values, for a node's output.
    pub fn into_primitive(self) -> FlexTensor {
        self.0
    }
}

impl std::ops::Deref for HostValues {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("made contiguous on construction")
    }
}

/// A CPU tensor primitive of `shape` holding `values` (row-major), without a copy.
pub fn flex_primitive(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `head_major`, a contiguous `[batch, heads, seq, dim]` primitive, stored as
/// `[batch, seq, heads, dim]`: the model's head merge, `swap_dims(1, 2)` then a
/// reshape, reads that as contiguous instead of copying it on one thread. The
/// permuting copy runs in parallel ([`contiguous`]).
pub fn seq_major(head_major: FlexTensor) -> FlexTensor {
    contiguous(&head_major.transpose(1, 2)).transpose(1, 2)
}

/// `len` zeros, written by all cores (a reused heap block is not zero already).
pub fn zeros(len: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .for_each(|chunk| chunk.fill(MaybeUninit::new(0.0)));
    // SAFETY: the loop above initialised the first `len` elements.
    unsafe { values.set_len(len) };
    values
}

/// A contiguous copy of an f32 view with any strides, rows of the last dimension
/// copied in parallel.
pub fn contiguous(view: &FlexTensor) -> FlexTensor {
    let layout = view.layout();
    let shape: Vec<usize> = layout.shape().iter().copied().collect();
    let source = view.storage::<f32>();
    let len: usize = shape.iter().product();
    let row = shape.last().copied().unwrap_or(1).max(1);
    let mut values = Vec::with_capacity(len);
    let rows_per_task = (CHUNK / row).max(1);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(rows_per_task * row)
        .enumerate()
        .for_each(|(task, out)| {
            for (i, out_row) in out.chunks_mut(row).enumerate() {
                copy_row(source, layout, &shape, task * rows_per_task + i, out_row);
            }
        });
    // SAFETY: every row of the first `len` elements was written above.
    unsafe { values.set_len(len) };
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Row `index` (over every dimension but the last) of `layout`'s view of `source`.
fn copy_row(
    source: &[f32],
    layout: &Layout,
    shape: &[usize],
    index: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let strides = layout.strides();
    let dims = shape.len();
    let mut offset = layout.start_offset() as isize;
    let mut rest = index;
    for d in (0..dims.saturating_sub(1)).rev() {
        offset += (rest % shape[d]) as isize * strides[d];
        rest /= shape[d];
    }
    let step = if dims == 0 { 1 } else { strides[dims - 1] };
    if step == 1 {
        let (start, len) = (offset as usize, out.len());
        for (o, &v) in out.iter_mut().zip(&source[start..start + len]) {
            *o = MaybeUninit::new(v);
        }
    } else {
        for (j, o) in out.iter_mut().enumerate() {
            *o = MaybeUninit::new(source[(offset + j as isize * step) as usize]);
        }
    }
}

/// The bit patterns of a tensor's values, for tests that compare two computations
/// bit for bit.
#[cfg(test)]
pub fn bits<B: burn::tensor::backend::Backend, const D: usize>(
    tensor: burn::tensor::Tensor<B, D>,
) -> Vec<u32> {
    let values = tensor.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    values.iter().map(|v| v.to_bits()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Tensor;

    fn primitive<const D: usize>(tensor: Tensor<Flex, D>) -> FlexTensor {
        tensor.into_primitive().tensor()
    }

    #[test]
    fn strided_views_read_as_their_logical_order() {
        let values: Vec<f32> = (0..2 * 3 * 40 * 5).map(|i| i as f32).collect();
        let base = Tensor::<Flex, 4>::from_data(
            TensorData::new(values, [2, 3, 40, 5]),
            &Default::default(),
        );
        let views = [
            base.clone().swap_dims(1, 2),
            base.clone().permute([3, 1, 0, 2]),
            base.clone().narrow(2, 7, 20),
            base.clone().narrow(3, 1, 3).swap_dims(0, 3),
            base,
        ];
        for view in views {
            let expected = view.clone().into_data().to_vec::<f32>().unwrap();
            let shared = HostValues::new(primitive(view.clone()));
            assert_eq!(&shared[..], &expected[..]);
        }
    }

    #[test]
    fn a_contiguous_primitive_is_read_in_place() {
        let tensor = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0f32; 12], [3, 4]),
            &Default::default(),
        );
        let p = primitive(tensor);
        let values = HostValues::new(p.clone());
        assert_eq!(values.as_ptr(), p.as_slice::<f32>().unwrap().as_ptr());
    }

    #[test]
    fn seq_major_holds_the_values_and_merges_heads_without_a_copy() {
        let shape = [2, 3, 700, 4];
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| i as f32)
            .collect();
        let stored = seq_major(flex_primitive(values.clone(), shape));
        let tensor =
            Tensor::<Flex, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(stored));
        assert_eq!(tensor.dims(), shape);
        assert_eq!(tensor.clone().into_data().to_vec::<f32>().unwrap(), values);
        let merged = primitive(tensor.swap_dims(1, 2));
        assert!(
            merged.as_slice::<f32>().is_some(),
            "the head merge reads it in place"
        );
    }

    #[test]
    fn zeros_are_zero_past_one_task() {
        assert!(zeros(3 * CHUNK + 5).iter().all(|&v| v == 0.0));
        assert!(zeros(0).is_empty());
    }
}
