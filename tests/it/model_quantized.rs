//! A quantized frozen base (`[compute] base = "nf4" | "int8"`): the stored codes and
//! scales equal an independent numpy implementation's (`tests/fixtures/make_quant_fixture.py`),
//! a folder in bitsandbytes' 4-bit layout loads as stored and equals what graft
//! quantizes, training over either scheme resumes to the checkpoint of an uninterrupted
//! run, and a merged export says it merged into the dequantized base. On the shared
//! llama-tiny fixture, through the real loader, store and binary.

use crate::common::{family_fixture, graft_in, graft_ok_in, llama_tiny, lora_workspace, stderr};
use burn::backend::Flex;
use burn::tensor::{DType, Int, Tensor, TensorData};
use graft::model::quantize::{BlockScales, QuantScheme, QuantizedHost};
use graft::model::weights::{read_safetensors, RawTensor};
use graft::model::{load_model_dir_as, CausalLm};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn load(dir: &Path, quantize: Option<QuantScheme>) -> CausalLm<Flex> {
    load_model_dir_as::<Flex>(dir, &Default::default(), quantize).expect("the fixture loads")
}

/// The first layer's gate projection as stored on the device, read back.
fn gate_proj(model: &CausalLm<Flex>) -> QuantizedHost {
    model.model.layers[0]
        .mlp
        .gate_proj
        .as_ref()
        .and_then(|linear| linear.quantized.as_ref())
        .expect("the gate projection is quantized")
        .to_host()
}

fn gate_proj_dequantized(model: &CausalLm<Flex>) -> Vec<f32> {
    let linear = model.model.layers[0].mlp.gate_proj.as_ref().unwrap();
    let weight = linear.quantized.as_ref().unwrap();
    weight.dequantize(DType::F32).into_data().to_vec().unwrap()
}

fn reference() -> BTreeMap<String, RawTensor> {
    read_safetensors(&family_fixture("quant-reference.safetensors")).unwrap()
}

fn floats(reference: &BTreeMap<String, RawTensor>, name: &str) -> Vec<f32> {
    reference[name].to_f32(name).unwrap()
}

#[test]
fn nf4_codes_and_double_quantized_absmax_equal_the_numpy_reference() {
    let reference = reference();
    let model = load(&llama_tiny(), Some(QuantScheme::Nf4));
    let stored = gate_proj(&model);
    assert_eq!(stored.shape, [172, 64]);
    assert_eq!(
        stored.codes, reference["nf4.codes"].bytes,
        "packed NF4 codes"
    );
    let BlockScales::Double {
        codes,
        nested_absmax,
        nested_map,
        nested_block,
        offset,
    } = &stored.scales
    else {
        panic!("NF4 scales are double-quantized by default");
    };
    assert_eq!(*nested_block, 256);
    assert_eq!(codes, &reference["nf4.absmax_codes"].bytes, "absmax codes");
    assert_eq!(nested_absmax, &floats(&reference, "nf4.nested_absmax"));
    assert_eq!(nested_map, &floats(&reference, "nf4.nested_map"));
    assert_eq!(vec![*offset], floats(&reference, "nf4.offset"));
    // The device's dequantization (burn ops) gives numpy's values to the bit.
    assert_eq!(
        gate_proj_dequantized(&model),
        floats(&reference, "nf4.dequantized")
    );
}

#[test]
fn int8_codes_and_scales_equal_the_numpy_reference() {
    let reference = reference();
    let model = load(&llama_tiny(), Some(QuantScheme::Int8));
    let stored = gate_proj(&model);
    assert_eq!(stored.codes, reference["int8.codes"].bytes, "int8 codes");
    assert_eq!(
        stored.scales,
        BlockScales::Plain(floats(&reference, "int8.scales"))
    );
    assert_eq!(
        gate_proj_dequantized(&model),
        floats(&reference, "int8.dequantized")
    );
}

/// Logits of `model` on a fixed sequence, flattened.
fn logits(model: &CausalLm<Flex>) -> Vec<f32> {
    let ids: Vec<i32> = (0..24).map(|i| (i * 37 + 11) % 320).collect();
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [2, 12]), &Default::default());
    model.forward(ids).into_data().to_vec().unwrap()
}

fn max_relative(ours: &[f32], theirs: &[f32]) -> f32 {
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

#[test]
fn a_bitsandbytes_4bit_folder_loads_as_stored_and_equals_the_weights_graft_quantizes() {
    let bnb = load(&family_fixture("llama-tiny-bnb-nf4"), None);
    let ours = load(&llama_tiny(), Some(QuantScheme::Nf4));
    assert_eq!(bnb.base_quantization(), Some(QuantScheme::Nf4));
    for (layer_bnb, layer_ours) in bnb.model.layers.iter().zip(&ours.model.layers) {
        let pairs = [
            (&layer_bnb.self_attn.q_proj, &layer_ours.self_attn.q_proj),
            (&layer_bnb.self_attn.k_proj, &layer_ours.self_attn.k_proj),
            (&layer_bnb.self_attn.v_proj, &layer_ours.self_attn.v_proj),
            (&layer_bnb.mlp.gate_proj, &layer_ours.mlp.gate_proj),
            (&layer_bnb.mlp.up_proj, &layer_ours.mlp.up_proj),
        ];
        for (a, b) in pairs {
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
            assert_eq!(
                a.quantized.as_ref().unwrap().to_host(),
                b.quantized.as_ref().unwrap().to_host()
            );
        }
        for (a, b) in [
            (&layer_bnb.self_attn.o_proj, &layer_ours.self_attn.o_proj),
            (&layer_bnb.mlp.down_proj, &layer_ours.mlp.down_proj),
        ] {
            assert_eq!(
                a.quantized.as_ref().unwrap().to_host(),
                b.quantized.as_ref().unwrap().to_host()
            );
        }
    }
    // The head stays in floats in both.
    assert!(bnb.lm_head.as_ref().unwrap().quantized.is_none());
    let (from_bnb, from_ours) = (logits(&bnb), logits(&ours));
    assert_eq!(from_bnb, from_ours, "the same values give the same logits");
    // Quantization error, measured: NF4 and int8 logits against the f32 model's.
    let exact = logits(&load(&llama_tiny(), None));
    let nf4_error = max_relative(&from_ours, &exact);
    let int8_error = max_relative(
        &logits(&load(&llama_tiny(), Some(QuantScheme::Int8))),
        &exact,
    );
    eprintln!("max |logit difference| / max |logit|: nf4 {nf4_error:.2e}, int8 {int8_error:.2e}");
    // Measured 1.29e-1 and 8.97e-3: the fixture's random weights are all noise, so
    // each logit carries every weight's rounding (NF4's 16 levels round a Gaussian
    // weight by about a tenth of its size).
    assert!(nf4_error > 0.0 && nf4_error < 0.2, "nf4 {nf4_error:e}");
    assert!(int8_error > 0.0 && int8_error < 0.02, "int8 {int8_error:e}");
}

fn ok(dir: &Path, store: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&graft_ok_in(dir, store, args)).unwrap_or(Value::Null)
}

/// `graft train a.toml` with each of `sets` as `--set`, its JSON outcome.
fn train(dir: &Path, store: &Path, sets: &[&str]) -> Value {
    let mut args = vec!["train", "a.toml"];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(["-q", "--json"]);
    ok(dir, store, &args)
}

fn last_checkpoint(outcome: &Value) -> Value {
    outcome["checkpoints"].as_array().unwrap().last().unwrap()["id"].clone()
}

/// Stops the trainer once `after` steps are done, as Ctrl-C does.
struct StopAfter {
    after: u64,
    done: u64,
}

impl graft::train::Events for StopAfter {
    fn step(&mut self, step: u64, _loss: f64, _lr: f64) {
        self.done = step;
    }
    fn should_stop(&mut self) -> bool {
        self.done >= self.after
    }
}

/// What the trainer says while the base loads.
#[derive(Default)]
struct LoadWatcher {
    loading: Vec<(u64, u64)>,
    messages: Vec<String>,
}

impl graft::train::Events for LoadWatcher {
    fn loading(&mut self, done: u64, total: u64) {
        self.loading.push((done, total));
    }
    fn message(&mut self, text: &str) {
        self.messages.push(text.to_string());
    }
}

#[test]
fn loading_a_quantized_base_reports_its_bytes_up_to_the_whole_folder_and_where_the_time_went() {
    let work = lora_workspace(&llama_tiny());
    let dir = work.path();
    let store = graft::store::Store::open_or_init(&dir.join("store")).unwrap();
    let sets = ["compute.base=nf4".to_string(), "train.steps=1".to_string()];
    let experiment = graft::train::Experiment::load(&dir.join("a.toml"), &sets).unwrap();
    let plan = graft::train::plan(&store, &experiment).unwrap();
    let compute = graft::compute::Compute::new(Default::default(), experiment.compute);
    let mut watcher = LoadWatcher::default();
    graft::train::execute::<graft::model::CpuTrainBackend>(
        &Default::default(),
        &store,
        &plan,
        graft::store::ExecutionKind::Train,
        &compute,
        &mut graft::store::StoreRecorder::new(store.clone()),
        &mut watcher,
    )
    .unwrap();
    let total = graft::model::tensor_files::TensorFiles::open(&llama_tiny())
        .unwrap()
        .byte_len();
    let reports = &watcher.loading;
    // One report a tensor taken: the embedding, 2 x (7 projections + 2 norms), the norm.
    let tensors_taken = 20;
    assert!(reports.len() >= tensors_taken, "{} reports", reports.len());
    assert!(reports.iter().all(|&(_, of)| of == total), "{reports:?}");
    assert!(
        reports.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "bytes read only grow: {reports:?}"
    );
    assert_eq!(
        reports.last().map(|r| r.0),
        Some(total),
        "ends with every byte"
    );
    let line = watcher
        .messages
        .iter()
        .find(|m| m.starts_with("loaded the base model"))
        .expect("a line says the base loaded");
    assert!(
        line.contains("reading")
            && line.contains("quantizing to nf4")
            && line.contains("to the device"),
        "{line}"
    );

    // The binary prints the same line on stderr (the bar itself is drawn only on a
    // terminal).
    let output = graft_in(
        dir,
        &dir.join("cli-store"),
        &[
            "train",
            "a.toml",
            "--set",
            "compute.base=int8",
            "--set",
            "train.steps=1",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("quantizing to int8"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn training_over_an_nf4_or_int8_base_resumes_and_recomputes_to_the_uninterrupted_checkpoint() {
    let work = lora_workspace(&llama_tiny());
    let dir = work.path();
    let default_run = train(dir, &dir.join("plain"), &[])["run"].clone();
    for scheme in ["nf4", "int8"] {
        let set = format!("compute.base={scheme}");
        let reference_store = dir.join(format!("reference-{scheme}"));
        let uninterrupted = train(dir, &reference_store, &[&set]);
        assert_ne!(
            uninterrupted["run"], default_run,
            "{scheme} is another recipe"
        );
        // Activation checkpointing recomputes the same products: the same weights.
        let recomputed = train(
            dir,
            &dir.join(format!("balanced-{scheme}")),
            &[&set, "compute.checkpointing=balanced"],
        );
        assert_eq!(
            last_checkpoint(&recomputed),
            last_checkpoint(&uninterrupted),
            "{scheme} with checkpointing"
        );
        // The same recipe stopped after step 3 in another store, then resumed.
        let store_path = dir.join(format!("stopped-{scheme}"));
        let store = graft::store::Store::open_or_init(&store_path).unwrap();
        let experiment =
            graft::train::Experiment::load(&dir.join("a.toml"), std::slice::from_ref(&set))
                .unwrap();
        let plan = graft::train::plan(&store, &experiment).unwrap();
        let compute = graft::compute::Compute::new(Default::default(), experiment.compute);
        let mut recorder = graft::store::StoreRecorder::new(store.clone());
        let stopped = graft::train::execute::<graft::model::CpuTrainBackend>(
            &Default::default(),
            &store,
            &plan,
            graft::store::ExecutionKind::Train,
            &compute,
            &mut recorder,
            &mut StopAfter { after: 3, done: 0 },
        )
        .unwrap();
        assert!(
            stopped.interrupted && stopped.final_step == 3,
            "stopped after step 3"
        );
        drop(store);
        let run = uninterrupted["run"].as_str().unwrap();
        let resumed = ok(dir, &store_path, &["resume", run, "-q", "--json"]);
        assert_eq!(
            last_checkpoint(&resumed),
            last_checkpoint(&uninterrupted),
            "{scheme}: the resumed run ends on the uninterrupted run's checkpoint"
        );
    }
}

#[test]
fn a_merged_export_over_nf4_merges_into_the_dequantized_base_and_says_so() {
    let work = lora_workspace(&llama_tiny());
    let dir = work.path();
    let store = dir.join("store");
    let outcome = train(dir, &store, &["compute.base=nf4"]);
    let run = outcome["run"].as_str().unwrap().to_string();
    let merged = dir.join("merged");
    let output = graft_in(
        dir,
        &store,
        &["export", &run, "--merged", merged.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("merged into its dequantized weights"),
        "{}",
        stderr(&output)
    );
    let bytes = std::fs::read(merged.join("model.safetensors")).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let note = metadata.metadata().as_ref().unwrap()["graft_merged_into"].clone();
    assert!(note.contains("dequantized nf4 base"), "{note}");
    // The merged f32 model computes what the adapter over the NF4 base computes.
    let trained = {
        let store = graft::store::Store::open(&store).unwrap();
        graft::train::restore::restore::<Flex>(&store, &run, &Default::default())
            .unwrap()
            .model
    };
    assert_eq!(trained.base_quantization(), Some(QuantScheme::Nf4));
    let error = max_relative(&logits(&load(&merged, None)), &logits(&trained));
    assert!(error < 1e-5, "merged vs adapter over nf4: {error:e}");
    // --peft is unchanged: the adapter alone.
    let peft = dir.join("peft");
    ok(
        dir,
        &store,
        &["export", &run, "--peft", peft.to_str().unwrap()],
    );
    assert!(peft.join("adapter_model.safetensors").is_file());
}

#[test]
fn a_quantized_base_refuses_what_it_cannot_train_and_a_4bit_folder_needs_nf4() {
    let bnb = family_fixture("llama-tiny-bnb-nf4");
    let work = lora_workspace(&bnb);
    let dir = work.path();
    let store = dir.join("store");
    assert_refused(dir, &store, &["train", "a.toml"], "compute.base = \"nf4\"");
    // The same folder trains with the key set, from its stored codes.
    train(dir, &store, &["compute.base=nf4"]);
    // Registered, it counts the values its codes pack, as the float folder does.
    let parameters = |folder: &Path, store: &Path| -> Value {
        graft_ok_in(dir, store, &["model", "add", folder.to_str().unwrap()]);
        let listed: Value =
            serde_json::from_str(&graft_ok_in(dir, store, &["model", "ls", "--json"])).unwrap();
        listed[0]["summary"]["parameters"].clone()
    };
    let float_count = parameters(&llama_tiny(), &dir.join("float-models"));
    assert!(float_count.as_u64().is_some_and(|n| n > 0), "{float_count}");
    assert_eq!(parameters(&bnb, &dir.join("bnb-models")), float_count);
    // Full fine-tuning would have to update quantized weights.
    let work_plain = lora_workspace(&llama_tiny());
    let adapted = std::fs::read_to_string(work_plain.path().join("a.toml")).unwrap();
    std::fs::write(
        work_plain.path().join("full.toml"),
        adapted.replace("[adapter]\nrank = 4\nalpha = 8\n", ""),
    )
    .unwrap();
    assert_refused(
        work_plain.path(),
        &work_plain.path().join("store"),
        &["train", "full.toml", "--set", "compute.base=int8"],
        "compute.base = \"int8\"",
    );
}

/// Runs graft expecting a refusal whose message contains `needle`.
fn assert_refused(dir: &Path, store: &Path, args: &[&str], needle: &str) {
    let output = graft_in(dir, store, args);
    assert!(
        !output.status.success() && stderr(&output).contains(needle),
        "graft {args:?}: {}",
        stderr(&output)
    );
}

/// Bytes the process's allocator holds in use (heap and mmapped blocks).
fn bytes_in_use() -> usize {
    // SAFETY: mallinfo2 only reads glibc's counters.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// Run in a process of its own by the test below (`GRAFT_TEST_MEMORY_CHILD`), so
/// that no other test allocates while it measures: after the forward pass of a
/// quantized projection, before the backward pass, the process holds the output
/// and the codes but not the dequantized f32 weight (16 MiB here), which the same
/// product written as `x · Wᵀ` over the dequantized weight keeps for its backward pass.
#[test]
fn memory_child() {
    if std::env::var("GRAFT_TEST_MEMORY_CHILD").is_err() {
        return;
    }
    type B = burn::backend::Autodiff<Flex>;
    let device = Default::default();
    let shape = [2048, 2048];
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 1000.0)
        .collect();
    let host = graft::model::quantize::quantize_nf4(&values, shape);
    drop(values);
    let weight = graft::model::quantized::QuantizedWeight::<B>::from_host(&host, &device);
    let x = Tensor::<B, 2>::from_data(TensorData::new(vec![0.5f32; 4 * 2048], [4, 2048]), &device)
        .require_grad();
    let weight_bytes = shape[0] * shape[1] * 4;

    let before = bytes_in_use();
    let out = graft::compute::quant_product::quantized_product_autodiff(x.clone(), &weight);
    let node_held = bytes_in_use().saturating_sub(before);
    let grads = out.sum().backward();
    assert!(x.grad(&grads).is_some());

    let before = bytes_in_use();
    let out = {
        let dense = weight.dequantize(DType::F32);
        x.clone().matmul(dense.transpose())
    };
    let dense_held = bytes_in_use().saturating_sub(before);
    drop(out);
    // The adapted projection's node over the same weight keeps none either.
    let lora_a = Tensor::<B, 2>::from_data(
        TensorData::new(vec![0.01f32; 2048 * 16], [2048, 16]),
        &device,
    )
    .require_grad();
    let lora_b = Tensor::<B, 2>::zeros([16, 2048], &device).require_grad();
    let before = bytes_in_use();
    let out = graft::compute::lora_product::quantized_lora_projection_autodiff(
        x.clone(),
        &weight,
        lora_a,
        lora_b,
        2.0,
        DType::F32,
    );
    let lora_held = bytes_in_use().saturating_sub(before);
    drop(out);
    println!("held between the passes: node {node_held} bytes, adapted node {lora_held} bytes, x·Wᵀ {dense_held} bytes");
    assert!(
        lora_held < weight_bytes / 4,
        "the adapted node keeps no float weight: {lora_held}"
    );
    assert!(
        dense_held >= weight_bytes,
        "the measure sees a kept weight: {dense_held}"
    );
    assert!(
        node_held < weight_bytes / 4,
        "the node keeps no float weight: {node_held}"
    );
}

#[test]
fn a_quantized_projection_keeps_no_float_weight_between_the_passes() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "model_quantized::memory_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GRAFT_TEST_MEMORY_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("held between the passes"),
        "{text}"
    );
}
