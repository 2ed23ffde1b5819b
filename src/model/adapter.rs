//! LoRA adapters on a whole model, and PEFT adapter folders: attach a fresh adapter,
//! load an existing `adapter_config.json` + `adapter_model.safetensors` (so training
//! continues it), save one PEFT can load, and merge the adapter into the base weights.
//!
//! PEFT keys are `base_model.model.` + our parameter name, e.g.
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::error::ModelError;
use super::llama::CausalLm;
use super::lora::{is_known_target, Linear, LoraConfig, ALL_TARGETS};
use super::quantize::QuantScheme;
use super::weights::{read_safetensors, write_safetensors, SaveDtype};

/// The prefix PEFT puts in front of the wrapped model's parameter names.
pub const PEFT_PREFIX: &str = "base_model.model.";

impl<B: Backend> CausalLm<B> {
    /// Every projection with its module path (`model.layers.0.self_attn.q_proj`) and
    /// short name (`q_proj`), in layer order.
    pub fn projections_mut(&mut self) -> Vec<(String, &'static str, &mut Linear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let attn = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            let p = format!("model.layers.{i}");
            // Either q/k/v or qkv_proj is there, and either gate/up or gate_up_proj.
            let entries: [(&'static str, &str, Option<&mut Linear<B>>); 9] = [
                ("q_proj", "self_attn", attn.q_proj.as_mut()),
                ("k_proj", "self_attn", attn.k_proj.as_mut()),
                ("v_proj", "self_attn", attn.v_proj.as_mut()),
                ("qkv_proj", "self_attn", attn.qkv_proj.as_mut()),
                ("o_proj", "self_attn", Some(&mut attn.o_proj)),
                ("gate_proj", "mlp", mlp.gate_proj.as_mut()),
                ("up_proj", "mlp", mlp.up_proj.as_mut()),
                ("gate_up_proj", "mlp", mlp.gate_up_proj.as_mut()),
                ("down_proj", "mlp", Some(&mut mlp.down_proj)),
            ];
            for (short, group, linear) in entries {
                if let Some(linear) = linear {
                    out.push((format!("{p}.{group}.{short}"), short, linear));
                }
            }
        }
        out
    }

    /// How the decoder projections' base is quantized, `None` for a float base.
    pub fn base_quantization(&self) -> Option<QuantScheme> {
        self.model.layers.iter().find_map(|layer| {
            let (attn, mlp) = (&layer.self_attn, &layer.mlp);
            [
                attn.q_proj.as_ref(),
                attn.k_proj.as_ref(),
                attn.v_proj.as_ref(),
                attn.qkv_proj.as_ref(),
                Some(&attn.o_proj),
                mlp.gate_proj.as_ref(),
                mlp.up_proj.as_ref(),
                mlp.gate_up_proj.as_ref(),
                Some(&mlp.down_proj),
            ]
            .into_iter()
            .flatten()
            .find_map(|linear| linear.quantized.as_ref().map(|q| q.layout.scheme))
        })
    }

    /// The short names of the projections a decoder layer has, in layer order
    /// (`q_proj`... for Llama, `qkv_proj`... for Phi-3).
    pub fn projection_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if let Some(layer) = self.model.layers.first() {
            let (attn, mlp) = (&layer.self_attn, &layer.mlp);
            let present = [
                ("q_proj", attn.q_proj.is_some()),
                ("k_proj", attn.k_proj.is_some()),
                ("v_proj", attn.v_proj.is_some()),
                ("qkv_proj", attn.qkv_proj.is_some()),
                ("o_proj", true),
                ("gate_proj", mlp.gate_proj.is_some()),
                ("up_proj", mlp.up_proj.is_some()),
                ("gate_up_proj", mlp.gate_up_proj.is_some()),
                ("down_proj", true),
            ];
            names.extend(present.iter().filter(|(_, has)| *has).map(|(n, _)| *n));
        }
        names
    }

    /// `config` with its targets named as this model's projections (see
    /// [`LoraConfig::for_projections`]).
    pub fn lora_config_for_model(&self, config: &LoraConfig) -> Result<LoraConfig, ModelError> {
        config.for_projections(&self.projection_names(), self.config.model_type.as_str())
    }

    /// Adds a fresh LoRA adapter (A kaiming-uniform from `seed`, B zero) to the target
    /// projections and freezes the base weights.
    pub fn with_new_lora(mut self, config: &LoraConfig, seed: u64) -> Result<Self, ModelError> {
        config.validate()?;
        if self.lora.is_some() {
            return Err(ModelError::Adapter {
                message: "the model already has a LoRA adapter".into(),
            });
        }
        let config = &self.lora_config_for_model(config)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (_, short, linear) in self.projections_mut() {
            if config.targets_module(short) {
                linear.attach_lora(config, &mut rng);
            }
        }
        self.lora = Some(config.clone());
        Ok(self.freeze_base())
    }

    /// Folds the adapter into the base weights (`W + s * B A`) and drops it, giving a
    /// plain model.
    /// A quantized base is dequantized (in f32), whether a projection is adapted or
    /// not.
    pub fn merge_lora(mut self) -> Self {
        for (_, _, linear) in self.projections_mut() {
            linear.merge_lora();
            linear.dequantize_base();
        }
        self.lora = None;
        self
    }
}

/// Reads PEFT's adapter_config.json into a [`LoraConfig`]; features this crate does not
/// implement (DoRA, bias training, per-module ranks, ...) are errors naming the key.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig, ModelError> {
    read_adapter_config_file(&dir.join("adapter_config.json"))
}

/// [`read_adapter_config`] of a config file wherever it lies (e.g. a stored object).
pub fn read_adapter_config_file(path: &Path) -> Result<LoraConfig, ModelError> {
    let raw = read_json(path)?;
    let field = |key: &str| raw.get(key).filter(|v| !v.is_null());
    let unsupported = |key: &str, value: &Value, supported: &str| ModelError::Unsupported {
        key: format!("adapter_config.{key}"),
        value: value.to_string(),
        supported: supported.into(),
    };
    if let Some(kind) = field("peft_type") {
        if kind != "LORA" {
            return Err(unsupported("peft_type", kind, "LORA"));
        }
    }
    for key in ["use_dora", "fan_in_fan_out", "lora_bias"] {
        if let Some(v) = field(key) {
            if v.as_bool() == Some(true) {
                return Err(unsupported(key, v, "false"));
            }
        }
    }
    if let Some(v) = field("bias") {
        if v != "none" {
            return Err(unsupported("bias", v, "\"none\""));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if let Some(v) = field(key) {
            if v.as_object().is_some_and(|m| !m.is_empty()) {
                return Err(unsupported(key, v, "{}"));
            }
        }
    }
    if let Some(v) = field("layers_to_transform") {
        return Err(unsupported("layers_to_transform", v, "null"));
    }
    if let Some(v) = field("modules_to_save") {
        modules_to_save_of(v).ok_or_else(|| {
            unsupported(
                "modules_to_save",
                v,
                "null or a list of embed_tokens and lm_head",
            )
        })?;
    }
    let number = |key: &str| {
        field(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| ModelError::Config {
                key: format!("adapter_config.{key}"),
                message: "missing or not a number".into(),
            })
    };
    let rank = number("r")? as usize;
    let alpha = number("lora_alpha")?;
    let dropout = field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let targets = match field("target_modules") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ModelError::Config {
                key: "adapter_config.target_modules".into(),
                message: "not a list of strings".into(),
            })?,
        // A string is a regex in PEFT; only "all-linear" and plain names are understood.
        Some(Value::String(s)) if s == "all-linear" => {
            ALL_TARGETS.iter().map(|s| s.to_string()).collect()
        }
        Some(Value::String(s)) if is_known_target(s) => vec![s.clone()],
        Some(other) => {
            return Err(unsupported(
                "target_modules",
                other,
                "a list of projection names or \"all-linear\"",
            ))
        }
        None => {
            return Err(ModelError::Config {
                key: "adapter_config.target_modules".into(),
                message: "missing".into(),
            })
        }
    };
    let config = LoraConfig {
        rank,
        alpha,
        dropout,
        targets,
        use_rslora: field("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    config.validate()?;
    Ok(config)
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The base tensors an adapter config's `modules_to_save` names (our tensor names),
/// or `None` when it names a module PEFT saves that graft cannot load.
fn modules_to_save_of(value: &Value) -> Option<Vec<&'static str>> {
    value
        .as_array()?
        .iter()
        .map(|module| {
            let module = module.as_str()?;
            SAVABLE_MODULES
                .iter()
                .find(|(_, name)| *name == module)
                .map(|(tensor, _)| *tensor)
        })
        .collect()
}

/// Loads a PEFT adapter folder onto a plain model: the adapter's tensors become the
/// LoRA branches (to continue training them), the whole modules it saved
/// (`modules_to_save`: embeddings, lm_head) replace the base's, and the base weights
/// are frozen. Missing or unexpected adapter tensors and wrong shapes are errors
/// naming the tensor.
pub fn load_adapter<B: Backend>(model: CausalLm<B>, dir: &Path) -> Result<CausalLm<B>, ModelError> {
    load_adapter_files(
        model,
        &dir.join("adapter_config.json"),
        &dir.join("adapter_model.safetensors"),
    )
}

/// [`load_adapter`] from the two files wherever they lie (e.g. stored objects).
pub fn load_adapter_files<B: Backend>(
    mut model: CausalLm<B>,
    config_path: &Path,
    weights_path: &Path,
) -> Result<CausalLm<B>, ModelError> {
    if model.lora.is_some() {
        return Err(ModelError::Adapter {
            message: "the model already has a LoRA adapter".into(),
        });
    }
    let config = model.lora_config_for_model(&read_adapter_config_file(config_path)?)?;
    let mut tensors = read_safetensors(weights_path)?;
    let device = model.device();
    let scale = config.scale();
    for (path, short, linear) in model.projections_mut() {
        if !config.targets_module(short) {
            continue;
        }
        let (d_in, d_out) = (linear.d_in(), linear.d_out());
        let mut take = |suffix: &str, shape: [usize; 2]| -> Result<Tensor<B, 2>, ModelError> {
            let name = format!("{PEFT_PREFIX}{path}.{suffix}");
            let raw = tensors
                .remove(&name)
                .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
            if raw.shape != shape {
                return Err(ModelError::Shape {
                    name,
                    expected: shape.to_vec(),
                    actual: raw.shape,
                });
            }
            let values = raw.to_f32(&name)?;
            Ok(Tensor::from_data(TensorData::new(values, shape), &device))
        };
        let a = take("lora_A.weight", [config.rank, d_in])?;
        let b = take("lora_B.weight", [d_out, config.rank])?;
        linear.set_lora(a, b, scale, config.dropout);
    }
    let raw_config = read_json(config_path)?;
    let saved = modules_to_save_of(&raw_config["modules_to_save"]).unwrap_or_default();
    let tied = model.config.tie_word_embeddings;
    let mut replaced = std::collections::HashMap::new();
    for tensor in &saved {
        let name = format!("{PEFT_PREFIX}{tensor}");
        let raw = tensors
            .remove(&name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
        let data = TensorData::new(raw.to_f32(&name)?, raw.shape.clone());
        replaced.insert(tensor.to_string(), data);
    }
    // A tied model has one matrix for both: a saved head must be the embedding.
    if tied {
        if let Some(head) = replaced.remove("lm_head.weight") {
            let embedding = replaced.get("model.embed_tokens.weight");
            if embedding != Some(&head) {
                return Err(ModelError::Adapter {
                    message: format!(
                        "{}: the model ties lm_head to embed_tokens, but the adapter's lm_head differs from its embed_tokens",
                        weights_path.display()
                    ),
                });
            }
        }
    }
    if let Some(name) = tensors.keys().next() {
        return Err(ModelError::UnexpectedTensor {
            name: name.clone(),
            model_type: "LoRA adapter with these target_modules".into(),
        });
    }
    model.lora = Some(config);
    Ok(model.load_named_tensors(replaced)?.freeze_base())
}

/// Writes the adapter as a PEFT folder (adapter_config.json, adapter_model.safetensors
/// with PEFT's key names) that `PeftModel.from_pretrained` loads.
pub fn save_adapter<B: Backend>(
    model: &CausalLm<B>,
    dir: &Path,
    base_model_name_or_path: Option<&str>,
) -> Result<(), ModelError> {
    let config = model.lora.as_ref().ok_or_else(|| ModelError::Adapter {
        message: "the model has no LoRA adapter to save".into(),
    })?;
    let tensors = model.named_tensors(|p| p.is_lora);
    write_peft_adapter(dir, config, &tensors, &[], base_model_name_or_path)
}

/// Base tensors a PEFT adapter can carry whole, in `modules_to_save`: our tensor
/// name and the module name PEFT's config lists. PEFT keeps a trainable copy of
/// such a module as `<path>.modules_to_save.<adapter>.weight` in memory and saves it
/// as `base_model.model.<path>.weight` (the adapter part of the name is dropped on
/// save and put back on load, as for LoRA keys). Other base tensors (norms, the
/// base weight of a LoRA-wrapped projection) have no PEFT form: only a merged
/// export carries them.
pub const SAVABLE_MODULES: [(&str, &str); 2] = [
    ("model.embed_tokens.weight", "embed_tokens"),
    ("lm_head.weight", "lm_head"),
];

/// The `modules_to_save` entry that carries base tensor `name`, if PEFT has one.
pub fn savable_module(name: &str) -> Option<&'static str> {
    SAVABLE_MODULES
        .iter()
        .find(|(tensor, _)| *tensor == name)
        .map(|(_, module)| *module)
}

/// Writes a PEFT folder from LoRA tensors named as [`CausalLm::named_tensors`] names
/// them (`model.layers.0.self_attn.q_proj.lora_A.weight`, HF layout), e.g. straight from
/// a checkpoint without building a model. `modules_to_save` are trained base tensors
/// (same naming) that go out whole in PEFT's `modules_to_save` convention; a tensor
/// PEFT has no such form for (see [`SAVABLE_MODULES`]) is an error naming it, never
/// dropped.
pub fn write_peft_adapter(
    dir: &Path,
    config: &LoraConfig,
    tensors: &[(String, TensorData)],
    modules_to_save: &[(String, TensorData)],
    base_model_name_or_path: Option<&str>,
) -> Result<(), ModelError> {
    let uncarried: Vec<&str> = modules_to_save
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| savable_module(name).is_none())
        .collect();
    if !uncarried.is_empty() {
        return Err(ModelError::Adapter {
            message: format!(
                "a PEFT adapter cannot carry the base tensors {}: only {} go in modules_to_save",
                uncarried.join(", "),
                SAVABLE_MODULES.map(|(name, _)| name).join(" and ")
            ),
        });
    }
    let mut saved_modules: Vec<&str> = modules_to_save
        .iter()
        .filter_map(|(name, _)| savable_module(name))
        .collect();
    saved_modules.sort_unstable();
    saved_modules.dedup();
    let tensors: Vec<(String, TensorData)> = tensors
        .iter()
        .filter(|(name, _)| name.ends_with("lora_A.weight") || name.ends_with("lora_B.weight"))
        .chain(modules_to_save)
        .map(|(name, data)| (format!("{PEFT_PREFIX}{name}"), data.clone()))
        .collect();
    if !tensors.iter().any(|(name, _)| name.contains(".lora_")) {
        return Err(ModelError::Adapter {
            message: "no lora_A / lora_B tensors to write".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &tensors,
        SaveDtype::F32,
    )?;
    let adapter_config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": config.targets,
        "use_rslora": config.use_rslora,
        "use_dora": false,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": (!saved_modules.is_empty()).then_some(saved_modules),
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    let path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&adapter_config).map_err(|e| ModelError::Json {
        path: path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
}

/// Adapter tensors keyed by our parameter names (PEFT prefix removed), e.g. to compare
/// with a `reference_grads.safetensors`.
pub fn strip_peft_prefix<T>(tensors: BTreeMap<String, T>) -> BTreeMap<String, T> {
    tensors
        .into_iter()
        .map(|(k, v)| {
            (
                k.strip_prefix(PEFT_PREFIX).map(str::to_string).unwrap_or(k),
                v,
            )
        })
        .collect()
}
