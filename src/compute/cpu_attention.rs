//! Causal attention on the CPU backend as one autodiff node.
//!
//! burn's op-by-op attention on the CPU writes `[batch, heads, seq, seq]` scores
//! several times in each direction (mask, max, exp, sum, divide and their gradients),
//! mostly through strided broadcasts: at seq 512 on the tiny preset that was about a
//! third of a training step. Here each (batch, head) pair is one task: its queries go
//! in blocks of [`ROWS`], each block is scored against only the keys it can see, the
//! softmax is taken in place, and the backward pass recomputes the probabilities from
//! each row's log-sum-exp (as FlashAttention does). Tasks write disjoint outputs and
//! each adds in a fixed order, so results do not depend on the number of threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::cpu_exp::{exp_in_place, with_exp, Exp};
use super::flex_values::{flex_primitive, seq_major, zeros, HostValues};

/// Queries per block: a block's scores (`ROWS x keys` f32) stay in cache at the
/// sequence lengths the CPU trains on, and blocks skip the keys in their future.
const ROWS: usize = 64;

/// Shapes of one call: q is `[batch, heads, seq, dim]`, k and v `[batch, kv_heads,
/// keys, dim]`, with the queries at the last `seq` of the `keys` positions. Each kv
/// head serves `heads / kv_heads` consecutive query heads.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    keys: usize,
    dim: usize,
}

impl Dims {
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dim as f32).sqrt()
    }

    /// Query blocks `(start, rows, visible keys)`.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let offset = self.keys - self.seq;
        (0..self.seq).step_by(ROWS).map(move |start| {
            let rows = ROWS.min(self.seq - start);
            (start, rows, offset + start + rows)
        })
    }

    /// Keys row `i` of the block starting at `start` may see.
    fn seen(&self, start: usize, i: usize) -> usize {
        self.keys - self.seq + start + i + 1
    }
}

/// A matrix in a slice: element (i, j) at `i * row + j * col`.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    data: &'a [f32],
    row: usize,
    col: usize,
}

impl<'a> Matrix<'a> {
    fn rows(data: &'a [f32], width: usize) -> Self {
        Matrix {
            data,
            row: width,
            col: 1,
        }
    }

    fn transposed(data: &'a [f32], width: usize) -> Self {
        Matrix {
            data,
            row: 1,
            col: width,
        }
    }

    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            assert!((rows - 1) * self.row + (cols - 1) * self.col < self.data.len());
        }
    }
}

/// `dst[m x n]` (rows of `width`) = `scale * lhs[m x k] . rhs[k x n]`, added to what
/// `dst` holds when `accumulate`. One thread, a fixed order of additions.
#[allow(clippy::too_many_arguments)]
fn product(
    dst: &mut [f32],
    width: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Matrix,
    rhs: Matrix,
    scale: f32,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    lhs.check(m, k);
    rhs.check(k, n);
    assert!((m - 1) * width + n <= dst.len());
    // SAFETY: the checks above keep every element gemm reads or writes inside its
    // slice; `dst` does not alias `lhs` or `rhs` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            width as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col as isize,
            lhs.row as isize,
            rhs.data.as_ptr(),
            rhs.col as isize,
            rhs.row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// One head's output and per-row log-sum-exp.
fn forward_head<E: Exp>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
    dims: Dims,
    scores: &mut Vec<f32>,
) {
    let dim = dims.dim;
    for (start, rows, visible) in dims.blocks() {
        scores.clear();
        scores.resize(rows * visible, 0.0);
        product(
            scores,
            visible,
            (rows, visible, dim),
            Matrix::rows(&q[start * dim..], dim),
            Matrix::transposed(k, dim),
            dims.scale(),
            false,
        );
        for (i, row) in scores.chunks_mut(visible).enumerate() {
            let (seen, future) = row.split_at_mut(dims.seen(start, i));
            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            seen.iter_mut().for_each(|x| *x -= max);
            exp_in_place::<E>(seen);
            let mut sum = 0.0;
            for x in seen.iter() {
                sum += *x;
            }
            let inverse = 1.0 / sum;
            seen.iter_mut().for_each(|x| *x *= inverse);
            future.fill(0.0);
            lse[start + i] = max + sum.ln();
        }
        product(
            &mut out[start * dim..],
            dim,
            (rows, dim, visible),
            Matrix::rows(scores, visible),
            Matrix::rows(v, dim),
            1.0,
            false,
        );
    }
}

/// Scratch for one head's backward pass.
#[derive(Default)]
struct BackwardScratch {
    probs: Vec<f32>,
    dprobs: Vec<f32>,
}

/// Outputs of one head's backward pass.
struct HeadGrads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

/// Inputs of one head's backward pass.
struct HeadInputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

fn backward_head<E: Exp>(x: HeadInputs, g: HeadGrads, dims: Dims, scratch: &mut BackwardScratch) {
    let dim = dims.dim;
    let scale = dims.scale();
    for (start, rows, visible) in dims.blocks() {
        let q_block = &x.q[start * dim..(start + rows) * dim];
        let dout_block = &x.dout[start * dim..(start + rows) * dim];
        let probs = &mut scratch.probs;
        probs.clear();
        probs.resize(rows * visible, 0.0);
        product(
            probs,
            visible,
            (rows, visible, dim),
            Matrix::rows(q_block, dim),
            Matrix::transposed(x.k, dim),
            scale,
            false,
        );
        for (i, row) in probs.chunks_mut(visible).enumerate() {
            let (seen, future) = row.split_at_mut(dims.seen(start, i));
            let lse = x.lse[start + i];
            seen.iter_mut().for_each(|s| *s -= lse);
            exp_in_place::<E>(seen);
            future.fill(0.0);
        }
        // dV += Pᵀ dO
        product(
            g.dv,
            dim,
            (visible, dim, rows),
            Matrix::transposed(probs, visible),
            Matrix::rows(dout_block, dim),
            1.0,
            true,
        );
        // dP = dO Vᵀ, then dS = P (dP - rowdot(dO, O)) scale in place.
        let dprobs = &mut scratch.dprobs;
        dprobs.clear();
        dprobs.resize(rows * visible, 0.0);
        product(
            dprobs,
            visible,
            (rows, visible, dim),
            Matrix::rows(dout_block, dim),
            Matrix::transposed(x.v, dim),
            1.0,
            false,
        );
        for (i, (ds, p)) in dprobs
            .chunks_mut(visible)
            .zip(probs.chunks(visible))
            .enumerate()
        {
            let row = (start + i) * dim;
            let row_dot: f32 = x.dout[row..row + dim]
                .iter()
                .zip(&x.out[row..row + dim])
                .map(|(a, b)| a * b)
                .sum();
            for (d, &p) in ds.iter_mut().zip(p) {
                *d = p * (*d - row_dot) * scale;
            }
        }
        // dQ = dS K, dK += dSᵀ Q
        product(
            &mut g.dq[start * dim..],
            dim,
            (rows, dim, visible),
            Matrix::rows(dprobs, visible),
            Matrix::rows(x.k, dim),
            1.0,
            false,
        );
        product(
            g.dk,
            dim,
            (visible, dim, rows),
            Matrix::transposed(dprobs, visible),
            Matrix::rows(q_block, dim),
            1.0,
            true,
        );
    }
}

/// The output and log-sum-exp of every head. Tasks are kv heads, each with the query
/// heads it serves.
fn forward<E: Exp>(q: &[f32], k: &[f32], v: &[f32], dims: Dims) -> (Vec<f32>, Vec<f32>) {
    let (seq, keys, dim, groups) = (dims.seq, dims.keys, dims.dim, dims.groups());
    let heads = dims.batch * dims.heads;
    let mut out = zeros(heads * seq * dim);
    let mut lse = zeros(heads * seq);
    out.par_chunks_mut(groups * seq * dim)
        .zip(lse.par_chunks_mut(groups * seq))
        .enumerate()
        .for_each_init(Vec::new, |scores, (kv, (out, lse))| {
            let kv_range = kv * keys * dim..(kv + 1) * keys * dim;
            let (k, v) = (&k[kv_range.clone()], &v[kv_range]);
            let outs = out.chunks_mut(seq * dim).zip(lse.chunks_mut(seq));
            for (g, (out, lse)) in outs.enumerate() {
                let h = kv * groups + g;
                let q = &q[h * seq * dim..(h + 1) * seq * dim];
                forward_head::<E>(q, k, v, out, lse, dims, scores);
            }
        });
    (out, lse)
}

/// Gradients of q, k and v. Tasks are kv heads: each adds its query heads'
/// contributions to its keys' and values' gradients in a fixed order.
fn backward<E: Exp>(state: &AttentionState, dout: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dims = state.dims;
    let (seq, keys, dim, groups) = (dims.seq, dims.keys, dims.dim, dims.groups());
    let heads = dims.batch * dims.heads;
    let kv_heads = dims.batch * dims.kv_heads;
    let mut dq = zeros(heads * seq * dim);
    let mut dk = zeros(kv_heads * keys * dim);
    let mut dv = zeros(kv_heads * keys * dim);
    dq.par_chunks_mut(groups * seq * dim)
        .zip(dk.par_chunks_mut(keys * dim))
        .zip(dv.par_chunks_mut(keys * dim))
        .enumerate()
        .for_each_init(BackwardScratch::default, |scratch, (kv, ((dq, dk), dv))| {
            let kv_range = kv * keys * dim..(kv + 1) * keys * dim;
            for (g, dq) in dq.chunks_mut(seq * dim).enumerate() {
                let h = kv * groups + g;
                let queries = h * seq * dim..(h + 1) * seq * dim;
                let inputs = HeadInputs {
                    q: &state.q[queries.clone()],
                    k: &state.k[kv_range.clone()],
                    v: &state.v[kv_range.clone()],
                    out: &state.out[queries.clone()],
                    lse: &state.lse[h * seq..(h + 1) * seq],
                    dout: &dout[queries],
                };
                let grads = HeadGrads {
                    dq,
                    dk: &mut *dk,
                    dv: &mut *dv,
                };
                backward_head::<E>(inputs, grads, dims, scratch);
            }
        });
    (dq, dk, dv)
}

/// Causal softmax attention, `softmax(Q Kᵀ / sqrt(d)) V`, on the CPU training backend,
/// with queries aligned to the last `seq` of the key positions. q: `[batch, heads,
/// seq, d]`, k and v: `[batch, kv_heads, keys, d]`, where `kv_heads` divides `heads`
/// and query head `h` reads kv head `h / (heads / kv_heads)` (HF's `repeat_kv`).
///
/// All three must be f32 (see [`supports`]).
pub fn causal_attention<C: CheckpointStrategy>(
    q: Tensor<Autodiff<Flex, C>, 4>,
    k: Tensor<Autodiff<Flex, C>, 4>,
    v: Tensor<Autodiff<Flex, C>, 4>,
) -> Tensor<Autodiff<Flex, C>, 4> {
    assert!(supports(&[q.dtype(), k.dtype(), v.dtype()]));
    let [batch, heads, seq, dim] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    assert_eq!(
        heads % kv_heads,
        0,
        "{heads} query heads over {kv_heads} kv heads"
    );
    let dims = Dims {
        batch,
        heads,
        kv_heads,
        seq,
        keys,
        dim,
    };
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let prepared = CpuAttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let (q, k, v) = (
        HostValues::new(q.primitive),
        HostValues::new(k.primitive),
        HostValues::new(v.primitive),
    );
    let (out, lse) = with_exp!(E => forward::<E>(&q, &k, &v, dims));
    // The model merges the heads next (`swap_dims(1, 2)` and a reshape): stored in
    // that order, the output is merged without a copy.
    let out = flex_primitive(out, [batch, heads, seq, dim]);
    let output = seq_major(out.clone());
    let output = match prepared {
        OpsKind::Tracked(prep) => {
            let state = AttentionState {
                dims,
                q,
                k,
                v,
                out: HostValues::new(out),
                lse,
            };
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// Whether [`causal_attention`] takes inputs of these dtypes: f32 only, the dtype of
/// CPU training.
pub fn supports(dtypes: &[DType]) -> bool {
    dtypes.iter().all(|&dtype| dtype == DType::F32)
}

#[derive(Debug)]
struct CpuAttentionBackward;

/// What the backward pass needs, on the host: inputs, output and the log-sum-exp of
/// each row. O(seq) per head beyond the inputs.
#[derive(Debug, Clone)]
struct AttentionState {
    dims: Dims,
    q: HostValues,
    k: HostValues,
    v: HostValues,
    out: HostValues,
    lse: Vec<f32>,
}

impl Backward<Flex, 3> for CpuAttentionBackward {
    type State = AttentionState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let dout = HostValues::new(grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let (dq, dk, dv) = with_exp!(E => backward::<E>(&state, &dout));
        let Dims {
            batch,
            heads,
            kv_heads,
            seq,
            keys,
            dim,
        } = state.dims;
        // q and k go back through RoPE, which reads rows; v's gradient goes back
        // through the head split, so it is stored in the split's order.
        let registered = [
            (node_q, flex_primitive(dq, [batch, heads, seq, dim])),
            (node_k, flex_primitive(dk, [batch, kv_heads, keys, dim])),
            (
                node_v,
                seq_major(flex_primitive(dv, [batch, kv_heads, keys, dim])),
            ),
        ];
        for (node, grad) in registered {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_queries_and_see_up_to_their_last_row() {
        let dims = Dims {
            batch: 1,
            heads: 1,
            kv_heads: 1,
            seq: 150,
            keys: 160,
            dim: 4,
        };
        let blocks: Vec<_> = dims.blocks().collect();
        assert_eq!(blocks, vec![(0, 64, 74), (64, 64, 138), (128, 22, 160)]);
        assert_eq!(dims.seen(0, 0), 11);
        assert_eq!(dims.seen(128, 21), 160);
    }
}
