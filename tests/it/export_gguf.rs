//! `graft export REF --gguf FILE [--quant ...]` through the binary, read back with an
//! independent GGUF reader (candle's `gguf_file`): the merged model's tensors under
//! llama.cpp's names and layouts, the family's hyperparameters, the tokenizer and the
//! chat template in the metadata, and the export's refusals. That llama.cpp itself
//! loads the files and computes the same logits is `benches/gguf_roundtrip.sh`'s job.

use crate::common::{family_fixture, graft_fails_in, graft_ok_in, shared_fixture, write_synth};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use graft::model::weights::read_safetensors;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// A work folder holding a copy of a fixture (with a tokenizer_config.json that
/// carries a chat template) and a store with one short LoRA run on it.
struct Exported {
    dir: tempfile::TempDir,
    fixture: &'static str,
}

impl Exported {
    fn trained(fixture: &'static str) -> Exported {
        Exported::trained_with(fixture, |_| {})
    }

    /// As [`Exported::trained`], with the copied config.json changed by `edit` first.
    fn trained_with(fixture: &'static str, edit: impl Fn(&mut serde_json::Value)) -> Exported {
        let source = match fixture {
            "llama-tiny" | "qwen2-tiny" => shared_fixture(fixture),
            _ => family_fixture(fixture),
        };
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(source.join(file), base.join(file)).unwrap();
        }
        let mut model_config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap())
                .unwrap();
        edit(&mut model_config);
        std::fs::write(base.join("config.json"), model_config.to_string()).unwrap();
        let config = serde_json::json!({
            "chat_template": TEMPLATE, "bos_token": "<|bos|>", "eos_token": "<|eos|>",
            "pad_token": "<|pad|>",
        });
        std::fs::write(base.join("tokenizer_config.json"), config.to_string()).unwrap();
        write_synth(dir.path(), &[("train.jsonl", "reverse", 16, 1)]);
        let experiment = r#"[model]
base = "base"

[adapter]
rank = 4
alpha = 8

[data]
train = [{ path = "train.jsonl", format = "chat" }]
seq_len = 48
template = "plain"
val_fraction = 0.0

[optim]
lr = 2e-2
batch_size = 4

[train]
steps = 3
seed = 3
baseline_eval = false
checkpoint_every = 3
"#;
        std::fs::write(dir.path().join("exp.toml"), experiment).unwrap();
        let work = Exported { dir, fixture };
        work.ok(&["train", "exp.toml", "--tag", "run", "-q"]);
        work
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ok(&self, args: &[&str]) -> String {
        graft_ok_in(self.path(), &self.path().join("store"), args)
    }

    fn fails(&self, args: &[&str]) -> String {
        graft_fails_in(self.path(), &self.path().join("store"), args)
    }

    fn base_config(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path().join("base/config.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

struct Gguf {
    content: Content,
    file: std::fs::File,
}

impl Gguf {
    fn open(path: &Path) -> Gguf {
        let mut file = std::fs::File::open(path).unwrap();
        let content = Content::read(&mut file)
            .unwrap_or_else(|e| panic!("{} is not a GGUF file: {e}", path.display()));
        Gguf { content, file }
    }

    fn meta(&self, key: &str) -> &Value {
        self.content
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("no metadata key {key}"))
    }

    fn u32(&self, key: &str) -> u32 {
        self.meta(key).to_u32().unwrap()
    }

    fn string(&self, key: &str) -> String {
        self.meta(key).to_string().unwrap().clone()
    }

    fn dtype(&self, name: &str) -> GgmlDType {
        self.content.tensor_infos[name].ggml_dtype
    }

    /// A tensor's shape (row-major, as Hugging Face writes it) and its values.
    fn values(&mut self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let tensor = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .unwrap();
        let shape = tensor.shape().dims().to_vec();
        let values = tensor
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (shape, values)
    }
}

/// The test's own table of what llama.cpp calls each Hugging Face tensor and how
/// its values change (see llama.cpp's gguf-py tensor_mapping.py and the per-family
/// converters): q/k rows interleaved per head for the `llama` architecture, one added
/// to Gemma's norms.
fn expected_gguf(
    arch: &str,
    hf: &str,
    heads: usize,
    kv_heads: usize,
) -> (String, Option<usize>, f32) {
    let gemma = arch.starts_with("gemma");
    let offset = if gemma && hf.ends_with("norm.weight") {
        1.0
    } else {
        0.0
    };
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight".to_string()),
        "model.norm.weight" => Some("output_norm.weight".to_string()),
        "lm_head.weight" => Some("output.weight".to_string()),
        _ => None,
    };
    if let Some(name) = top {
        return (name, None, offset);
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let (module, suffix) = part.rsplit_once('.').unwrap();
    let mut interleave = None;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => {
            interleave = (arch == "llama").then_some(heads);
            "attn_q"
        }
        "self_attn.k_proj" => {
            interleave = (arch == "llama").then_some(kv_heads);
            "attn_k"
        }
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unexpected module {other}"),
    };
    (format!("blk.{layer}.{gguf}.{suffix}"), interleave, offset)
}

/// Rows of each head from half-split to pair-interleaved order.
fn interleaved(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let cols: usize = shape[1..].iter().product();
    let head_dim = shape[0] / heads;
    let mut out = Vec::with_capacity(values.len());
    for head in 0..heads {
        for row in 0..head_dim {
            let source = head * head_dim
                + if row % 2 == 0 {
                    row / 2
                } else {
                    head_dim / 2 + row / 2
                };
            out.extend_from_slice(&values[source * cols..(source + 1) * cols]);
        }
    }
    out
}

const FAMILIES: [(&str, &str); 6] = [
    ("llama-tiny", "llama"),
    ("qwen2-tiny", "qwen2"),
    ("qwen3-tiny", "qwen3"),
    ("phi3-tiny", "phi3"),
    ("gemma2-tiny", "gemma2"),
    ("gemma3-tiny", "gemma3"),
];

#[test]
fn f16_export_holds_the_merged_weights_under_llama_cpp_names_with_tokenizer_and_template() {
    for (fixture, arch) in FAMILIES {
        let work = Exported::trained(fixture);
        let out = work.ok(&["export", "run", "--gguf", "model.gguf"]);
        assert!(
            out.contains("model.gguf") && out.contains(arch),
            "{fixture}: {out}"
        );
        work.ok(&["export", "run", "--merged", "merged"]);
        let leftovers: Vec<String> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|name| name.contains("partial"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{fixture}: temporary files left: {leftovers:?}"
        );

        let mut gguf = Gguf::open(&work.path().join("model.gguf"));
        let config = work.base_config();
        let number = |key: &str| config[key].as_u64().unwrap() as u32;
        assert_eq!(gguf.string("general.architecture"), arch, "{fixture}");
        assert_eq!(gguf.u32("general.file_type"), 1, "{fixture}: MOSTLY_F16");
        for (key, expected) in [
            ("block_count", number("num_hidden_layers")),
            ("embedding_length", number("hidden_size")),
            ("feed_forward_length", number("intermediate_size")),
            ("context_length", number("max_position_embeddings")),
            ("attention.head_count", number("num_attention_heads")),
            ("attention.head_count_kv", number("num_key_value_heads")),
            ("vocab_size", number("vocab_size")),
        ] {
            assert_eq!(
                gguf.u32(&format!("{arch}.{key}")),
                expected,
                "{fixture}: {key}"
            );
        }
        let eps = gguf
            .meta(&format!("{arch}.attention.layer_norm_rms_epsilon"))
            .to_f32()
            .unwrap();
        assert_eq!(
            eps,
            config["rms_norm_eps"].as_f64().unwrap() as f32,
            "{fixture}"
        );

        // The tokenizer: byte-level BPE, as the fixture's tokenizer.json has it.
        let tokenizer: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(work.path().join("base/tokenizer.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(gguf.string("tokenizer.ggml.model"), "gpt2", "{fixture}");
        let tokens = gguf.meta("tokenizer.ggml.tokens").to_vec().unwrap();
        assert_eq!(tokens.len(), 320, "{fixture}");
        for (text, id) in tokenizer["model"]["vocab"].as_object().unwrap() {
            let stored = tokens[id.as_u64().unwrap() as usize].to_string().unwrap();
            assert_eq!(stored, text, "{fixture}: token {id}");
        }
        let merges = gguf.meta("tokenizer.ggml.merges").to_vec().unwrap();
        let expected_merges = tokenizer["model"]["merges"].as_array().unwrap();
        assert_eq!(merges.len(), expected_merges.len(), "{fixture}");
        let first = &expected_merges[0];
        let first = format!(
            "{} {}",
            first[0].as_str().unwrap(),
            first[1].as_str().unwrap()
        );
        assert_eq!(merges[0].to_string().unwrap(), &first, "{fixture}");
        let types = gguf.meta("tokenizer.ggml.token_type").to_vec().unwrap();
        assert_eq!(
            types[0].to_i32().unwrap(),
            3,
            "{fixture}: <|bos|> is a control token"
        );
        assert_eq!(types[100].to_i32().unwrap(), 1, "{fixture}: a normal token");
        assert_eq!(gguf.u32("tokenizer.ggml.bos_token_id"), 0, "{fixture}");
        assert_eq!(gguf.u32("tokenizer.ggml.eos_token_id"), 1, "{fixture}");
        assert_eq!(gguf.u32("tokenizer.ggml.padding_token_id"), 2, "{fixture}");
        assert_eq!(
            gguf.string("tokenizer.chat_template"),
            TEMPLATE,
            "{fixture}"
        );

        if arch.starts_with("gemma") {
            assert_eq!(gguf.u32(&format!("{arch}.attention.sliding_window")), 8);
            let pattern: Vec<bool> = gguf
                .meta(&format!("{arch}.attention.sliding_window_pattern"))
                .to_vec()
                .unwrap()
                .iter()
                .map(|v| v.to_bool().unwrap())
                .collect();
            let layer_types: Vec<bool> = config["layer_types"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t == "sliding_attention")
                .collect();
            assert_eq!(pattern, layer_types, "{fixture}");
        }
        if arch == "gemma2" {
            for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
                let cap = gguf.meta(&format!("gemma2.{key}")).to_f32().unwrap();
                assert_eq!(cap, config[key].as_f64().unwrap() as f32, "{key}");
            }
        }

        // Every merged tensor, under its llama.cpp name, equal to the merged
        // weights rounded to f16 (matrices) or exactly (vectors, in f32).
        let merged = read_safetensors(&work.path().join("merged/model.safetensors")).unwrap();
        let heads = config["num_attention_heads"].as_u64().unwrap() as usize;
        let kv_heads = config["num_key_value_heads"].as_u64().unwrap() as usize;
        let mut expected_names = BTreeSet::new();
        for (hf_name, raw) in &merged {
            let (name, interleave, offset) = expected_gguf(arch, hf_name, heads, kv_heads);
            expected_names.insert(name.clone());
            let (shape, values) = gguf.values(&name);
            assert_eq!(shape, raw.shape, "{fixture}: {name}");
            let mut expected = raw.to_f32(hf_name).unwrap();
            if let Some(heads) = interleave {
                expected = interleaved(&expected, &raw.shape, heads);
            }
            let matrix = raw.shape.len() == 2;
            let wanted = if matrix {
                GgmlDType::F16
            } else {
                GgmlDType::F32
            };
            assert_eq!(gguf.dtype(&name), wanted, "{fixture}: {name}");
            for (i, (got, want)) in values.iter().zip(&expected).enumerate() {
                let want = want + offset;
                let want = if matrix {
                    half::f16::from_f32(want).to_f32()
                } else {
                    want
                };
                assert_eq!(*got, want, "{fixture}: {name}[{i}]");
            }
        }
        let names: BTreeSet<String> = gguf.content.tensor_infos.keys().cloned().collect();
        assert_eq!(names, expected_names, "{fixture}: tensor names");
    }
}

#[test]
fn gguf_export_carries_the_trained_adapter_not_the_base() {
    let work = Exported::trained("llama-tiny");
    work.ok(&["export", "run", "--gguf", "model.gguf"]);
    let base = read_safetensors(&work.path().join("base/model.safetensors")).unwrap();
    let base_v: Vec<f32> = base["model.layers.0.self_attn.v_proj.weight"]
        .to_f32("v")
        .unwrap()
        .iter()
        .map(|v| half::f16::from_f32(*v).to_f32())
        .collect();
    let (_, exported) = Gguf::open(&work.path().join("model.gguf")).values("blk.0.attn_v.weight");
    let moved = exported.iter().zip(&base_v).filter(|(a, b)| a != b).count();
    assert!(
        moved > exported.len() / 2,
        "only {moved} of {} values of attn_v differ from the base: the adapter was not merged",
        exported.len()
    );
    assert_eq!(work.fixture, "llama-tiny");
}

/// Largest |a - b| over the largest |b|, per row of `cols` values.
fn worst_row_error(actual: &[f32], expected: &[f32], cols: usize) -> f32 {
    actual
        .chunks(cols)
        .zip(expected.chunks(cols))
        .map(|(a, b)| {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            err / scale.max(f32::MIN_POSITIVE)
        })
        .fold(0.0, f32::max)
}

/// A tensor's Hugging Face name, the type it is stored in, and the bound on its
/// error relative to its row's largest value.
type Expected = (&'static str, GgmlDType, f32);

#[test]
fn q8_0_and_q4_k_m_store_block_types_that_dequantize_near_the_weights() {
    let work = Exported::trained("qwen2-tiny");
    work.ok(&["export", "run", "--merged", "merged"]);
    let merged = read_safetensors(&work.path().join("merged/model.safetensors")).unwrap();
    // Rows of 64 (hidden) split into 32-blocks; rows of 172 (intermediate, the
    // input of ffn_down) do not, and fall back to f16. q4_k_m's 256-blocks fit
    // nowhere in this tiny model, so it falls back as llama-quantize does:
    // Q4_K -> Q5_0, Q6_K (the tied embedding, which is also the head) -> Q8_0.
    let cases: [(&str, u32, &[Expected]); 2] = [
        (
            "q8_0",
            7,
            &[
                (
                    "model.layers.0.self_attn.q_proj.weight",
                    GgmlDType::Q8_0,
                    1.0 / 127.0,
                ),
                ("model.embed_tokens.weight", GgmlDType::Q8_0, 1.0 / 127.0),
                ("model.layers.1.mlp.down_proj.weight", GgmlDType::F16, 1e-3),
                ("model.layers.0.input_layernorm.weight", GgmlDType::F32, 0.0),
            ],
        ),
        (
            "q4_k_m",
            15,
            &[
                (
                    "model.layers.0.self_attn.q_proj.weight",
                    GgmlDType::Q5_0,
                    1.0 / 15.0,
                ),
                (
                    "model.layers.1.mlp.up_proj.weight",
                    GgmlDType::Q5_0,
                    1.0 / 15.0,
                ),
                ("model.embed_tokens.weight", GgmlDType::Q8_0, 1.0 / 127.0),
                ("model.layers.0.mlp.down_proj.weight", GgmlDType::F16, 1e-3),
                ("model.norm.weight", GgmlDType::F32, 0.0),
            ],
        ),
    ];
    for (quant, file_type, tensors) in cases {
        let file = format!("{quant}.gguf");
        work.ok(&["export", "run", "--gguf", &file, "--quant", quant]);
        let mut gguf = Gguf::open(&work.path().join(&file));
        assert_eq!(gguf.u32("general.file_type"), file_type, "{quant}");
        for (hf_name, dtype, bound) in tensors {
            let (name, _, _) = expected_gguf("qwen2", hf_name, 4, 2);
            assert_eq!(gguf.dtype(&name), *dtype, "{quant}: {name}");
            let raw = &merged[*hf_name];
            let (_, values) = gguf.values(&name);
            let cols = *raw.shape.last().unwrap();
            let err = worst_row_error(&values, &raw.to_f32(hf_name).unwrap(), cols);
            assert!(
                err <= *bound,
                "{quant}: {name} off by {err} of its row's scale (bound {bound})"
            );
        }
    }
}

#[test]
fn gguf_export_refuses_to_overwrite_and_names_bad_quantizations() {
    let work = Exported::trained("llama-tiny");
    let target: PathBuf = work.path().join("model.gguf");
    std::fs::write(&target, "mine").unwrap();
    let stderr = work.fails(&["export", "run", "--gguf", "model.gguf"]);
    assert!(
        stderr.contains("model.gguf") && stderr.contains("exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine");

    let stderr = work.fails(&["export", "run", "--gguf", "other.gguf", "--quant", "q3_k"]);
    assert!(
        stderr.contains("q3_k") && stderr.contains("f16, q8_0, q4_k_m"),
        "{stderr}"
    );
    assert!(!work.path().join("other.gguf").exists());

    let stderr = work.fails(&["export", "run", "--merged", "m", "--quant", "q8_0"]);
    assert!(
        stderr.contains("--gguf"),
        "--quant without --gguf: {stderr}"
    );

    work.ok(&["export", "run", "--gguf", "model.gguf", "--force"]);
    let gguf = Gguf::open(&target);
    assert_eq!(gguf.string("general.architecture"), "llama");
    let files: BTreeMap<String, u64> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert!(
        !files.keys().any(|name| name.contains("partial")),
        "temporary files left: {files:?}"
    );
}

#[test]
fn what_llama_cpp_would_compute_differently_is_refused_by_key_and_nothing_is_written() {
    // graft scales Gemma's attention by query_pre_attn_scalar; llama.cpp derives the
    // scale from head_dim (16 here), so a model trained with 32 would run differently.
    let work = Exported::trained_with("gemma2-tiny", |config| {
        config["query_pre_attn_scalar"] = serde_json::json!(32);
    });
    let stderr = work.fails(&["export", "run", "--gguf", "model.gguf"]);
    assert!(
        stderr.contains("query_pre_attn_scalar") && stderr.contains("32"),
        "{stderr}"
    );
    let written: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.contains("gguf"))
        .collect();
    assert!(written.is_empty(), "a refused export wrote {written:?}");
}
