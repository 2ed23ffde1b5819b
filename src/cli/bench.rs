//! `graft bench train`: training throughput on the reference workload, one JSON line in
//! the schema of `shared/bench/hf_peft_lora.py`, so that graft and HF + PEFT can be run
//! side by side on one machine (`benches/gpu_vs_reference.sh`).

use super::backend::{BackendKind, Dtype};
use super::{output, CliError, CliResult, Context};
use crate::compute::{Checkpointing, Compute, ComputeSection, KeepProjections};
use crate::train::bench::{run_bench, BenchConfig, BenchReport, MemorySample};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// LoRA training steps on a preset with random weights and tokens (the workload of
    /// shared/bench/hf_peft_lora.py); prints one JSON line in that script's schema.
    ///
    /// The step is `graft train`'s own step function. On CUDA, matrix products go
    /// through cuBLAS, loaded at run time: put the folder of libcublas.so on
    /// LD_LIBRARY_PATH. The kernel alternatives are the experiment's `[compute]` keys
    /// (see the README's "Compute options"): `graft train --set compute.KEY=VALUE`
    /// measures them on the trainer itself.
    Train(TrainArgs),
    /// Causal attention alone on CUDA: the flash kernels' forward and backward passes
    /// on random bf16 inputs, timed apart; prints one JSON line with milliseconds and
    /// TFLOP/s (causal products counted as FlashAttention's papers count them: 2 of
    /// 2·d multiply-adds per visible score forward, 5 backward), so that
    /// benches/attention_vs_sdpa.sh can set PyTorch's SDPA beside it.
    Attention(AttentionArgs),
}

#[derive(clap::Args, Debug)]
pub struct AttentionArgs {
    /// Tokens per sequence.
    #[arg(long, default_value_t = 16384)]
    pub seq: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Query heads.
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    /// Key and value heads (a divisor of --heads).
    #[arg(long, default_value_t = 8)]
    pub kv_heads: usize,
    /// Head size: 32, 64 or 128.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Timed passes of each direction.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed forward and backward passes first (NVRTC compiles the kernels here).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// For kernel development: time this CUDA source instead of the built-in
    /// src/compute/flash_attention.cu. It must define the same entry points and
    /// `flash_geometry_D` arrays, which say how to launch them.
    #[arg(long, value_name = "FILE")]
    pub source: Option<std::path::PathBuf>,
    /// For kernel development: on compute capability 9.0, this source instead of the
    /// built-in src/compute/flash_attention_sm90.cu (the wgmma kernels, appended to
    /// the other source); an empty file runs the mma.sync kernels there too.
    #[arg(long, value_name = "FILE")]
    pub sm90_source: Option<std::path::PathBuf>,
    /// Also compare the kernels' output and gradients with f32 attention on small
    /// inputs of these heads and head size (2 sequences of 333 tokens), print each
    /// one's largest relative error, and fail above 2%.
    #[arg(long)]
    pub check: bool,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Model shapes: tiny, smol-135m (SmolLM2-135M) or llama-1b (Llama-3.2-1B).
    #[arg(long, default_value = "llama-1b")]
    pub preset: String,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    pub seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// LoRA rank (alpha = rank, as the reference).
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first (kernel compilation and autotuning happen here).
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Recompute cheap activations in the backward pass instead of keeping them
    /// (burn's balanced checkpointing; `--checkpointing balanced`).
    #[arg(long)]
    pub grad_ckpt: bool,
    /// What the backward pass recomputes: `none`, `balanced` (burn's, as `--grad-ckpt`)
    /// or `layers` (each decoder layer from its input, as HF's gradient checkpointing).
    #[arg(long, value_enum, conflicts_with = "grad_ckpt")]
    pub checkpointing: Option<Checkpointing>,
    /// With `--checkpointing layers`: run the head and the loss over this many tokens
    /// at a time (`compute.loss_chunk_tokens`; 0: all at once).
    #[arg(long, default_value_t = 0)]
    pub loss_chunk_tokens: u64,
    /// With `--checkpointing layers`: keep adapted projections' outputs for their
    /// layer's rerun, which then skips their base products (`compute.keep_projections`):
    /// `all` (the flag alone), `narrow` (those that do not widen their input: all but
    /// the MLP's gate and up, a third of the memory) or `none`.
    #[arg(long, requires = "checkpointing", num_args = 0..=1, default_missing_value = "all",
          value_name = "WHICH")]
    pub keep_projections: Option<KeepProjections>,
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
    /// Compute dtype [default: bf16 on cuda, f32 on cpu].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// With bf16, keep the LoRA matrices in bf16 too (default: f32 adapter and
    /// optimizer state over a bf16 base).
    #[arg(long)]
    pub adapter_bf16: bool,
    /// Also time forward, backward and optimizer separately (synced; extra steps).
    #[arg(long)]
    pub phases: bool,
}

pub fn run(args: Args, _context: &Context) -> CliResult {
    match args.command {
        BenchCommand::Train(args) => train(args),
        BenchCommand::Attention(args) => attention(args),
    }
}

fn train(args: TrainArgs) -> CliResult {
    let dtype = args.dtype.unwrap_or(match args.backend {
        BackendKind::Cpu => Dtype::F32,
        BackendKind::Cuda => Dtype::Bf16,
    });
    let checkpointing = match (args.checkpointing, args.grad_ckpt) {
        (Some(choice), _) => choice,
        (None, true) => Checkpointing::Balanced,
        (None, false) => Checkpointing::None,
    };
    let config = BenchConfig {
        preset: args.preset.clone(),
        seq: args.seq,
        batch: args.batch,
        rank: args.rank,
        steps: args.steps,
        warmup: args.warmup,
        adapter_f32: dtype == Dtype::Bf16 && !args.adapter_bf16,
        phases: args.phases,
        dtype_label: match (dtype, args.adapter_bf16) {
            (Dtype::F32, _) => "fp32".into(),
            (Dtype::Bf16, false) => "bf16".into(),
            (Dtype::Bf16, true) => "bf16-adapter-bf16".into(),
        },
        grad_ckpt: checkpointing != Checkpointing::None,
    };
    let compute = Compute::new(
        args.backend,
        ComputeSection {
            dtype,
            checkpointing,
            loss_chunk_tokens: args.loss_chunk_tokens,
            keep_projections: args.keep_projections.unwrap_or_default(),
            ..Default::default()
        },
    );
    compute.check().map_err(CliError::user)?;
    let report: BenchReport = crate::on_compute!(compute, bench(&config, args.backend))?;
    let line = serde_json::to_string(&report).map_err(|e| CliError::internal(e.to_string()))?;
    output::println_safe(&line);
    Ok(())
}

#[cfg(feature = "cuda")]
fn attention(args: AttentionArgs) -> CliResult {
    use crate::compute::flash_attention::{time_passes, BenchShape, BenchSources};
    if let Some(why) = crate::compute::cuda_kernels::missing_driver() {
        return Err(CliError::user(format!(
            "bench attention runs on CUDA: {why}"
        )));
    }
    if args.steps == 0 {
        return Err(CliError::user("--steps must be at least 1"));
    }
    let read = |path: &Option<std::path::PathBuf>| -> Result<Option<String>, CliError> {
        path.as_ref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map_err(|e| CliError::user(format!("{}: {e}", path.display())))
            })
            .transpose()
    };
    let sources = BenchSources {
        base: read(&args.source)?,
        sm90: read(&args.sm90_source)?,
    };
    crate::compute::flash_attention::use_sources_for_bench(sources).map_err(CliError::user)?;
    let shape = BenchShape {
        batch: args.batch,
        heads: args.heads,
        kv_heads: args.kv_heads,
        seq: args.seq,
        head_dim: args.head_dim,
    };
    let (forward_ms, backward_ms) =
        time_passes(shape, args.steps, args.warmup).map_err(CliError::user)?;
    let flop = causal_attention_flop(&shape);
    let errors = if args.check {
        let errors = crate::compute::flash_attention::errors_against_f32(
            2,
            (args.heads, args.kv_heads),
            333,
            args.head_dim,
        )
        .map_err(CliError::user)?;
        Some(errors)
    } else {
        None
    };
    let report = serde_json::json!({
        "kernel": std::iter::once("graft-flash".to_string())
            .chain(args.source.iter().chain(&args.sm90_source).map(|p| p.display().to_string()))
            .collect::<Vec<_>>()
            .join(" "),
        "shape": shape,
        "forward_ms": forward_ms,
        "backward_ms": backward_ms,
        "forward_tflops": flop / (forward_ms * 1e9),
        "backward_tflops": 2.5 * flop / (backward_ms * 1e9),
        "relative_errors": errors.map(|e| e.into_iter().collect::<std::collections::BTreeMap<_, _>>()),
    });
    output::println_safe(&report.to_string());
    // NaN fails too.
    if let Some((name, error)) = errors
        .iter()
        .flatten()
        .find(|(_, error)| error.is_nan() || *error >= 2e-2)
    {
        return Err(CliError::user(format!(
            "the kernels' {name} is off by {error:.2e} of its largest value (more than 2%)"
        )));
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn attention(_args: AttentionArgs) -> CliResult {
    Err(CliError::user(
        "`graft bench attention` times the CUDA kernels: this graft was built without the `cuda` feature",
    ))
}

/// Forward multiply-adds of causal attention, times two: q·k and p·v over the
/// s(s+1)/2 visible scores of every head.
#[cfg(feature = "cuda")]
fn causal_attention_flop(shape: &crate::compute::flash_attention::BenchShape) -> f64 {
    let visible = (shape.seq * (shape.seq + 1) / 2) as f64;
    4.0 * (shape.batch * shape.heads) as f64 * visible * shape.head_dim as f64
}

fn bench<B: crate::compute::kernels::TrainKernels>(
    device: &B::Device,
    config: &BenchConfig,
    backend: BackendKind,
) -> CliResult<BenchReport> {
    let memory = device_memory(backend);
    Ok(run_bench::<B>(device, config, &*memory)?)
}

/// How to sample device memory on `backend` (nothing to sample on the CPU).
fn device_memory(backend: BackendKind) -> Box<dyn Fn() -> Option<MemorySample>> {
    match backend {
        BackendKind::Cpu => Box::new(|| None),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use burn::backend::cuda::CudaDevice;
            use burn::cubecl::{cuda::CudaRuntime, Runtime};
            let client = CudaRuntime::client(&CudaDevice::default());
            Box::new(move || {
                client.memory_usage().ok().map(|usage| MemorySample {
                    reserved: usage.bytes_reserved,
                    in_use: usage.bytes_in_use,
                })
            })
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Box::new(|| None),
    }
}
