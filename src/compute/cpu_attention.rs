//! Causal attention on the CPU backend as one autodiff node.
//!
//! burn's op-by-op attention on the CPU writes `[batch, heads, seq, seq]` scores
//! several times in each direction (mask, max, exp, sum, divide and their gradients),
//! mostly through strided broadcasts: at seq 512 on the tiny preset that was about a
//! third of a training step. Here each head's queries go in blocks of [`ROWS`], each
//! block one task: it is scored against only the keys it can see, the softmax is taken
//! in place, and the backward pass recomputes the probabilities from each row's
//! log-sum-exp (as FlashAttention does). Tasks write disjoint outputs, and the blocks'
//! terms of dK and dV are added in a fixed order, so results do not depend on the
//! number of threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::cpu_exp::{exp_in_place, with_exp, Exp};
use super::flex_values::{flex_primitive, seq_major, zeros, HostValues};
use super::kept_attention;
use burn_flex::FlexTensor;

/// Queries per block: a block's scores (`ROWS x keys` f32) stay in cache at the
/// sequence lengths the CPU trains on, and blocks skip the keys in their future.
const ROWS: usize = 64;

/// Shapes of one call: q is `[batch, heads, seq, dim]`, k and v `[batch, kv_heads,
/// keys, dim]`, with the queries at the last `seq` of the `keys` positions. Each kv
/// head serves `heads / kv_heads` consecutive query heads.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    keys: usize,
    dim: usize,
}

impl Dims {
    /// The shapes of q (`[batch, heads, seq, dim]`) and k.
    fn of([batch, heads, seq, dim]: [usize; 4], [_, kv_heads, keys, _]: [usize; 4]) -> Self {
        Dims {
            batch,
            heads,
            kv_heads,
            seq,
            keys,
            dim,
        }
    }

    /// `[batch, heads, seq, dim]`: q's shape, and the output's.
    fn q_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.seq, self.dim]
    }

    /// `[batch, kv_heads, keys, dim]`: k's and v's shape.
    fn kv_shape(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.keys, self.dim]
    }

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

/// `buffer` = `scale * block[rows x dim] . keys[visible x dim]ᵀ`, rows of `visible`.
fn scores_into(
    buffer: &mut Vec<f32>,
    (rows, visible, dim): (usize, usize, usize),
    block: &[f32],
    keys: &[f32],
    scale: f32,
) {
    buffer.clear();
    buffer.resize(rows * visible, 0.0);
    let (lhs, rhs) = (Matrix::rows(block, dim), Matrix::transposed(keys, dim));
    product(
        buffer,
        visible,
        (rows, visible, dim),
        lhs,
        rhs,
        scale,
        false,
    );
}

/// A block's terms of a key-side gradient: `dst[visible x dim]` = (or +=, when
/// `accumulate`) `scores[rows x visible]ᵀ . block[rows x dim]`.
fn key_terms(
    dst: &mut [f32],
    (visible, dim, rows): (usize, usize, usize),
    scores: &[f32],
    block: &[f32],
    accumulate: bool,
) {
    let (lhs, rhs) = (
        Matrix::transposed(scores, visible),
        Matrix::rows(block, dim),
    );
    product(dst, dim, (visible, dim, rows), lhs, rhs, 1.0, accumulate);
}

/// The output rows and log-sum-exp of one query block `(start, rows, visible)` of a
/// head (`q` the head's, `out` and `lse` the block's): what each block computes does
/// not depend on any other, so blocks may run in any order or at once.
#[allow(clippy::too_many_arguments)]
fn forward_block<E: Exp>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
    (start, rows, visible): (usize, usize, usize),
    dims: Dims,
    scores: &mut Vec<f32>,
) {
    let dim = dims.dim;
    scores_into(
        scores,
        (rows, visible, dim),
        &q[start * dim..],
        k,
        dims.scale(),
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
        lse[i] = max + sum.ln();
    }
    product(
        out,
        dim,
        (rows, dim, visible),
        Matrix::rows(scores, visible),
        Matrix::rows(v, dim),
        1.0,
        false,
    );
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

impl<'a> HeadInputs<'a> {
    /// Query head `h`'s inputs (with its kv head's keys and values) in `state`.
    fn of(state: &'a AttentionState, dout: &'a [f32], h: usize) -> Self {
        let dims = state.dims;
        let (seq, keys, dim) = (dims.seq, dims.keys, dims.dim);
        let kv = h / dims.groups();
        let kv_range = kv * keys * dim..(kv + 1) * keys * dim;
        let queries = h * seq * dim..(h + 1) * seq * dim;
        HeadInputs {
            q: &state.q[queries.clone()],
            k: &state.k[kv_range.clone()],
            v: &state.v[kv_range],
            out: &state.out[queries.clone()],
            lse: &state.lse[h * seq..(h + 1) * seq],
            dout: &dout[queries],
        }
    }
}

fn backward_head<E: Exp>(x: HeadInputs, g: HeadGrads, dims: Dims, scratch: &mut BackwardScratch) {
    let dim = dims.dim;
    for block in dims.blocks() {
        let (start, rows, _) = block;
        let grads = BlockGrads {
            dq: &mut g.dq[start * dim..(start + rows) * dim],
            dk: &mut *g.dk,
            dv: &mut *g.dv,
            accumulate: true,
        };
        backward_block::<E>(&x, grads, block, dims, scratch);
    }
}

/// Where one query block's backward pass writes: its rows of dQ, and the first
/// `visible` rows of dK and dV, added to what they hold when `accumulate` (each
/// addition rounds once, as gemm adds its product to its destination), else written.
struct BlockGrads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
    accumulate: bool,
}

/// One query block `(start, rows, visible)` of a head's backward pass (`x` the head's).
fn backward_block<E: Exp>(
    x: &HeadInputs,
    g: BlockGrads,
    (start, rows, visible): (usize, usize, usize),
    dims: Dims,
    scratch: &mut BackwardScratch,
) {
    let dim = dims.dim;
    let scale = dims.scale();
    let q_block = &x.q[start * dim..(start + rows) * dim];
    let dout_block = &x.dout[start * dim..(start + rows) * dim];
    let probs = &mut scratch.probs;
    scores_into(probs, (rows, visible, dim), q_block, x.k, scale);
    for (i, row) in probs.chunks_mut(visible).enumerate() {
        let (seen, future) = row.split_at_mut(dims.seen(start, i));
        let lse = x.lse[start + i];
        seen.iter_mut().for_each(|s| *s -= lse);
        exp_in_place::<E>(seen);
        future.fill(0.0);
    }
    // dV += Pᵀ dO
    key_terms(g.dv, (visible, dim, rows), probs, dout_block, g.accumulate);
    // dP = dO Vᵀ, then dS = P (dP - rowdot(dO, O)) scale in place.
    let dprobs = &mut scratch.dprobs;
    scores_into(dprobs, (rows, visible, dim), dout_block, x.v, 1.0);
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
        g.dq,
        dim,
        (rows, dim, visible),
        Matrix::rows(dprobs, visible),
        Matrix::rows(x.k, dim),
        1.0,
        false,
    );
    key_terms(g.dk, (visible, dim, rows), dprobs, q_block, g.accumulate);
}

/// The output and log-sum-exp of every head. Tasks are the query blocks of every head,
/// which are independent: a batch with few kv heads still keeps many cores busy.
fn forward<E: Exp>(q: &[f32], k: &[f32], v: &[f32], dims: Dims) -> (Vec<f32>, Vec<f32>) {
    let (seq, keys, dim, groups) = (dims.seq, dims.keys, dims.dim, dims.groups());
    let heads = dims.batch * dims.heads;
    let mut out = zeros(heads * seq * dim);
    let mut lse = zeros(heads * seq);
    let blocks: Vec<_> = dims.blocks().collect();
    out.par_chunks_mut(seq * dim)
        .zip(lse.par_chunks_mut(seq))
        .enumerate()
        .for_each(|(h, (out, lse))| {
            let kv_range = h / groups * keys * dim..(h / groups + 1) * keys * dim;
            let (k, v) = (&k[kv_range.clone()], &v[kv_range]);
            let q = &q[h * seq * dim..(h + 1) * seq * dim];
            out.par_chunks_mut(ROWS * dim)
                .zip(lse.par_chunks_mut(ROWS))
                .zip(blocks.par_iter())
                .for_each_init(Vec::new, |scores, ((out, lse), &block)| {
                    forward_block::<E>(q, k, v, out, lse, block, dims, scores)
                });
        });
    (out, lse)
}

/// At most this many bytes of per-block dK and dV terms before their ordered sum; past
/// it (long sequences) the backward pass runs per kv head, with the same result.
const BLOCK_PARTIAL_BYTES: usize = 256 << 20;

/// Gradients of q, k and v. Tasks are the query blocks of every head: each writes its
/// rows of dQ and its own dK and dV terms, which are then added per key row in the
/// order [`backward_by_kv_head`] adds them (query heads, then blocks), so both give
/// the same bits.
fn backward<E: Exp>(state: &AttentionState, dout: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dims = state.dims;
    let (seq, keys, dim, groups) = (dims.seq, dims.keys, dims.dim, dims.groups());
    let heads = dims.batch * dims.heads;
    let blocks: Vec<_> = dims.blocks().collect();
    let per_head = blocks.iter().map(|&(_, _, visible)| visible).sum::<usize>() * dim;
    // gemm adds a product over one or two rows to its destination term by term (its
    // `gevv` path), and a product one column wide likewise (`gemv`), not as one
    // rounded sum: a last block that short, or heads of width 1, would not give the
    // per-kv-head pass's bits from separate terms.
    let last_rows = blocks.last().map_or(ROWS, |&(_, rows, _)| rows);
    let too_big = 2 * heads * per_head * std::mem::size_of::<f32>() > BLOCK_PARTIAL_BYTES;
    if too_big || last_rows <= 2 || dim < 2 {
        return backward_by_kv_head::<E>(state, dout);
    }
    let mut dq = zeros(heads * seq * dim);
    let mut terms_k = zeros(heads * per_head);
    let mut terms_v = zeros(heads * per_head);
    dq.par_chunks_mut(seq * dim)
        .zip(terms_k.par_chunks_mut(per_head))
        .zip(terms_v.par_chunks_mut(per_head))
        .enumerate()
        .for_each(|(h, ((dq, terms_k), terms_v))| {
            let inputs = HeadInputs::of(state, dout, h);
            let (mut dq, mut terms_k, mut terms_v) = (dq, terms_k, terms_v);
            let mut tasks = Vec::with_capacity(blocks.len());
            for &block in &blocks {
                let (_, rows, visible) = block;
                let (dq_block, rest) = std::mem::take(&mut dq).split_at_mut(rows * dim);
                dq = rest;
                let (dk, rest) = std::mem::take(&mut terms_k).split_at_mut(visible * dim);
                terms_k = rest;
                let (dv, rest) = std::mem::take(&mut terms_v).split_at_mut(visible * dim);
                terms_v = rest;
                let grads = BlockGrads {
                    dq: dq_block,
                    dk,
                    dv,
                    accumulate: false,
                };
                tasks.push((block, grads));
            }
            tasks
                .into_par_iter()
                .for_each_init(BackwardScratch::default, |scratch, (block, grads)| {
                    backward_block::<E>(&inputs, grads, block, dims, scratch)
                });
        });
    let kv_heads = dims.batch * dims.kv_heads;
    let mut dk = zeros(kv_heads * keys * dim);
    let mut dv = zeros(kv_heads * keys * dim);
    dk.par_chunks_mut(keys * dim)
        .zip(dv.par_chunks_mut(keys * dim))
        .enumerate()
        .for_each(|(kv, (dk, dv))| {
            dk.par_chunks_mut(ROWS * dim)
                .zip(dv.par_chunks_mut(ROWS * dim))
                .enumerate()
                .for_each(|(chunk, (dk, dv))| {
                    let first = chunk * ROWS;
                    let rows = dk.len() / dim;
                    for h in kv * groups..(kv + 1) * groups {
                        let mut offset = h * per_head;
                        for &(_, _, visible) in &blocks {
                            if visible > first {
                                let len = (visible.min(first + rows) - first) * dim;
                                let at = offset + first * dim;
                                add_into(&mut dk[..len], &terms_k[at..at + len]);
                                add_into(&mut dv[..len], &terms_v[at..at + len]);
                            }
                            offset += visible * dim;
                        }
                    }
                });
        });
    (dq, dk, dv)
}

/// `sum += terms`, element by element.
fn add_into(sum: &mut [f32], terms: &[f32]) {
    for (s, t) in sum.iter_mut().zip(terms) {
        *s += *t;
    }
}

/// Gradients of q, k and v. Tasks are kv heads: each adds its query heads'
/// contributions to its keys' and values' gradients in a fixed order.
fn backward_by_kv_head<E: Exp>(
    state: &AttentionState,
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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
            for (g, dq) in dq.chunks_mut(seq * dim).enumerate() {
                let inputs = HeadInputs::of(state, dout, kv * groups + g);
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
    let dims = Dims::of(q.dims(), k.dims());
    let (heads, kv_heads) = (dims.heads, dims.kv_heads);
    assert_eq!(
        heads % kv_heads,
        0,
        "{heads} query heads over {kv_heads} kv heads"
    );
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
    // A layer rerun by per-layer recomputation takes its first pass's output
    // (`kept_attention`): the same values, without computing them again.
    let kept = match prepared {
        OpsKind::Tracked(_) => kept_attention::take(|kept: &Kept| kept.0 == dims),
        OpsKind::UnTracked(_) => None,
    };
    let (out, lse) = match kept {
        Some((_, out, lse)) => (out, lse),
        None => {
            let (out, lse) = with_exp!(E => forward::<E>(&q, &k, &v, dims));
            // The model merges the heads next (`swap_dims(1, 2)` and a reshape): stored
            // in that order, the output is merged without a copy.
            (flex_primitive(out, dims.q_shape()), lse)
        }
    };
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
        OpsKind::UnTracked(prep) => {
            if kept_attention::keeping() {
                kept_attention::offer::<Kept>((dims, out, lse));
            }
            prep.finish(output)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// What a layer's first pass keeps for its rerun: the shapes, the output in head order
/// and the log-sum-exp of each row.
type Kept = (Dims, FlexTensor, Vec<f32>);

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
        let (queries, keys) = (state.dims.q_shape(), state.dims.kv_shape());
        // q and k go back through RoPE, which reads rows; v's gradient goes back
        // through the head split, so it is stored in the split's order.
        let registered = [
            (node_q, flex_primitive(dq, queries)),
            (node_k, flex_primitive(dk, keys)),
            (node_v, seq_major(flex_primitive(dv, keys))),
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
    fn a_rerun_that_takes_the_kept_output_has_the_same_gradients() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let make = |heads: usize, salt: usize| {
            let values: Vec<f32> = (0..2 * heads * 70 * 8)
                .map(|i| ((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0 - 1.0)
                .collect();
            Tensor::<Flex, 4>::from_data(
                burn::tensor::TensorData::new(values, [2, heads, 70, 8]),
                &device,
            )
        };
        let (q0, k0, v0, weight) = (make(4, 1), make(2, 2), make(2, 3), make(4, 4));
        let tracked = || {
            let leaf = |t: &Tensor<Flex, 4>| Tensor::<B, 4>::from_inner(t.clone()).require_grad();
            let (q, k, v) = (leaf(&q0), leaf(&k0), leaf(&v0));
            let out = causal_attention(q.clone(), k.clone(), v.clone());
            let grads = (out * Tensor::from_inner(weight.clone())).sum().backward();
            [q.grad(&grads), k.grad(&grads), v.grad(&grads)].map(|g| g.unwrap().into_data())
        };
        let untracked = |t: &Tensor<Flex, 4>| Tensor::<B, 4>::from_inner(t.clone());
        let first_pass = || causal_attention(untracked(&q0), untracked(&k0), untracked(&v0));
        let first = kept_attention::assert_rerun_takes_the_kept_output(tracked, first_pass);
        // The first pass's output is the attention's own.
        assert_eq!(first.into_data(), first_pass().into_data());
    }

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

    /// The backward pass by query blocks adds the same terms in the same order as the
    /// one by kv heads, so it gives the same bits (both are used: the second past
    /// [`BLOCK_PARTIAL_BYTES`] or with a last block of one or two rows). Shapes with
    /// grouped queries, partial last blocks and keys before the queries.
    #[test]
    fn the_backward_by_query_blocks_equals_the_one_by_kv_heads_bit_for_bit() {
        use super::super::cpu_exp::Polynomial;
        let values = |len: usize, salt: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0 - 1.0)
                .collect()
        };
        let host =
            |values: Vec<f32>, shape: [usize; 4]| HostValues::new(flex_primitive(values, shape));
        for dims in [
            Dims::of([2, 6, 150, 8], [2, 2, 150, 8]),
            Dims::of([1, 4, 64, 16], [1, 4, 64, 16]),
            Dims::of([1, 4, 131, 8], [1, 1, 142, 8]),
            Dims::of([1, 4, 130, 8], [1, 1, 141, 8]),
        ] {
            let (queries, keys) = (dims.q_shape(), dims.kv_shape());
            let (q, k, v) = (
                values(queries.iter().product(), 1),
                values(keys.iter().product(), 2),
                values(keys.iter().product(), 3),
            );
            let dout = values(queries.iter().product(), 4);
            let (out, lse) = forward::<Polynomial>(&q, &k, &v, dims);
            let state = AttentionState {
                dims,
                q: host(q, queries),
                k: host(k, keys),
                v: host(v, keys),
                out: host(out, queries),
                lse,
            };
            let bits = |(dq, dk, dv): (Vec<f32>, Vec<f32>, Vec<f32>)| -> Vec<u32> {
                dq.iter()
                    .chain(&dk)
                    .chain(&dv)
                    .map(|x| x.to_bits())
                    .collect()
            };
            let by_blocks = bits(backward::<Polynomial>(&state, &dout));
            let by_kv_heads = bits(backward_by_kv_head::<Polynomial>(&state, &dout));
            let first = by_blocks.iter().zip(&by_kv_heads).position(|(a, b)| a != b);
            assert_eq!(
                by_blocks, by_kv_heads,
                "{dims:?}: first difference at {first:?}"
            );
            assert!(
                by_blocks.iter().any(|&b| b != 0),
                "{dims:?}: gradients are not all zero"
            );
        }
    }
}
