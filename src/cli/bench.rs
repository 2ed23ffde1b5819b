//! `graft bench train`: training throughput on the reference workload, one JSON line in
//! the schema of `shared/bench/hf_peft_lora.py`, so that graft and HF + PEFT can be run
//! side by side on one machine (`benches/gpu_vs_reference.sh`).

use super::backend::{BackendKind, Dtype};
use super::{output, CliError, CliResult, Context};
use crate::train::bench::{run_bench, BenchConfig, BenchReport, MemorySample};
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;

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
    /// On CUDA, matrix products go through cuBLAS, loaded at run time: put the folder
    /// of libcublas.so on LD_LIBRARY_PATH. For comparisons, these environment variables
    /// switch to the alternatives: GRAFT_CUBEK_MATMUL=1 (burn's matmul),
    /// GRAFT_CUBLAS_MIN_MACS=N (smallest bf16 product sent to cuBLAS, default 2^20),
    /// GRAFT_UNFUSED_LORA=1 (adapted projections op by op), GRAFT_LORA_BRANCH_F32=1
    /// (each adapter's products in f32, as PEFT computes them),
    /// GRAFT_BLOCKED_ATTENTION=1 (the blocked attention instead of the flash kernels),
    /// GRAFT_BURN_ATTENTION=1 (burn's attention), GRAFT_ATTENTION_BLOCK_ELEMENTS=N
    /// (most scores per attention block, default 2^27), GRAFT_UNFUSED_SWIGLU=1 (the
    /// gating op by op), GRAFT_UNFUSED_ADAMW=1 (AdamW without the fused kernels).
    Train(TrainArgs),
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
    /// (burn's balanced checkpointing).
    #[arg(long)]
    pub grad_ckpt: bool,
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
    }
}

fn train(args: TrainArgs) -> CliResult {
    let dtype = args.dtype.unwrap_or(match args.backend {
        BackendKind::Cpu => Dtype::F32,
        BackendKind::Cuda => Dtype::Bf16,
    });
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
        grad_ckpt: args.grad_ckpt,
    };
    let report = match (args.backend, dtype) {
        (BackendKind::Cpu, Dtype::F32) => on_cpu(&config, args.grad_ckpt)?,
        (BackendKind::Cpu, Dtype::Bf16) => {
            return Err(CliError::user(
                "bf16 is for --backend cuda; the CPU benchmark runs in f32",
            ))
        }
        (BackendKind::Cuda, dtype) => on_cuda(&config, dtype, args.grad_ckpt)?,
    };
    let line = serde_json::to_string(&report).map_err(|e| CliError::internal(e.to_string()))?;
    output::println_safe(&line);
    Ok(())
}

fn bench<B: AutodiffBackend>(
    device: &B::Device,
    config: &BenchConfig,
    memory: &dyn Fn() -> Option<MemorySample>,
) -> CliResult<BenchReport> {
    Ok(run_bench::<B>(device, config, memory)?)
}

fn on_cpu(config: &BenchConfig, grad_ckpt: bool) -> CliResult<BenchReport> {
    type Flex = burn::backend::Flex;
    let device = Default::default();
    let none = || None;
    if grad_ckpt {
        bench::<Autodiff<Flex, BalancedCheckpointing>>(&device, config, &none)
    } else {
        bench::<Autodiff<Flex>>(&device, config, &none)
    }
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(_config: &BenchConfig, _dtype: Dtype, _grad_ckpt: bool) -> CliResult<BenchReport> {
    Err(CliError::user(
        "this graft was built without CUDA: rebuild with `cargo build --release --features cuda`",
    ))
}

#[cfg(feature = "cuda")]
fn on_cuda(config: &BenchConfig, dtype: Dtype, grad_ckpt: bool) -> CliResult<BenchReport> {
    use burn::backend::cuda::CudaDevice;
    use burn::backend::Cuda;
    use burn::cubecl::{cuda::CudaRuntime, Runtime};
    use burn::tensor::bf16;

    let device = CudaDevice::default();
    let client = CudaRuntime::client(&device);
    let memory = move || {
        client.memory_usage().ok().map(|usage| MemorySample {
            reserved: usage.bytes_reserved,
            in_use: usage.bytes_in_use,
        })
    };
    match (dtype, grad_ckpt) {
        (Dtype::F32, false) => bench::<Autodiff<Cuda<f32>>>(&device, config, &memory),
        (Dtype::F32, true) => {
            bench::<Autodiff<Cuda<f32>, BalancedCheckpointing>>(&device, config, &memory)
        }
        (Dtype::Bf16, false) => bench::<Autodiff<Cuda<bf16>>>(&device, config, &memory),
        (Dtype::Bf16, true) => {
            bench::<Autodiff<Cuda<bf16>, BalancedCheckpointing>>(&device, config, &memory)
        }
    }
}
