//! The training-throughput benchmark behind `graft bench train`: the workload of the
//! reference script `shared/bench/hf_peft_lora.py` (a preset's Llama shapes with random
//! weights, LoRA of rank r on all seven projections, random token ids, AdamW, global
//! gradient clipping at 1.0), timed after warm-up steps, reported in that script's JSON
//! schema so the two lines can be compared key for key.
//!
//! The step is the trainer's own ([`super::step::train_step`]): forward, the masked
//! token loss, backward, clipping on the device, AdamW. As in `graft train`, nothing
//! is read back between steps (the reference's `clip_grad_norm_` keeps the norm on the
//! device too).
//!
//! Peak memory is what cubecl's pool has reserved (the card must have that much free),
//! an upper bound on torch's `max_memory_allocated` that the reference reports; the
//! peak held by live tensors, sampled at the phase boundaries of an extra synced step,
//! is reported beside it as `peak_in_use_gib`.

use std::time::Instant;

use crate::compute::kernels::TrainKernels;
use burn::tensor::{Distribution, Int, Tensor};
use serde::Serialize;

use super::loss::BatchTensors;
use super::optim::{AdamW, AdamWConfig};
use super::step::{read_f64, train_step};
use crate::model::{CausalLm, LoraConfig, ModelConfig, ModelError, ALL_TARGETS};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `tiny`, `smol-135m` or `llama-1b` (see [`ModelConfig::preset`]).
    pub preset: String,
    pub seq: usize,
    pub batch: usize,
    pub rank: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first: kernel compilation and autotuning happen here.
    pub warmup: usize,
    /// Keep the LoRA matrices (and so their gradients and AdamW moments) in f32 when
    /// the backend computes in a narrower float type.
    pub adapter_f32: bool,
    /// After the timed steps, time forward, backward and the optimizer separately.
    pub phases: bool,
    /// Labels copied into the report: the compute dtype and whether the backend
    /// recomputes activations in the backward pass.
    pub dtype_label: String,
    pub grad_ckpt: bool,
}

/// Device memory as the backend's allocator sees it, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemorySample {
    /// Reserved by the pool: what the card must have free for the run.
    pub reserved: u64,
    /// Held by live tensors.
    pub in_use: u64,
}

/// Milliseconds per step of each phase, each phase ended by a device sync.
#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
}

/// One run, in the reference script's keys (plus a few of graft's own at the end).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub preset: String,
    pub seq: usize,
    pub batch: usize,
    pub rank: usize,
    pub attn: String,
    pub dtype: String,
    pub grad_ckpt: bool,
    pub compile: bool,
    pub steps: usize,
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    /// Peak of the allocator's reserved memory, GiB (`None` on the CPU).
    pub peak_gib: Option<f64>,
    pub trainable: usize,
    pub loss: f64,
    pub device: String,
    /// Peak of memory held by live tensors among the sampled points, GiB.
    pub peak_in_use_gib: Option<f64>,
    pub warmup: usize,
    pub warmup_s: f64,
    pub phases: Option<Phases>,
}

const LEARNING_RATE: f64 = 1e-4;
const CLIP: f64 = 1.0;

/// Runs the benchmark on backend `B`. `memory` samples device memory (after a sync);
/// it returns `None` where the backend has no allocator to ask (the CPU).
pub fn run_bench<B: TrainKernels>(
    device: &B::Device,
    config: &BenchConfig,
    memory: &dyn Fn() -> Option<MemorySample>,
) -> Result<BenchReport, ModelError> {
    let model_config = ModelConfig::preset(&config.preset)?;
    let lora = LoraConfig {
        rank: config.rank,
        alpha: config.rank as f64,
        dropout: 0.0,
        targets: ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
        use_rslora: false,
    };
    B::seed(device, 0);
    // The base held as `graft train` holds a loaded one: resident, in exact buffers
    // outside the pool's shared pages, so that the memory figure is the trainer's.
    let base = crate::compute::resident::load_resident::<B, _>(device, || {
        CausalLm::<B>::random(&model_config, device)
    });
    let mut model = base.with_new_lora(&lora, 0)?;
    if config.adapter_f32 {
        model = model.with_lora_in_f32();
    }
    let trainable: usize = model
        .params()
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    // torch.optim.AdamW's defaults, which the reference uses.
    let mut optimizer = AdamW::<B::InnerBackend>::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let vocab = model_config.vocab_size as f64;
    // Random inputs and targets, every token trained: the reference's workload.
    let ids = || {
        let random = || {
            Tensor::<B, 2, Int>::random(
                [config.batch, config.seq],
                Distribution::Uniform(0.0, vocab),
                device,
            )
        };
        BatchTensors {
            inputs: random(),
            targets: random(),
            mask: Tensor::<B, 2>::ones([config.batch, config.seq], device),
            tokens: config.batch * config.seq,
        }
    };

    let mut peak = MemorySample::default();
    let observe = |peak: &mut MemorySample| {
        B::sync(device).ok();
        if let Some(sample) = memory() {
            peak.reserved = peak.reserved.max(sample.reserved);
            peak.in_use = peak.in_use.max(sample.in_use);
        }
    };

    let warmup_started = Instant::now();
    for _ in 0..config.warmup {
        let (next, _) = bench_step(model, &mut optimizer, ids());
        model = next;
    }
    B::sync(device).ok();
    let warmup_s = warmup_started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut last_loss = None;
    for _ in 0..config.steps {
        let (next, loss) = bench_step(model, &mut optimizer, ids());
        model = next;
        last_loss = Some(loss);
    }
    let loss: f64 = last_loss
        .and_then(|loss| read_f64(loss).first().copied())
        .unwrap_or(f64::NAN);
    B::sync(device).ok();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);

    // One more step, synced between phases, gives the memory peaks (the allocator is
    // asked only after the work that allocates has run) and, if asked, the phase times.
    let phase_steps = if config.phases {
        config.steps.clamp(1, 5)
    } else {
        1
    };
    let mut phase_totals = [0.0f64; 3];
    for _ in 0..phase_steps {
        let mut clock = Instant::now();
        let mut lap = |slot: usize, peak: &mut MemorySample| {
            observe(peak);
            phase_totals[slot] += clock.elapsed().as_secs_f64();
            clock = Instant::now();
        };
        let batch = ids();
        let accumulated = if crate::compute::options::current().recompute_layers {
            // Per-layer recomputation stages forward and backward together: the
            // trainer's backward, its time all in the backward phase.
            lap(0, &mut peak);
            let tokens = batch.tokens as f64;
            let (accumulated, _) = super::step::backward(&model, vec![(batch, tokens)]);
            lap(1, &mut peak);
            accumulated
        } else {
            let logits = model.forward(batch.inputs.clone());
            let loss = super::loss::masked_loss_sum(logits, &batch) / batch.tokens as f64;
            lap(0, &mut peak);
            let grads = loss.backward();
            lap(1, &mut peak);
            let mut accumulated = super::optim::GradAccumulator::<B::InnerBackend>::default();
            accumulated.add(&model, &grads);
            accumulated
        };
        model = optimizer
            .step_clipped(model, accumulated, 1.0, CLIP, |_| LEARNING_RATE)
            .0;
        lap(2, &mut peak);
    }
    let phases = config.phases.then(|| {
        let per_step = |total: f64| (100_000.0 * total / phase_steps as f64).round() / 100.0;
        Phases {
            forward_ms: per_step(phase_totals[0]),
            backward_ms: per_step(phase_totals[1]),
            optimizer_ms: per_step(phase_totals[2]),
        }
    });
    let gib = |bytes: u64| (bytes as f64 / (1u64 << 30) as f64 * 1000.0).round() / 1000.0;
    let probed = memory().is_some();

    let tokens = (config.batch * config.seq * config.steps) as f64;
    Ok(BenchReport {
        implementation: "graft".into(),
        preset: config.preset.clone(),
        seq: config.seq,
        batch: config.batch,
        rank: config.rank,
        attn: attention_label::<B>(&model_config),
        dtype: config.dtype_label.clone(),
        grad_ckpt: config.grad_ckpt,
        compile: false,
        steps: config.steps,
        tokens_per_s: (tokens / elapsed * 10.0).round() / 10.0,
        ms_per_step: (100_000.0 * elapsed / config.steps.max(1) as f64).round() / 100.0,
        peak_gib: probed.then(|| gib(peak.reserved)),
        trainable,
        loss,
        device: B::name(device),
        peak_in_use_gib: probed.then(|| gib(peak.in_use)),
        warmup: config.warmup,
        warmup_s: (warmup_s * 100.0).round() / 100.0,
        phases,
    })
}

/// The trainer's step on one batch. Returns the updated model and the loss (on the
/// device, unread, so that steps queue up without waiting for each other).
fn bench_step<B: TrainKernels>(
    model: CausalLm<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    batch: BatchTensors<B>,
) -> (CausalLm<B>, Tensor<B::InnerBackend, 1>) {
    let (model, result) = train_step(model, optimizer, vec![batch], CLIP, |_| LEARNING_RATE);
    (model, result.losses)
}

/// Which attention the step ran: `flash` (the fused CUDA kernels), `blocked` (the
/// fused CPU node or the blocked CUDA node) or `burn` (burn's op by op).
fn attention_label<B: TrainKernels>(model: &ModelConfig) -> String {
    use burn::tensor::Element;
    B::attention_label(model.head_dim, <B::FloatElem as Element>::dtype()).into()
}
