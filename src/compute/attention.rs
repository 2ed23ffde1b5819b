//! Causal attention for training that keeps O(seq) memory per layer instead of
//! O(seq²).
//!
//! burn 0.21's autodiff backend has no attention backward of its own: it differentiates
//! `softmax(Q Kᵀ) V` op by op and so keeps several `[batch, heads, seq, seq]` tensors
//! per layer until the backward pass (at seq 2048 that is gigabytes per layer, more
//! than the rest of the model). Here attention is one autodiff node in the manner of
//! FlashAttention: the forward pass runs over blocks of queries, keeps only the output
//! and the log-sum-exp of each row, and the backward pass recomputes each block's
//! probabilities from them. The blocks are ordinary tensor ops on the inner backend
//! (big batched matmuls), not a fused kernel; causal blocks skip the keys they cannot
//! see, which halves the work.
//!
//! This blocked version serves the CUDA backends where the flash kernels do not
//! (`super::kernels`); the CPU training backends run `super::cpu_attention`, the same
//! scheme written per head on the host.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorPrimitive};

use super::gemm::{matmul, matmul_f32};
use super::kernels::Kernels;

/// Scores of one block are at most this many elements (512 MiB in f32), which bounds
/// the transient memory of a block whatever the sequence length.
pub const BLOCK_ELEMENTS: usize = 1 << 27;

/// Causal attention op by op, for the layers the fused kernels do not serve: scores
/// soft-capped as `c tanh(s / c)` (Gemma 2) and keys hidden beyond a sliding window
/// (Gemma 2 and 3), in the order of transformers' eager attention: scores in the
/// inputs' dtype, scaled and capped there, the softmax in f32. Both products go
/// through [`matmul`], so on CUDA they reach cuBLAS in both passes (f32 without
/// TF32, where burn's own kernel would round the operands). q: `[batch, heads, seq,
/// d]`, k and v: `[batch, heads, keys, d]` (kv heads repeated), with the queries at
/// the last `seq` of the `keys` positions.
pub fn masked_attention<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    softcap: Option<f64>,
    window: Option<usize>,
) -> Tensor<B, 4> {
    let [batch, heads, seq, _] = q.dims();
    let keys = k.dims()[2];
    let dtype = q.dtype();
    let device = q.device();
    let scores = matmul(q, k.swap_dims(2, 3)) * scale;
    let scores = match softcap {
        Some(cap) => (scores / cap).tanh() * cap,
        None => scores,
    };
    let hidden = hidden_keys::<B>(seq, keys, window, &device)
        .reshape([1, 1, seq, keys])
        .expand([batch, heads, seq, keys]);
    let scores = scores
        .cast(FloatDType::F32)
        .mask_fill(hidden, f32::NEG_INFINITY);
    let probs = burn::tensor::activation::softmax(scores, 3).cast(dtype);
    matmul(probs, v)
}

/// `[seq, keys]`, true where query `q` (at position `keys - seq + q`) may not see key
/// `k`: a later key, or one `window` or more positions back.
fn hidden_keys<B: Backend>(
    seq: usize,
    keys: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 2, burn::tensor::Bool> {
    let offset = keys - seq;
    let values: Vec<bool> = (0..seq)
        .flat_map(|q| {
            (0..keys).map(move |k| k > q + offset || window.is_some_and(|w| q + offset >= k + w))
        })
        .collect();
    Tensor::from_data(burn::tensor::TensorData::new(values, [seq, keys]), device)
}

/// x: `[batch, kv_heads, t, head_dim]` -> `[batch, kv_heads * groups, t, head_dim]`, each
/// kv head repeated for the `groups` query heads that share it (HF's `repeat_kv`).
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv_heads, t, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, groups, t, head_dim])
        .reshape([batch, kv_heads * groups, t, head_dim])
}

/// The blocked attention as one autodiff node over `I`, with blocks of at most
/// `block_elements` scores. Public for tests that compare it with burn's op-by-op
/// gradients on the CPU.
pub fn blocked_attention_autodiff<I: Kernels, C: CheckpointStrategy>(
    q: Tensor<Autodiff<I, C>, 4>,
    k: Tensor<Autodiff<I, C>, 4>,
    v: Tensor<Autodiff<I, C>, 4>,
    block_elements: usize,
) -> Tensor<Autodiff<I, C>, 4> {
    let q = q.into_primitive().tensor();
    let k = k.into_primitive().tensor();
    let v = v.into_primitive().tensor();
    let inner = |p: I::FloatTensorPrimitive| -> Tensor<I, 4> {
        Tensor::from_primitive(TensorPrimitive::Float(p))
    };
    let (q_in, k_in, v_in) = (
        inner(q.primitive.clone()),
        inner(k.primitive.clone()),
        inner(v.primitive.clone()),
    );
    let prepared = BlockedAttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let output = match prepared {
        OpsKind::Tracked(prep) => {
            let (out, lse) = forward(&q_in, &k_in, &v_in, block_elements);
            let state = AttentionState {
                block_elements,
                q: q_in.into_primitive().tensor(),
                k: k_in.into_primitive().tensor(),
                v: v_in.into_primitive().tensor(),
                out: out.clone().into_primitive().tensor(),
                lse: lse.into_primitive().tensor(),
            };
            prep.finish(state, out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = forward(&q_in, &k_in, &v_in, block_elements);
            prep.finish(out.into_primitive().tensor())
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct BlockedAttentionBackward;

/// What the backward pass needs: the inputs, the output and each row's log-sum-exp
/// (`[batch, heads, seq, 1]`, f32): O(seq) per layer.
#[derive(Debug, Clone)]
struct AttentionState<I: Backend> {
    block_elements: usize,
    q: I::FloatTensorPrimitive,
    k: I::FloatTensorPrimitive,
    v: I::FloatTensorPrimitive,
    out: I::FloatTensorPrimitive,
    lse: I::FloatTensorPrimitive,
}

impl<I: Kernels> Backward<I, 3> for BlockedAttentionBackward {
    type State = AttentionState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad_out: Tensor<I, 4> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<I>(&ops.node)));
        let wrap = |p: I::FloatTensorPrimitive| -> Tensor<I, 4> {
            Tensor::from_primitive(TensorPrimitive::Float(p))
        };
        let state = ops.state;
        let (dq, dk, dv) = backward(
            &wrap(state.q),
            &wrap(state.k),
            &wrap(state.v),
            &wrap(state.out),
            &wrap(state.lse),
            grad_out,
            state.block_elements,
        );
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<I>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// Query blocks `[start, end)` and, for each, how many keys it can see.
fn blocks(
    batch: usize,
    heads: usize,
    seq: usize,
    keys: usize,
    budget: usize,
) -> Vec<(usize, usize, usize)> {
    let per_row = (batch * heads * keys).max(1);
    let largest = (budget / per_row).clamp(16, seq.max(16));
    // As many blocks as the budget needs, of equal size: a short last block would cost
    // a block's launches for few rows, and equal blocks skip more of the causal
    // triangle than full ones plus a remainder.
    let count = seq.div_ceil(largest).max(1);
    let size = seq.div_ceil(count).max(1);
    let offset = keys - seq;
    (0..seq)
        .step_by(size)
        .map(|start| {
            let end = (start + size).min(seq);
            (start, end, offset + end)
        })
        .collect()
}

/// `[1, 1, rows, visible]` of 0 where query `offset + start + i` may see key `j` and
/// -inf where `j` is in its future.
fn causal_bias<I: Kernels>(
    start: usize,
    end: usize,
    offset: usize,
    visible: usize,
    device: &I::Device,
) -> Tensor<I, 4> {
    let rows = Tensor::<I, 1, Int>::arange((offset + start) as i64..(offset + end) as i64, device)
        .reshape([end - start, 1]);
    let cols = Tensor::<I, 1, Int>::arange(0..visible as i64, device).reshape([1, visible]);
    let future = cols.greater(rows);
    Tensor::<I, 2>::zeros([end - start, visible], (device, DType::F32))
        .mask_fill(future, f32::NEG_INFINITY)
        .reshape([1, 1, end - start, visible])
}

/// f32 scores of one query block against its visible keys, masked.
fn block_scores<I: Kernels>(
    q_block: &Tensor<I, 4>,
    k_visible: &Tensor<I, 4>,
    bias: Tensor<I, 4>,
    scale: f64,
) -> Tensor<I, 4> {
    matmul_f32(q_block.clone(), k_visible.clone().swap_dims(2, 3), scale) + bias
}

/// Returns the output (input dtype) and the log-sum-exp of each row (f32).
fn forward<I: Kernels>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    v: &Tensor<I, 4>,
    budget: usize,
) -> (Tensor<I, 4>, Tensor<I, 4>) {
    let [batch, heads, seq, head_dim] = q.dims();
    let keys = k.dims()[2];
    let dtype: DType = q.dtype();
    let device = q.device();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outputs = Vec::new();
    let mut lses = Vec::new();
    for (start, end, visible) in blocks(batch, heads, seq, keys, budget) {
        let q_block = q.clone().narrow(2, start, end - start);
        let k_visible = k.clone().narrow(2, 0, visible);
        let v_visible = v.clone().narrow(2, 0, visible);
        let bias = causal_bias::<I>(start, end, keys - seq, visible, &device);
        let scores = block_scores(&q_block, &k_visible, bias, scale);
        let row_max = scores.clone().max_dim(3);
        let weights = (scores - row_max.clone()).exp();
        let row_sum = weights.clone().sum_dim(3);
        let context = matmul_f32(weights.cast(dtype), v_visible, 1.0) / row_sum.clone();
        outputs.push(context.cast(dtype));
        lses.push(row_max + row_sum.log());
    }
    (Tensor::cat(outputs, 2), Tensor::cat(lses, 2))
}

/// Gradients of q, k, v from the output's gradient, recomputing each block's
/// probabilities from the saved log-sum-exp.
fn backward<I: Kernels>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    v: &Tensor<I, 4>,
    out: &Tensor<I, 4>,
    lse: &Tensor<I, 4>,
    grad_out: Tensor<I, 4>,
    budget: usize,
) -> (Tensor<I, 4>, Tensor<I, 4>, Tensor<I, 4>) {
    let [batch, heads, seq, head_dim] = q.dims();
    let keys = k.dims()[2];
    let dtype: DType = q.dtype();
    let device = q.device();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let grad_out = grad_out.cast(dtype);
    // D_i = sum_j dO_ij O_ij, the softmax backward's row term.
    let row_dot =
        (grad_out.clone().cast(FloatDType::F32) * out.clone().cast(FloatDType::F32)).sum_dim(3);
    let mut dq_blocks = Vec::new();
    let mut dk = Tensor::<I, 4>::zeros([batch, heads, keys, head_dim], (&device, DType::F32));
    let mut dv = Tensor::<I, 4>::zeros([batch, heads, keys, head_dim], (&device, DType::F32));
    for (start, end, visible) in blocks(batch, heads, seq, keys, budget) {
        let rows = end - start;
        let q_block = q.clone().narrow(2, start, rows);
        let do_block = grad_out.clone().narrow(2, start, rows);
        let k_visible = k.clone().narrow(2, 0, visible);
        let v_visible = v.clone().narrow(2, 0, visible);
        let bias = causal_bias::<I>(start, end, keys - seq, visible, &device);
        let scores = block_scores(&q_block, &k_visible, bias, scale);
        let probs = (scores - lse.clone().narrow(2, start, rows)).exp();
        let probs_low = probs.clone().cast(dtype);
        let dv_part = matmul_f32(probs_low.swap_dims(2, 3), do_block.clone(), 1.0);
        let dprobs = matmul_f32(do_block, v_visible.swap_dims(2, 3), 1.0);
        let dscores = (probs * (dprobs - row_dot.clone().narrow(2, start, rows)))
            .mul_scalar(scale)
            .cast(dtype);
        dq_blocks.push(matmul(dscores.clone(), k_visible));
        let dk_part = matmul_f32(dscores.swap_dims(2, 3), q_block, 1.0);
        let range = [0..batch, 0..heads, 0..visible, 0..head_dim];
        dk = dk
            .clone()
            .slice_assign(range.clone(), dk.slice(range.clone()) + dk_part);
        dv = dv
            .clone()
            .slice_assign(range.clone(), dv.slice(range) + dv_part);
    }
    (Tensor::cat(dq_blocks, 2), dk.cast(dtype), dv.cast(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Distribution, Tolerance};

    type Inner = burn::backend::Flex;
    type B = Autodiff<Inner>;

    /// Blocks tile the queries in order, as few as the budget allows, of sizes that
    /// differ by at most one row, each seeing the keys up to its last query.
    #[test]
    fn query_blocks_are_equal_and_as_few_as_the_budget_allows() {
        // smol-135m's shape: 8 x 9 heads x 2048 keys a row, 2^27 scores a block.
        let (batch, heads, seq) = (8, 9, 2048);
        let blocks = blocks(batch, heads, seq, seq, 1 << 27);
        let largest = (1usize << 27) / (batch * heads * seq);
        assert_eq!(blocks.len(), seq.div_ceil(largest));
        assert_eq!(blocks[0].0, 0);
        assert_eq!(blocks.last().unwrap().1, seq);
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
        let sizes: Vec<usize> = blocks.iter().map(|(start, end, _)| end - start).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        assert!(sizes.iter().all(|&size| size <= largest));
        for (_, end, visible) in &blocks {
            assert_eq!(visible, end);
        }
        // Cached keys before the queries are visible to every block.
        let with_cache = super::blocks(1, 1, 10, 14, 16 * 14);
        assert!(with_cache
            .iter()
            .all(|(_, end, visible)| *visible == end + 4));
    }

    fn check(batch: usize, heads: usize, seq: usize, keys: usize, head_dim: usize, budget: usize) {
        check_against_burn(batch, (heads, heads), seq, keys, head_dim, |q, k, v| {
            blocked_attention_autodiff::<Inner, NoCheckpointing>(q, k, v, budget)
        });
    }

    /// `attend`'s output and its gradients for q, k and v against burn's op-by-op
    /// attention, with `heads` query heads over `kv_heads` kv heads (repeated for burn).
    fn check_against_burn(
        batch: usize,
        (heads, kv_heads): (usize, usize),
        seq: usize,
        keys: usize,
        head_dim: usize,
        attend: impl Fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
    ) {
        let device = Default::default();
        let make = |heads: usize, len: usize| {
            Tensor::<Inner, 4>::random(
                [batch, heads, len, head_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        };
        let (q0, k0, v0) = (make(heads, seq), make(kv_heads, keys), make(kv_heads, keys));
        let weight = make(heads, seq);
        let run = |blocked: bool| {
            let q = Tensor::<B, 4>::from_inner(q0.clone()).require_grad();
            let k = Tensor::<B, 4>::from_inner(k0.clone()).require_grad();
            let v = Tensor::<B, 4>::from_inner(v0.clone()).require_grad();
            let out = if blocked {
                attend(q.clone(), k.clone(), v.clone())
            } else {
                let options = AttentionModuleOptions {
                    scale: None,
                    softcap: None,
                    is_causal: true,
                };
                let groups = heads / kv_heads;
                burn::tensor::module::attention(
                    q.clone(),
                    repeat_kv(k.clone(), groups),
                    repeat_kv(v.clone(), groups),
                    None,
                    None,
                    options,
                )
            };
            // A weighted sum so that every output element has its own gradient.
            let loss = (out.clone() * Tensor::from_inner(weight.clone())).sum();
            let grads = loss.backward();
            let grad = |t: &Tensor<B, 4>| t.grad(&grads).map(|g| g.into_data());
            (out.inner().into_data(), grad(&q), grad(&k), grad(&v))
        };
        let (out_a, dq_a, dk_a, dv_a) = run(true);
        let (out_b, dq_b, dk_b, dv_b) = run(false);
        let tolerance = Tolerance::<f32>::absolute(1e-4);
        out_a.assert_approx_eq::<f32>(&out_b, tolerance);
        for (a, b) in [(dq_a, dq_b), (dk_a, dk_b), (dv_a, dv_b)] {
            a.expect("gradient")
                .assert_approx_eq::<f32>(&b.expect("gradient"), tolerance);
        }
    }

    #[test]
    fn blocked_attention_matches_burns_attention_and_its_gradients() {
        check(2, 3, 17, 17, 8, BLOCK_ELEMENTS);
    }

    #[test]
    fn blocked_attention_matches_with_cached_keys_before_the_queries() {
        check(1, 2, 5, 12, 4, BLOCK_ELEMENTS);
    }

    #[test]
    fn blocked_attention_matches_across_several_query_blocks() {
        // 16 rows of 40 keys a block: three blocks, the last one short.
        assert_eq!(blocks(1, 1, 40, 40, 16 * 40).len(), 3);
        check(1, 1, 40, 40, 4, 16 * 40);
        check(2, 2, 33, 45, 4, 16 * 45 * 4);
    }

    #[test]
    fn cpu_attention_matches_burns_attention_and_its_gradients() {
        let cpu = super::super::cpu_attention::causal_attention;
        check_against_burn(2, (3, 3), 17, 17, 8, cpu);
        // Cached keys before the queries.
        check_against_burn(1, (2, 2), 5, 12, 4, cpu);
        // Three query blocks, the last one short, and more keys than queries.
        check_against_burn(1, (2, 2), 150, 160, 8, cpu);
        // Grouped kv heads: two batches of six query heads over two kv heads.
        check_against_burn(2, (6, 2), 70, 70, 4, cpu);
    }

    #[test]
    fn the_cpu_training_backend_takes_the_fused_path() {
        assert!(<B as Kernels>::fused_attention());
        assert!(!<Inner as Kernels>::fused_attention());
    }
}
