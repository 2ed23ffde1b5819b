//! The Llama-family causal language model (Llama, Qwen2, Mistral, and the families
//! built like it: Qwen3, Phi-3, Gemma 2 and 3): embeddings, RMSNorm, rotary embeddings
//! in HF's rotate-half layout, grouped-query attention (graft's fused causal kernel for
//! plain layers, op by op for sliding-window masks and soft-capped scores),
//! SwiGLU or GeGLU MLP, tied or separate `lm_head`, the masked next-token loss, and a
//! KV cache for generation.
//!
//! The family differences are options of the one model, set from the config:
//! per-head q/k norms (Qwen3, Gemma 3), fused `qkv_proj`/`gate_up_proj` (Phi-3), and
//! Gemma's `(1 + w)` norms, scaled embedding, norms around both sublayers, scaled and
//! soft-capped attention scores and soft-capped logits.
//!
//! Struct fields are named like the Hugging Face modules so that a parameter's module
//! path is its checkpoint key (`model.layers.0.self_attn.q_proj.weight`).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::compute::kernels::Kernels;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, DType, FloatDType, Int, Tensor, TensorData};

use super::config::{Activation, ModelConfig, RopeConfig};
use super::lora::{Linear, LoraConfig};
use crate::compute::attention::{masked_attention, repeat_kv};
use crate::compute::reduce::ordered_sum;

/// Token embedding table.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[vocab, hidden]` (same layout as HF).
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// ids: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        embedding(self.weight.val(), ids)
    }
}

/// Root-mean-square norm: `x / sqrt(mean(x^2) + eps) * weight`, or Gemma's
/// `* (1 + weight)`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]` (or `[head_dim]` for the per-head q/k norms)
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
    /// Gemma: the stored weight is the offset from one.
    #[module(skip)]
    pub plus_one: bool,
}

impl<B: Kernels> RmsNorm<B> {
    /// x: `[..., hidden]` -> `[..., hidden]`, normed over the last dimension: one
    /// fused node where the backend has one ([`Kernels::rms_norm`]), else op by op.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match B::rms_norm(x, self.weight.val(), self.eps, self.plus_one) {
            Ok(normed) => normed,
            Err((x, _)) => self.forward_op_by_op(x),
        }
    }
}

impl<B: Backend> RmsNorm<B> {
    /// [`RmsNorm::forward`] op by op, in the input's dtype. transformers takes the mean of squares in f32 for a bf16
    /// base. Done so here, it cost about 3% of llama-1b's speed and 8% of smol-135m's
    /// on the H200 (2026-11-28, two calls apart), because burn's CUDA fusion (0.21)
    /// panics fusing the cast into `mean_dim` at the fixtures' hidden size of 64, which
    /// left a product with a ones vector for the mean. bf16 parity passes without it.
    pub fn forward_op_by_op<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        let weight = self.weight.val();
        let weight = if self.plus_one { weight + 1.0 } else { weight };
        normed * weight.unsqueeze::<D>()
    }
}

/// cos and sin of the rotary angles for positions `offset..offset + seq`, each
/// `[1, 1, seq, head_dim]` with the frequencies repeated over both halves, as HF's
/// `cat((freqs, freqs), -1)`. Computed in f64 and rounded once.
pub fn rope_tables<B: Backend>(
    rope: &RopeConfig,
    head_dim: usize,
    offset: usize,
    seq: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let inv_freq = rope.inv_freq(head_dim);
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    for position in offset..offset + seq {
        for i in 0..head_dim {
            // HF computes the angle in f32 (inv_freq f32 times position f32).
            let angle = (inv_freq[i % half] as f32 * position as f32) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let shape = [1, 1, seq, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// x: `[batch, heads, seq, head_dim]` rotated as HF's `x * cos + rotate_half(x) * sin`,
/// where `rotate_half([x1, x2]) = [-x2, x1]` over the two halves of head_dim.
fn apply_rope<B: Kernels>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    // One node where the backend has it (the same values, bit for bit).
    let x = match B::rope(x, cos, sin) {
        Ok(rotated) => return rotated,
        Err(x) => x,
    };
    let head_dim = x.dims()[3];
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Keys and values of one layer for the positions seen so far.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[batch, kv_heads, past, head_dim]`, after RoPE.
    pub key: Tensor<B, 4>,
    /// `[batch, kv_heads, past, head_dim]`
    pub value: Tensor<B, 4>,
}

/// KV cache for incremental decoding: one entry per decoder layer.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<LayerCache<B>>>,
    /// Number of positions already in the cache.
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            len: 0,
        }
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `None` where `qkv_proj` holds q, k and v together.
    pub q_proj: Option<Linear<B>>,
    pub k_proj: Option<Linear<B>>,
    pub v_proj: Option<Linear<B>>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub sliding_window: Option<usize>,
    /// Phi-3: `[hidden] -> [q_dim + 2 kv_dim]`, q then k then v.
    pub qkv_proj: Option<Linear<B>>,
    /// Qwen3, Gemma 3: RMSNorm over each head of q and k, before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    /// Score scale where it is not `head_dim^-1/2` (Gemma's `query_pre_attn_scalar`).
    #[module(skip)]
    pub scale: Option<f64>,
    /// Gemma 2: scores capped as `c * tanh(s / c)` before the mask.
    #[module(skip)]
    pub softcap: Option<f64>,
}

impl<B: Kernels> Attention<B> {
    /// x: `[batch, seq, hidden]` -> q `[batch, seq, q_dim]`, k and v `[batch, seq, kv_dim]`.
    fn project_qkv(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
        match (&self.qkv_proj, &self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(qkv), ..) => {
                let q_dim = self.num_heads * self.head_dim;
                let kv_dim = self.num_kv_heads * self.head_dim;
                let fused = qkv.forward(x);
                (
                    fused.clone().narrow(2, 0, q_dim),
                    fused.clone().narrow(2, q_dim, kv_dim),
                    fused.narrow(2, q_dim + kv_dim, kv_dim),
                )
            }
            (None, Some(q), Some(k), Some(v)) => {
                if [q, k, v].iter().all(|p| p.fused_over_rows()) {
                    let [q, k, v] = on_shared_rows(x, [q, k, v]);
                    return (q, k, v);
                }
                (q.forward(x.clone()), k.forward(x.clone()), v.forward(x))
            }
            _ => unreachable!("an attention is built with qkv_proj or all of q/k/v_proj"),
        }
    }

    /// x: `[batch, seq, hidden]`, cos/sin: `[1, 1, seq, head_dim]` -> `[batch, seq, hidden]`.
    /// With a cache, the new keys and values are appended and attention covers
    /// `past + seq` keys; the causal mask is aligned at the bottom right.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let split_heads = |t: Tensor<B, 3>, heads: usize| {
            t.reshape([batch, seq, heads, self.head_dim])
                .swap_dims(1, 2)
        };
        let (q, k, v) = self.project_qkv(x);
        let q = split_heads(q, self.num_heads);
        let k = split_heads(k, self.num_kv_heads);
        let v = split_heads(v, self.num_kv_heads);
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(q_norm), Some(k_norm)) => (q_norm.forward(q), k_norm.forward(k)),
            _ => (q, k),
        };
        let q = apply_rope(q, cos, sin);
        let k = apply_rope(k, cos, sin);

        let (k, v) = match cache {
            None => (k, v),
            Some(slot) => {
                let (k, v) = match slot.take() {
                    None => (k, v),
                    Some(past) => (
                        Tensor::cat(vec![past.key, k], 2),
                        Tensor::cat(vec![past.value, v], 2),
                    ),
                };
                *slot = Some(LayerCache {
                    key: k.clone(),
                    value: v.clone(),
                });
                (k, v)
            }
        };

        let groups = self.num_heads / self.num_kv_heads;
        // A window only hides keys once there are more keys than it spans.
        let window = self.sliding_window.filter(|&window| k.dims()[2] > window);
        // Plain causal layers take the fused attention, which keeps O(seq) memory per
        // layer where burn's autodiff would keep the O(seq²) probabilities; a window
        // or soft-capped scores go op by op (the fused kernels do neither).
        let context = if window.is_none() && self.softcap.is_none() {
            // The fused kernel scales by head_dim^-1/2: another scale goes into q.
            let q = match self.scale {
                Some(scale) => q * (scale * (self.head_dim as f64).sqrt()),
                None => q,
            };
            match B::causal_attention(q, k, v) {
                Ok(context) => context,
                Err((q, k, v)) => attention(
                    q,
                    repeat_kv(k, groups),
                    repeat_kv(v, groups),
                    None,
                    None,
                    AttentionModuleOptions {
                        scale: None,
                        softcap: None,
                        is_causal: true,
                    },
                ),
            }
        } else {
            let scale = self
                .scale
                .unwrap_or_else(|| (self.head_dim as f64).powf(-0.5));
            masked_attention(
                q,
                repeat_kv(k, groups),
                repeat_kv(v, groups),
                scale,
                self.softcap,
                window,
            )
        };
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, seq, self.num_heads * self.head_dim]);
        self.o_proj.forward(context)
    }
}

/// Gated feed-forward: `down(act(gate(x)) * up(x))`, SwiGLU (silu) or GeGLU (tanh GELU).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `None` where `gate_up_proj` holds gate and up together.
    pub gate_proj: Option<Linear<B>>,
    pub up_proj: Option<Linear<B>>,
    pub down_proj: Linear<B>,
    /// Phi-3: `[hidden] -> [2 intermediate]`, gate then up.
    pub gate_up_proj: Option<Linear<B>>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: Kernels> Mlp<B> {
    /// x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(gate_up), ..) => {
                let both = gate_up.forward(x);
                let inter = both.dims()[2] / 2;
                (
                    both.clone().narrow(2, 0, inter),
                    both.narrow(2, inter, inter),
                )
            }
            (None, Some(gate), Some(up)) if gate.fused_over_rows() && up.fused_over_rows() => {
                let [gate, up] = on_shared_rows(x, [gate, up]);
                (gate, up)
            }
            (None, Some(gate), Some(up)) => (gate.forward(x.clone()), up.forward(x)),
            _ => unreachable!("an mlp is built with gate_up_proj or both gate_proj and up_proj"),
        };
        let hidden = match self.act {
            Activation::Silu => swiglu_gate(gate, up),
            Activation::GeluTanh => gelu_tanh(gate) * up,
        };
        self.down_proj.forward(hidden)
    }
}

/// Each adapted projection of `projections` over one `[rows, d_in]` view of `x`
/// `[batch, seq, d_in]`, back as `[batch, seq, d_out]`: the parts of x's gradient are
/// then summed by the projections' nodes on all cores. Each node sits at the depth its
/// own reshape of x had, so burn's backward pass reaches the parts in the same order
/// as before (the order the consuming node lists them: v, k, q for attention; up, gate
/// for SwiGLU) and the sums, `new + old` as burn's were, have the same bits.
fn on_shared_rows<B: Kernels, const N: usize>(
    x: Tensor<B, 3>,
    projections: [&crate::model::lora::Linear<B>; N],
) -> [Tensor<B, 3>; N] {
    let [batch, seq, d_in] = x.dims();
    let rows = x.reshape([batch * seq, d_in]);
    projections.map(|projection| {
        let out = projection.forward(rows.clone());
        let d_out = out.dims()[1];
        out.reshape([batch, seq, d_out])
    })
}

/// `silu(gate) * up`: one node on the CPU and CUDA training backends, op by op
/// elsewhere.
fn swiglu_gate<B: Kernels>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    let (gate, up) = match B::swiglu(gate, up) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    activation::silu(gate) * up
}

/// GELU's tanh approximation (PyTorch's `gelu(approximate="tanh")`, transformers'
/// `gelu_pytorch_tanh`): `x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`. The cube is
/// two products, not `powf`, whose negative bases some backends refuse.
fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}

/// Gemma's embedding scale: x * sqrt(hidden), the factor rounded to x's dtype first
/// as transformers does (`tensor(hidden**0.5, dtype=hidden_states.dtype)`).
/// x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
fn scale_embeddings<B: Backend>(x: Tensor<B, 3>, hidden_size: usize) -> Tensor<B, 3> {
    let factor = (hidden_size as f64).sqrt();
    let factor = match x.dtype() {
        DType::BF16 => half::bf16::from_f64(factor).to_f64(),
        DType::F16 => half::f16::from_f64(factor).to_f64(),
        DType::F32 => factor as f32 as f64,
        _ => factor,
    };
    x * factor
}

/// `c * tanh(x / c)`: Gemma 2's soft cap of logits (the attention op caps scores).
fn soft_cap<B: Backend, const D: usize>(x: Tensor<B, D>, cap: f64) -> Tensor<B, D> {
    (x / cap).tanh() * cap
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    /// Before the MLP, or with Gemma's layout on the attention output.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Gemma: before the MLP (where the others use `post_attention_layernorm`).
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Gemma: on the MLP output, before the residual.
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
}

impl<B: Kernels> DecoderLayer<B> {
    /// x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        let attended =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), cos, sin, cache);
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre_feedforward), Some(post_feedforward)) => {
                let h = B::residual_sum(x, self.post_attention_layernorm.forward(attended));
                let fed = self.mlp.forward(pre_feedforward.forward(h.clone()));
                B::residual_sum(h, post_feedforward.forward(fed))
            }
            _ => {
                let h = B::residual_sum(x, attended);
                let fed = self
                    .mlp
                    .forward(self.post_attention_layernorm.forward(h.clone()));
                B::residual_sum(h, fed)
            }
        }
    }
}

/// The RoPE tables of one forward pass, `(cos, sin)` as [`rope_tables`] makes them.
pub struct RopeTables<B: Backend> {
    global: (Tensor<B, 4>, Tensor<B, 4>),
    local: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Per layer: whether it attends through a sliding window.
    windows: Vec<bool>,
}

impl<B: Backend> RopeTables<B> {
    /// The tables layer `layer` rotates with.
    pub fn of_layer(&self, layer: usize) -> (&Tensor<B, 4>, &Tensor<B, 4>) {
        let (cos, sin) = match (&self.local, self.windows[layer]) {
            (Some(local), true) => local,
            _ => &self.global,
        };
        (cos, sin)
    }
}

/// The decoder stack without the output head (HF's `model.` prefix).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// A causal language model (HF's `*ForCausalLM`).
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    pub model: LlamaModel<B>,
    /// `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: ModelConfig,
    /// The adapter's hyperparameters when LoRA branches are attached.
    #[module(skip)]
    pub lora: Option<LoraConfig>,
}

/// The score scale of a config's attention where it is not `head_dim^-1/2`: Gemma's
/// `query_pre_attn_scalar^-1/2` (`None` when that is head_dim, as in Gemma 3 1B).
pub fn attention_scale(config: &ModelConfig) -> Option<f64> {
    config
        .query_pre_attn_scalar
        .filter(|scalar| *scalar != config.head_dim as f64)
        .map(|scalar| scalar.powf(-0.5))
}

impl<B: Backend> CausalLm<B> {
    /// A model with random weights (normal, std 0.02, norms at one), for benchmarks and
    /// from-scratch experiments.
    pub fn random(config: &ModelConfig, device: &B::Device) -> Self {
        use burn::tensor::Distribution;
        let normal = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 0.02), device)
        };
        let zeros = |n: usize| Tensor::<B, 1>::zeros([n], device);
        let linear = |d_in: usize, d_out: usize, bias: bool| {
            Linear::new(normal([d_in, d_out]), bias.then(|| zeros(d_out)))
        };
        // Gemma stores the offset from one.
        let norm_of = |len: usize| RmsNorm {
            weight: Param::from_tensor(if config.gemma_layout {
                Tensor::zeros([len], device)
            } else {
                Tensor::ones([len], device)
            }),
            eps: config.rms_norm_eps,
            plus_one: config.gemma_layout,
        };
        let norm = || norm_of(config.hidden_size);
        let h = config.hidden_size;
        let (q, kv, inter) = (config.q_dim(), config.kv_dim(), config.intermediate_size);
        let separate = !config.fused_projections;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer {
                self_attn: Attention {
                    q_proj: separate.then(|| linear(h, q, config.qkv_bias)),
                    k_proj: separate.then(|| linear(h, kv, config.qkv_bias)),
                    v_proj: separate.then(|| linear(h, kv, config.qkv_bias)),
                    o_proj: linear(q, h, config.o_bias),
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                    sliding_window: config.layer_window(i),
                    qkv_proj: config
                        .fused_projections
                        .then(|| linear(h, q + 2 * kv, config.qkv_bias)),
                    q_norm: config.qk_norm.then(|| norm_of(config.head_dim)),
                    k_norm: config.qk_norm.then(|| norm_of(config.head_dim)),
                    scale: attention_scale(config),
                    softcap: config.attn_logit_softcapping,
                },
                mlp: Mlp {
                    gate_proj: separate.then(|| linear(h, inter, config.mlp_bias)),
                    up_proj: separate.then(|| linear(h, inter, config.mlp_bias)),
                    down_proj: linear(inter, h, config.mlp_bias),
                    gate_up_proj: config
                        .fused_projections
                        .then(|| linear(h, 2 * inter, config.mlp_bias)),
                    act: config.hidden_act,
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
                pre_feedforward_layernorm: config.gemma_layout.then(norm),
                post_feedforward_layernorm: config.gemma_layout.then(norm),
            })
            .collect();
        CausalLm {
            model: LlamaModel {
                embed_tokens: Embedding {
                    weight: Param::from_tensor(normal([config.vocab_size, h])),
                },
                layers,
                norm: norm(),
            },
            lm_head: (!config.tie_word_embeddings).then(|| linear(h, config.vocab_size, false)),
            config: config.clone(),
            lora: None,
        }
    }

    pub fn device(&self) -> B::Device {
        self.model.embed_tokens.weight.device()
    }
}

impl<B: Kernels> CausalLm<B> {
    /// ids: `[batch, seq]` -> hidden states after the final norm `[batch, seq, hidden]`.
    pub fn forward_hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let Some(cache) = cache else {
            return self.model.norm.forward(self.forward_layers(ids));
        };
        let [_, seq] = ids.dims();
        let tables = self.rope(cache.len, seq, &ids.device());
        let mut x = self.embed(ids);
        let layers = self.model.layers.iter().zip(cache.layers.iter_mut());
        for (i, (layer, slot)) in layers.enumerate() {
            let (cos, sin) = tables.of_layer(i);
            x = layer.forward(x, cos, sin, Some(slot));
        }
        cache.len += seq;
        self.model.norm.forward(x)
    }

    /// ids: `[batch, seq]` -> the last decoder layer's output `[batch, seq, hidden]`,
    /// before the final norm.
    pub fn forward_layers(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq] = ids.dims();
        let tables = self.rope(0, seq, &ids.device());
        let mut x = self.embed(ids);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (cos, sin) = tables.of_layer(i);
            x = layer.forward(x, cos, sin, None);
        }
        x
    }

    /// ids: `[batch, seq]` -> the first layer's input `[batch, seq, hidden]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.model.embed_tokens.forward(ids);
        if self.config.gemma_layout {
            scale_embeddings(x, self.config.hidden_size)
        } else {
            x
        }
    }

    /// The RoPE tables of `seq` positions from `offset`, for every layer.
    pub fn rope(&self, offset: usize, seq: usize, device: &B::Device) -> RopeTables<B> {
        let head_dim = self.config.head_dim;
        RopeTables {
            global: rope_tables::<B>(&self.config.rope, head_dim, offset, seq, device),
            // Gemma 3's sliding layers rotate with their own theta.
            local: self
                .config
                .rope_local
                .as_ref()
                .map(|rope| rope_tables::<B>(rope, head_dim, offset, seq, device)),
            windows: (0..self.model.layers.len())
                .map(|layer| self.config.layer_window(layer).is_some())
                .collect(),
        }
    }

    /// hidden: `[batch, seq, hidden]` -> logits `[batch, seq, vocab]`.
    pub fn head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => super::lora::project(
                hidden,
                self.model.embed_tokens.weight.val().transpose(),
                None,
            ),
        };
        match self.config.final_logit_softcapping {
            Some(cap) => soft_cap(logits, cap),
            None => logits,
        }
    }

    /// ids: `[batch, seq]` -> logits `[batch, seq, vocab]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.head(self.forward_hidden(ids, None))
    }

    /// ids: `[batch, seq]` new tokens after `cache.len` cached ones -> logits
    /// `[batch, seq, vocab]` for the new positions; the cache grows by `seq`.
    pub fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.head(self.forward_hidden(ids, Some(cache)))
    }

    /// A fresh cache sized for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.model.layers.len())
    }

    /// Mean next-token cross-entropy of `ids` under the model (labels = ids, shifted).
    /// ids: `[batch, seq]`, loss_mask: `[batch, seq]` -> `[1]`.
    pub fn loss(&self, ids: Tensor<B, 2, Int>, loss_mask: Option<Tensor<B, 2>>) -> Tensor<B, 1> {
        let logits = self.forward(ids.clone());
        causal_lm_loss(logits, ids, loss_mask)
    }
}

/// Mean next-token cross-entropy, HF's `ForCausalLMLoss` with `labels = ids`: position
/// `t` predicts token `t + 1`.
///
/// logits: `[batch, seq, vocab]`, ids: `[batch, seq]`, loss_mask: `[batch, seq]` -> `[1]`.
///
/// `loss_mask[b, t]` (1.0 or 0.0) says whether token `t` counts as a *target*; column 0
/// is never a target. The mean is over counted targets only (a batch with none gives
/// NaN, as the reference does). The sum is taken in f32 on the backend.
pub fn causal_lm_loss<B: Kernels>(
    logits: Tensor<B, 3>,
    ids: Tensor<B, 2, Int>,
    loss_mask: Option<Tensor<B, 2>>,
) -> Tensor<B, 1> {
    let [batch, seq, _vocab] = logits.dims();
    if B::fused_loss() {
        return fused_causal_lm_loss(logits, ids, loss_mask);
    }
    // In f32 whatever the compute dtype, as transformers upcasts the logits.
    let logits = match logits.dtype() {
        DType::F32 => logits,
        _ => logits.cast(FloatDType::F32),
    };
    let predicting = logits.narrow(1, 0, seq - 1);
    let targets = ids.narrow(1, 1, seq - 1);
    let log_probs = activation::log_softmax(predicting, 2);
    let picked = log_probs
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .reshape([batch, seq - 1]);
    match loss_mask {
        // burn's mean, summed in a fixed order.
        None => ordered_sum(picked)
            .div_scalar((batch * (seq - 1)) as f32)
            .neg(),
        Some(mask) => {
            let mask = mask.narrow(1, 1, seq - 1);
            let count = ordered_sum(mask.clone());
            ordered_sum(picked * mask).neg() / count
        }
    }
}

/// [`causal_lm_loss`] through the fused cross-entropy: every position is a row, the
/// last of each sequence with weight 0 (it has no next token), so the logits are used
/// in place rather than narrowed into a copy.
fn fused_causal_lm_loss<B: Kernels>(
    logits: Tensor<B, 3>,
    ids: Tensor<B, 2, Int>,
    loss_mask: Option<Tensor<B, 2>>,
) -> Tensor<B, 1> {
    let [batch, seq, vocab] = logits.dims();
    let device = logits.device();
    let targets = Tensor::cat(
        vec![
            ids.narrow(1, 1, seq - 1),
            Tensor::zeros([batch, 1], &device),
        ],
        1,
    );
    // Weights, their count and their normalisation in f32: in bf16 a count such as
    // 16,376 rounds to 16,384.
    let counted = match loss_mask {
        Some(mask) => mask.narrow(1, 1, seq - 1).cast(FloatDType::F32),
        None => Tensor::ones([batch, seq - 1], (&device, DType::F32)),
    };
    let padding = Tensor::zeros([batch, 1], (&device, DType::F32));
    let weights = Tensor::cat(vec![counted, padding], 1).reshape([batch * seq]);
    let weights = weights.clone() / ordered_sum(weights);
    B::token_loss_sum(
        logits.reshape([batch * seq, vocab]),
        targets.reshape([batch * seq]),
        weights,
    )
    .expect("checked by the caller")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::flex_values::bits;
    use crate::model::lora::{Linear, LoraConfig};
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;
    use rand::SeedableRng;

    type B = Autodiff<Flex, NoCheckpointing>;

    /// q, k and v (adapted) over one view of their input: the outputs and x's gradient
    /// have the bits of the projections each over its own reshape, and two of the
    /// gradient's three parts are now summed by the projections' nodes.
    #[test]
    fn projections_on_shared_rows_give_the_same_gradient_summed_by_the_nodes() {
        let device = Default::default();
        let config = LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![],
            use_rslora: false,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let projections: Vec<Linear<B>> = [48, 16, 16]
            .map(|d_out| {
                let weight = Tensor::random([32, d_out], Distribution::Normal(0.0, 1.0), &device);
                let mut projection = Linear::new(weight, None);
                projection.attach_lora(&config, &mut rng);
                projection
            })
            .into();
        assert!(projections.iter().all(|p| p.fused_over_rows()));
        let x = Tensor::<Flex, 3>::random([2, 40, 32], Distribution::Normal(0.0, 1.0), &device);
        // One upstream gradient per output, so that swapped outputs would show.
        let upstream: Vec<Tensor<Flex, 3>> = [48, 16, 16]
            .map(|d| Tensor::random([2, 40, d], Distribution::Normal(0.0, 1.0), &device))
            .into();
        let gradient = |shared: bool| {
            let x = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
            let outs: Vec<Tensor<B, 3>> = if shared {
                on_shared_rows(
                    x.clone(),
                    [&projections[0], &projections[1], &projections[2]],
                )
                .into()
            } else {
                projections.iter().map(|p| p.forward(x.clone())).collect()
            };
            let values: Vec<Vec<u32>> = outs.iter().map(|out| bits(out.clone().inner())).collect();
            let loss = outs
                .into_iter()
                .zip(&upstream)
                .map(|(out, up)| (out * Tensor::from_inner(up.clone())).sum())
                .reduce(|a, b| a + b)
                .expect("three outputs");
            let gradient = x.grad(&loss.backward()).expect("x is tracked");
            (values, bits(gradient))
        };
        let sums = || crate::compute::grad_sum::SUMS.with(|sums| sums.get());
        let before = sums();
        let apart = gradient(false);
        assert_eq!(sums(), before, "apart, burn's reshapes sum the parts");
        let shared = gradient(true);
        assert_eq!(sums() - before, 2, "shared, the nodes sum them");
        assert_eq!(shared, apart);
    }
}
