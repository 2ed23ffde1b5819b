//! What graft hands back after training, through the binary (issue 14):
//! exports that keep every trained weight and never overwrite a base model,
//! eval and generate that read data the way the run did, and the record's
//! read commands (`runs --where`, `tag`, `gc`, `show`) saying what they mean.

use crate::common::llama_tiny as fixture;
use crate::common::write_synth;
use crate::common::{graft_fails_in, graft_in, graft_ok_in, stdout};
use burn::tensor::{Int, Tensor};
use graft::model::weights::read_safetensors;
use graft::model::{load_adapter, load_model_dir, CausalLm, CpuBackend};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A work folder with reverse-task data, and its store.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        write_synth(
            dir.path(),
            &[
                ("train.jsonl", "reverse", 32, 1),
                ("val.jsonl", "reverse", 8, 2),
            ],
        );
        Work { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    fn ok(&self, args: &[&str]) -> String {
        graft_ok_in(self.path(), &self.store(), args)
    }

    fn fails(&self, args: &[&str]) -> String {
        graft_fails_in(self.path(), &self.store(), args)
    }

    /// Train a few LoRA steps on `base` with `layers` of the base unfrozen
    /// from the start, template `plain`, seq_len 64; tag the run `tag`.
    fn train(&self, tag: &str, base: &Path, layers: &str) -> Value {
        let experiment = format!(
            r#"[model]
base = "{}"

[adapter]
rank = 4
alpha = 8

[unfreeze]
schedule = [{{ at = 0, layers = "{layers}" }}]

[data]
train = [{{ path = "train.jsonl", format = "chat" }}]
eval = [{{ path = "val.jsonl", name = "reverse" }}]
seq_len = 64
template = "plain"

[optim]
lr = 5e-3
batch_size = 4

[train]
steps = 4
seed = 5
eval_every = 2
checkpoint_every = 2
"#,
            base.display()
        );
        let file = format!("{tag}.toml");
        std::fs::write(self.path().join(&file), experiment).unwrap();
        json(&self.ok(&["train", &file, "--tag", tag, "-q", "--json"]))
    }
}

fn tensor_values(path: &Path, name: &str) -> Vec<f32> {
    let tensors = read_safetensors(path).unwrap();
    let tensor = tensors
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name}: {:?}", path.display(), tensors.keys()));
    tensor.to_f32(name).unwrap()
}

#[test]
fn peft_export_carries_trained_embeddings_and_head_in_modules_to_save() {
    for (fixture_name, tied) in [("llama-tiny", false), ("qwen2-tiny", true)] {
        let work = Work::new();
        let base_dir = fixture().with_file_name(fixture_name);
        work.train("heads", &base_dir, "embed,lm_head");
        work.ok(&["export", "heads", "--peft", "adapter"]);
        work.ok(&["export", "heads", "--merged", "merged"]);

        let config_path = work.path().join("adapter/adapter_config.json");
        let config = json(&std::fs::read_to_string(config_path).unwrap());
        assert_eq!(
            config["modules_to_save"],
            serde_json::json!(["embed_tokens", "lm_head"]),
            "{fixture_name}: {config}"
        );
        // PEFT saves a modules_to_save copy under the module's own path (the
        // `modules_to_save.<adapter>` part of its in-memory name is dropped).
        // A tied model's head is its embedding: PEFT's lm_head copy gets it too.
        let adapter = work.path().join("adapter/adapter_model.safetensors");
        let merged = work.path().join("merged/model.safetensors");
        let base = base_dir.join("model.safetensors");
        let embedding = tensor_values(&merged, "model.embed_tokens.weight");
        assert_eq!(
            tensor_values(&adapter, "base_model.model.model.embed_tokens.weight"),
            embedding
        );
        assert_ne!(
            embedding,
            tensor_values(&base, "model.embed_tokens.weight"),
            "{fixture_name}: the embedding trained, so it differs from the base"
        );
        let head = if tied {
            embedding
        } else {
            tensor_values(&merged, "lm_head.weight")
        };
        assert_eq!(
            tensor_values(&adapter, "base_model.model.lm_head.weight"),
            head,
            "{fixture_name}"
        );

        // The adapter on its base is the merged model.
        let device = Default::default();
        let ids = Tensor::<CpuBackend, 2, Int>::from_data([[1, 5, 9, 13, 2, 7]], &device);
        let logits = |model: CausalLm<CpuBackend>| -> Vec<f32> {
            model.forward(ids.clone()).into_data().to_vec().unwrap()
        };
        let loaded = load_adapter(
            load_model_dir::<CpuBackend>(&base_dir, &device).unwrap(),
            &work.path().join("adapter"),
        )
        .unwrap();
        let expected = logits(load_model_dir(&work.path().join("merged"), &device).unwrap());
        let actual = logits(loaded);
        let worst = actual
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "{fixture_name}: adapter vs merged logits differ by {worst}"
        );
    }
}

#[test]
fn peft_export_refuses_trained_tensors_it_cannot_carry_and_names_them() {
    let work = Work::new();
    work.train("all", &fixture(), "all");
    let stderr = work.fails(&["export", "all", "--peft", "adapter"]);
    for expected in [
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "--merged",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(
        !work.path().join("adapter").exists(),
        "a refused export writes nothing"
    );
    work.ok(&["export", "all", "--merged", "merged"]);
}

#[test]
fn export_into_a_non_empty_folder_needs_force() {
    let work = Work::new();
    work.train("run", &fixture(), "none");
    for (flag, folder) in [("--peft", "adapter"), ("--merged", "merged")] {
        let dir = work.path().join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let stderr = work.fails(&["export", "run", flag, folder]);
        assert!(
            stderr.contains(folder) && stderr.contains("not empty") && stderr.contains("--force"),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "nothing written"
        );
        work.ok(&["export", "run", flag, folder, "--force"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
            "mine"
        );
    }
    assert!(work.path().join("adapter/adapter_config.json").is_file());
    assert!(work.path().join("merged/model.safetensors").is_file());
}

#[test]
fn export_never_overwrites_a_registered_model_folder() {
    let work = Work::new();
    let base = work.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    for file in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(fixture().join(file), base.join(file)).unwrap();
    }
    work.train("run", &base, "none");
    let before = std::fs::read(base.join("model.safetensors")).unwrap();
    for force in [false, true] {
        let mut args = vec!["export", "run", "--merged", "base"];
        if force {
            args.push("--force");
        }
        let stderr = work.fails(&args);
        assert!(
            stderr.contains("registered model") && stderr.contains("base"),
            "{stderr}"
        );
    }
    assert_eq!(
        std::fs::read(base.join("model.safetensors")).unwrap(),
        before
    );
    // The run still loads its base.
    work.ok(&["eval", "run", "--data", "val.jsonl"]);
}

#[test]
fn eval_of_a_checkpoint_reads_data_as_its_run_did_unless_told_otherwise() {
    let work = Work::new();
    work.train("run", &fixture(), "none");
    let shown = json(&work.ok(&["show", "run@last", "--json"]));
    let recorded = shown["metrics"]["eval_loss"].as_f64().unwrap();

    let evaluated = json(&work.ok(&["eval", "run@last", "--data", "val.jsonl", "--json"]));
    assert_eq!(evaluated["template"], "plain", "{evaluated}");
    assert_eq!(evaluated["seq_len"], 64, "{evaluated}");
    let loss = evaluated["loss"].as_f64().unwrap();
    assert!(
        (loss - recorded).abs() < 1e-5,
        "{loss} vs recorded {recorded}"
    );

    let chatml = json(&work.ok(&[
        "eval",
        "run@last",
        "--data",
        "val.jsonl",
        "--template",
        "chatml",
        "--json",
    ]));
    assert_eq!(chatml["template"], "chatml");
    assert!(
        (chatml["loss"].as_f64().unwrap() - recorded).abs() > 1e-3,
        "a flag overrides the run's template: {chatml}"
    );
}

#[test]
fn generate_puts_the_prompt_through_the_runs_chat_template_unless_raw() {
    let work = Work::new();
    work.train("run", &fixture(), "none");
    let prompt = "Reverse the string: abc";
    let base = ["generate", "run", prompt, "--max-tokens", "4", "--json"];

    let templated = json(&work.ok(&base));
    assert_eq!(templated["template"], "plain");
    assert_eq!(
        templated["model_input"],
        format!("user: {prompt}\nassistant:"),
        "{templated}"
    );

    let mut args = base.to_vec();
    args.extend(["--template", "chatml"]);
    let chatml = json(&work.ok(&args));
    assert_eq!(
        chatml["model_input"],
        format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    );

    let mut args = base.to_vec();
    args.push("--raw");
    let raw = json(&work.ok(&args));
    assert_eq!(raw["model_input"], prompt);

    let text = work.ok(&["generate", "run", prompt, "--max-tokens", "4"]);
    assert!(text.starts_with(prompt), "{text}");
}

#[test]
fn runs_where_rejects_unknown_keys_and_unquoted_strings() {
    let work = Work::new();
    work.train("run", &fixture(), "none");
    let stderr = work.fails(&["runs", "--where", "optim.lrr < 1"]);
    assert!(
        stderr.contains("unknown key `optim.lrr`") && stderr.contains("did you mean `optim.lr`?"),
        "{stderr}"
    );
    let stderr = work.fails(&["runs", "--where", "best.eval_los < 9"]);
    assert!(
        stderr.contains("did you mean `best.eval_loss`?"),
        "{stderr}"
    );
    let stderr = work.fails(&["runs", "--where", "status=completed"]);
    assert!(
        stderr.contains("`completed` is not a key") && stderr.contains("status == 'completed'"),
        "{stderr}"
    );
    let stderr = work.fails(&["runs", "--sort", "optim.lrr"]);
    assert!(stderr.contains("optim.lrr"), "{stderr}");

    let listed = work.ok(&["runs", "--where", "status == 'completed' and optim.lr < 1"]);
    assert_eq!(listed.lines().last(), Some("1 run"), "{listed}");
    let none = work.ok(&["runs", "--where", "optim.lr > 1"]);
    assert_eq!(none.lines().last(), Some("0 runs"), "{none}");
}

#[test]
fn tag_moves_only_with_force_and_lists_tags() {
    let work = Work::new();
    let first = work.train("first", &fixture(), "none");
    let second = work.train("second", &fixture(), "embed");
    let first_run = first["run"].as_str().unwrap();
    let second_run = second["run"].as_str().unwrap();

    let stderr = work.fails(&["tag", "first", "second"]);
    assert!(
        stderr.contains("`first` already names run") && stderr.contains("--force"),
        "{stderr}"
    );
    let show = |tag: &str| json(&work.ok(&["show", tag, "--json"]))["id"].clone();
    assert_eq!(show("first"), first_run, "a refused move leaves the tag");
    work.ok(&["tag", "first", "first"]); // naming the same target again is fine

    let moved = work.ok(&["tag", "first", "second", "--force"]);
    assert!(moved.contains("moved from run"), "{moved}");
    assert_eq!(show("first"), second_run);

    let tags = json(&work.ok(&["tag", "--list", "--json"]));
    let names: Vec<(&str, &str)> = tags
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["target"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("first", second_run), ("second", second_run)]);
    let text = work.ok(&["tag", "--list"]);
    assert!(
        text.contains("first") && text.ends_with("2 tags\n"),
        "{text}"
    );
}

#[test]
fn gc_prints_a_summary_and_lists_ids_only_when_verbose() {
    let work = Work::new();
    work.train("run", &fixture(), "none");
    let store = graft::store::Store::open(&work.store()).unwrap();
    let garbage: Vec<String> = (0..3)
        .map(|i| {
            store
                .objects()
                .put_bytes(format!("garbage {i}").as_bytes())
                .unwrap()
                .to_hex()
        })
        .collect();
    drop(store);

    let dry = work.ok(&["gc", "--grace", "0", "--dry-run"]);
    assert_eq!(dry.lines().count(), 1, "{dry}");
    assert!(dry.contains("would remove 3 objects"), "{dry}");
    assert!(!garbage.iter().any(|id| dry.contains(id.as_str())), "{dry}");

    let verbose = work.ok(&["gc", "--grace", "0", "--dry-run", "--verbose"]);
    assert!(
        garbage.iter().all(|id| verbose.contains(id.as_str())),
        "{verbose}"
    );

    let removed = work.ok(&["gc", "--grace", "0"]);
    assert!(removed.starts_with("removed 3 objects ("), "{removed}");
    work.ok(&["verify"]);
}

#[test]
fn show_prints_the_summary_first_and_tensor_hashes_only_on_request() {
    let work = Work::new();
    let trained = work.train("run", &fixture(), "all");
    let run = trained["run"].as_str().unwrap();
    let text = work.ok(&["show", "run"]);
    let first: Vec<&str> = text.lines().take(4).collect();
    assert_eq!(first[..2], ["kind: run", &format!("id: {run}")], "{text}");
    assert!(first[3].starts_with("status: completed"), "{text}");
    assert!(
        !text.contains("input_layernorm"),
        "tensor names only with --tensors: {text}"
    );
    assert!(text.contains("--tensors"), "{text}");

    let checkpoint = work.ok(&["show", "run@last"]);
    assert!(checkpoint.starts_with("kind: checkpoint\n"), "{checkpoint}");
    assert!(!checkpoint.contains("input_layernorm"), "{checkpoint}");
    let listed = work.ok(&["show", "run@last", "--tensors"]);
    assert!(
        listed.contains("model.layers.0.input_layernorm.weight"),
        "{listed}"
    );
    let full = json(&work.ok(&["show", "run@last", "--json"]));
    assert!(full["tensors"]["model.layers.0.input_layernorm.weight"].is_string());
    let status = graft_in(work.path(), &work.store(), &["show", "run", "--json"]);
    assert!(stdout(&status).contains("model.layers.0.input_layernorm.weight"));
}
