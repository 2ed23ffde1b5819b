//! Sums whose result does not depend on how many threads the CPU backend runs.
//!
//! burn-flex sums a contiguous f32 tensor of [`PARALLEL_SUM_ELEMENTS`] or more on
//! rayon's pool and adds the partial sums in the order work stealing gives, so the
//! last bits of the total can change from run to run. A run's checkpoints must be
//! reproducible bit for bit, so the sums that feed training (the loss, the gradient
//! norm) go through [`ordered_sum`]. Reductions along a dimension are already
//! sequential per row.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The size from which burn-flex 0.21 sums a whole tensor in parallel.
pub const PARALLEL_SUM_ELEMENTS: usize = 4 * 1024 * 1024;

/// Elements per row when a large sum is split into rows first.
const ROW: usize = 64 * 1024;

/// The sum of all elements of `tensor`, as a one-element tensor, added in an order
/// fixed by the shape alone. Below [`PARALLEL_SUM_ELEMENTS`] it is burn's `sum`
/// (bit for bit); above, rows of [`ROW`] elements are summed each by one thread, then
/// the row sums.
pub fn ordered_sum<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, 1> {
    let count = tensor.shape().num_elements();
    if count < PARALLEL_SUM_ELEMENTS {
        return tensor.sum();
    }
    let flat = tensor.reshape([count]);
    let rows = count / ROW;
    let mut parts = vec![flat
        .clone()
        .narrow(0, 0, rows * ROW)
        .reshape([rows, ROW])
        .sum_dim(1)
        .reshape([rows])];
    if count > rows * ROW {
        parts.push(flat.narrow(0, rows * ROW, count - rows * ROW));
    }
    // At most count / ROW + ROW elements: far below the parallel threshold.
    Tensor::cat(parts, 0).sum()
}

/// The sum of `terms` in an order fixed by their count alone: eight running lanes
/// (term i into lane i mod 8), the lanes added pairwise, then the last `count mod 8`
/// terms. No thread count or SIMD width changes a bit of it (Rust neither
/// reassociates nor fuses float additions), which the CPU's row kernels need.
pub fn lane_sum(terms: impl ExactSizeIterator<Item = f32>) -> f32 {
    let count = terms.len();
    let head = count / 8 * 8;
    let mut lanes = [0.0f32; 8];
    let mut tail = [0.0f32; 7];
    for (i, term) in terms.enumerate() {
        if i < head {
            lanes[i % 8] += term;
        } else {
            tail[i - head] = term;
        }
    }
    let mut sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for term in &tail[..count - head] {
        sum += term;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type B = burn::backend::Flex;

    #[test]
    fn small_sums_are_burns_sum_bit_for_bit() {
        let device = Default::default();
        let t = Tensor::<B, 2>::random([300, 70], Distribution::Default, &device);
        assert_eq!(
            ordered_sum(t.clone()).into_data().to_vec::<f32>().unwrap(),
            t.sum().into_data().to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn large_sums_repeat_exactly_and_match_the_f64_total() {
        let device = Default::default();
        // Not a multiple of ROW, so the tail is summed too.
        let count = PARALLEL_SUM_ELEMENTS + 3 * ROW + 12_345;
        let values: Vec<f32> = (0..count)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let exact: f64 = values.iter().map(|&v| v as f64).sum();
        let t = Tensor::<B, 1>::from_floats(values.as_slice(), &device);
        let first = ordered_sum(t.clone()).into_scalar();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for _ in 0..8 {
            let again = pool.install(|| ordered_sum(t.clone()).into_scalar());
            assert_eq!(again.to_bits(), first.to_bits());
        }
        Tensor::<B, 1>::from_floats([first], &device)
            .into_data()
            .assert_approx_eq::<f32>(
                &Tensor::<B, 1>::from_floats([exact as f32], &device).into_data(),
                Tolerance::rel_abs(1e-5, 0.0),
            );
    }
}
