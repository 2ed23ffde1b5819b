//! Two-dimensional f32 products on the CPU, written straight into a fresh buffer.
//!
//! burn's Flex matmul calls the `gemm` crate on all cores but first allocates its
//! output zeroed on one thread (`FlexTensor::empty`): for the adapted projections'
//! `[tokens, d_out]` products that was most of the serial memory traffic of a CPU
//! step. This makes the same `gemm` call, with the same parallelism rule, but tells
//! `gemm` not to read its destination (`read_dst = false`: its first pass over `k`
//! writes `lhs · rhs` without reading what was there), so the buffer is not zeroed at
//! all: one memory pass and one parallel region fewer per product, which matters most
//! on many cores, where each region's start costs more than its work. The values are
//! Flex's bit for bit; the test runs the product into a buffer of NaNs to show that
//! nothing of the old contents is read.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

use super::flex_values::{contiguous, flex_primitive};

/// Products with fewer multiply-adds run on one thread, as Flex runs them.
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// The most rows of a left operand that gemm packs once, on the calling thread, before
/// its parallel passes (twice its row block, which is at most 8 x 64 rows), unless that
/// operand is already in columns of its SIMD width.
const PACKED_ON_ONE_THREAD: usize = 2 * 8 * 64;

/// Whether [`matmul`] takes these: f32 `[m, k]` and `[k, n]`, none of them 0.
pub fn supports(lhs: &Tensor<Flex, 2>, rhs: &Tensor<Flex, 2>) -> bool {
    let ([m, k], [k2, n]) = (lhs.dims(), rhs.dims());
    lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32 && k == k2 && m * n * k > 0
}

/// `lhs @ rhs` with any strides, for operands [`supports`] takes.
pub fn matmul(lhs: Tensor<Flex, 2>, rhs: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
    assert!(supports(&lhs, &rhs), "f32 operands of matching inner size");
    let ([m, k], [_, n]) = (lhs.dims(), rhs.dims());
    let (lhs, rhs) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `out` has room for m x n elements; the product writes every one of them
    // (see `product_into`) before the length covers them.
    unsafe {
        product_into(&lhs, &rhs, [m, k, n], out.as_mut_ptr());
        out.set_len(m * n);
    }
    Tensor::from_primitive(TensorPrimitive::Float(flex_primitive(out, [m, n])))
}

/// Writes `lhs @ rhs` (`[m, k] @ [k, n]`, any strides) into `out`, rows of `n`, without
/// reading `out`'s old contents.
///
/// # Safety
/// `out` must be valid for writes of `m * n` f32 and alias neither operand.
unsafe fn product_into(lhs: &FlexTensor, rhs: &FlexTensor, [m, k, n]: [usize; 3], out: *mut f32) {
    let parallel = m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MACS;
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // gemm writes a row-major product as its transpose, `rhs^T · lhs^T`. Where `rhs` is
    // a transposed view (a weight in the backward pass, `dy · W^T`) with few columns,
    // gemm would pack all of it on this thread while the others wait: a copy in rows,
    // made on all cores, is read in place instead. Packing moves values and never
    // changes a sum, so the bits are the same, except where gemm picks its kernel by
    // the operands' strides: a single row (`m == 1`, a matrix-vector kernel) and
    // outputs of at most 16 x 16 values; those keep the view.
    let copy = rhs.layout().strides()[1] != 1 && n <= PACKED_ON_ONE_THREAD;
    let rhs_in_rows = (parallel && copy && m > 1 && m * n > 16 * 16).then(|| contiguous(rhs));
    let rhs = rhs_in_rows.as_ref().unwrap_or(rhs);
    let (lhs_ptr, lhs_rows, lhs_cols) = operand(lhs, m, k);
    let (rhs_ptr, rhs_rows, rhs_cols) = operand(rhs, k, n);
    // SAFETY: `operand` checked that every element (i, j) of each operand lies in its
    // buffer; the caller gives `out` room for m x n elements aliasing neither operand.
    // With `read_dst = false` (the argument after the strides), gemm sets the
    // destination's coefficient to zero and writes `1.0 · lhs · rhs` without reading it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            false,
            lhs_ptr,
            lhs_cols,
            lhs_rows,
            rhs_ptr,
            rhs_cols,
            rhs_rows,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The first element and the row and column strides of a `[rows, cols]` operand,
/// after checking that its last element lies inside its buffer.
fn operand(tensor: &FlexTensor, rows: usize, cols: usize) -> (*const f32, isize, isize) {
    let layout = tensor.layout();
    let storage = tensor.storage::<f32>();
    let (row, col) = (layout.strides()[0], layout.strides()[1]);
    let start = layout.start_offset() as isize;
    let last = start + (rows as isize - 1) * row + (cols as isize - 1) * col;
    assert!(
        row >= 0 && col >= 0 && (last as usize) < storage.len(),
        "a strided view inside its buffer"
    );
    (storage[layout.start_offset()..].as_ptr(), row, col)
}

#[cfg(test)]
mod tests {
    use super::super::flex_values::bits;
    use super::*;
    use burn::tensor::Distribution;

    /// Below and above the parallel threshold; an inner size of 1100 spans several of
    /// gemm's passes over `k`, the later of which add to what the first wrote.
    /// The last two are products whose kernel gemm picks by the operands' strides (one
    /// row; at most 16 x 16 outputs), long enough in `k` to run in parallel.
    const SHAPES: [(usize, usize, usize); 7] = [
        (7, 5, 3),
        (300, 256, 200),
        (33, 1100, 40),
        (200, 1100, 64),
        (100, 300, 2003),
        (1, 120_000, 64),
        (4, 30_000, 64),
    ];

    /// On 16 threads and on 3, as the thread-count test of training relies on.
    #[test]
    fn products_equal_flex_s_bit_for_bit_on_every_layout_and_thread_count() {
        for threads in [16, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for (m, k, n) in SHAPES {
                    products_equal_flex_s(m, k, n);
                }
            });
        }
    }

    /// Plain, transposed and narrowed operands.
    fn products_equal_flex_s(m: usize, k: usize, n: usize) {
        let device = Default::default();
        let random = |shape: [usize; 2]| {
            Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let a = random([m, k]);
        let b = random([k, n]);
        let bt = random([n, k]);
        let wide = random([m, k + 9]);
        let cases = [
            (a.clone(), b.clone()),
            (a.clone(), bt.clone().transpose()),
            (wide.clone().narrow(1, 4, k), b.clone()),
            (random([k, m]).transpose(), b.clone()),
        ];
        for (lhs, rhs) in cases {
            let expected = bits(lhs.clone().matmul(rhs.clone()));
            // Into a buffer of NaNs: any value of it that were read would show.
            let (l, r) = (
                lhs.clone().into_primitive().tensor(),
                rhs.clone().into_primitive().tensor(),
            );
            let mut poisoned = vec![f32::NAN; m * n];
            // SAFETY: room for m x n values, aliasing neither operand.
            unsafe { product_into(&l, &r, [m, k, n], poisoned.as_mut_ptr()) };
            let poisoned: Vec<u32> = poisoned.iter().map(|v| v.to_bits()).collect();
            assert_eq!(poisoned, expected, "{m}x{k}x{n} into NaNs");
            assert_eq!(bits(matmul(lhs, rhs)), expected, "{m}x{k}x{n}");
        }
    }
}
