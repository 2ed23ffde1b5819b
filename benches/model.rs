//! CPU throughput of the model: forward, and forward+backward with a LoRA adapter on
//! all seven projections (as the reference `shared/bench/hf_peft_lora.py` measures), on
//! a small preset with random weights.
//!
//!   cargo bench --bench model [-- PRESET BATCH SEQ STEPS]

use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor};
use graft::model::{CausalLm, CpuTrainBackend, LoraConfig, ModelConfig, ALL_TARGETS};

type B = CpuTrainBackend;

fn main() {
    graft::compute::host_memory::reuse_freed_buffers();
    // cargo passes `--bench` to harness=false benches; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let preset = args.first().map_or("tiny", String::as_str);
    let batch: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let seq: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let steps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);

    let config = match ModelConfig::preset(preset) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let device = Default::default();
    let lora = LoraConfig {
        rank: 16,
        alpha: 16.0,
        dropout: 0.0,
        targets: ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
        use_rslora: false,
    };
    let model = match CausalLm::<B>::random(&config, &device).with_new_lora(&lora, 0) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let ids = || {
        Tensor::<B, 2, Int>::random(
            [batch, seq],
            Distribution::Uniform(0.0, config.vocab_size as f64),
            &device,
        )
    };
    let tokens = (batch * seq * steps) as f64;

    // Warm-up, then forward only (logits read back so the work is not deferred).
    let _ = model.forward(ids()).into_data();
    let start = Instant::now();
    for _ in 0..steps {
        let _ = model.forward(ids()).into_data();
    }
    let forward = tokens / start.elapsed().as_secs_f64();

    let _ = model.loss(ids(), None).backward();
    let start = Instant::now();
    for _ in 0..steps {
        let grads = model.loss(ids(), None).backward();
        drop(grads);
    }
    let train = tokens / start.elapsed().as_secs_f64();

    println!(
        "{{\"impl\":\"graft-burn-flex\",\"preset\":\"{preset}\",\"batch\":{batch},\"seq\":{seq},\"rank\":16,\"steps\":{steps},\"forward_tokens_per_s\":{forward:.1},\"forward_backward_tokens_per_s\":{train:.1}}}"
    );
}
