//! Loading real-world checkpoint variants: bf16 shards with an index, transformers-4
//! configs, and clear errors for broken folders.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::shared_fixture as fixture;
use graft::model::weights::{read_raw_tensors, write_safetensors, SaveDtype};
use graft::model::{
    load_model_dir, run_parity, CpuBackend, CpuTrainBackend, ModelError, Tolerance,
};

/// Writes `src` as a transformers-4 style folder: bf16 weights in two shards with
/// model.safetensors.index.json, top-level rope_theta and rope_scaling.
fn write_bf16_sharded_v4_copy(src: &Path, out: &Path) {
    let tensors = read_raw_tensors(src).unwrap();
    let names: Vec<&String> = tensors.keys().collect();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let data: Vec<(String, burn::tensor::TensorData)> = chunk
            .iter()
            .map(|name| {
                let raw = &tensors[*name];
                let values = raw.to_f32(name).unwrap();
                (
                    (*name).clone(),
                    burn::tensor::TensorData::new(values, raw.shape.clone()),
                )
            })
            .collect();
        write_safetensors(&out.join(&file), &data, SaveDtype::BF16).unwrap();
        for name in chunk.iter() {
            weight_map.insert((*name).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let map = config.as_object_mut().unwrap();
    let rope = map.remove("rope_parameters").unwrap();
    map.insert("rope_theta".into(), rope["rope_theta"].clone());
    map.insert("rope_scaling".into(), serde_json::Value::Null);
    map.insert("torch_dtype".into(), "bfloat16".into());
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(src.join("reference.json"), out.join("reference.json")).unwrap();
}

#[test]
fn bf16_sharded_transformers4_copy_loads_and_passes_parity_at_bf16_tolerance() {
    for name in ["llama-tiny", "qwen2-tiny"] {
        let src = fixture(name);
        let out = tempfile::tempdir().unwrap();
        write_bf16_sharded_v4_copy(&src, out.path());
        assert!(!out.path().join("model.safetensors").exists());
        let report = run_parity::<CpuTrainBackend>(
            out.path(),
            &out.path().join("reference.json"),
            &Default::default(),
            Tolerance::bf16(),
        )
        .unwrap();
        eprintln!("{name} bf16: {:?}", report.base);
        assert!(report.passes(), "{name}: {report:#?}");
        // bf16 weights really were read as bf16, not silently ignored: not f32-exact.
        assert!(report.base.logits_rel_err > 1e-6);
    }
}

fn copy_without(src: &Path, out: &Path, drop: &str) {
    let tensors = read_raw_tensors(src).unwrap();
    let data: Vec<(String, burn::tensor::TensorData)> = tensors
        .iter()
        .filter(|(name, _)| name.as_str() != drop)
        .map(|(name, raw)| {
            (
                name.clone(),
                burn::tensor::TensorData::new(raw.to_f32(name).unwrap(), raw.shape.clone()),
            )
        })
        .collect();
    write_safetensors(&out.join("model.safetensors"), &data, SaveDtype::F32).unwrap();
    std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let out = tempfile::tempdir().unwrap();
    copy_without(
        &fixture("llama-tiny"),
        out.path(),
        "model.layers.1.mlp.up_proj.weight",
    );
    let err = load_model_dir::<CpuBackend>(out.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name } if name == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_and_extra_tensors_are_errors_naming_the_tensor() {
    let src = fixture("llama-tiny");
    let out = tempfile::tempdir().unwrap();
    copy_without(&src, out.path(), "");
    // Declare a smaller intermediate size than the weights have.
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let patched = text.replace("\"intermediate_size\": 172", "\"intermediate_size\": 170");
    std::fs::write(out.path().join("config.json"), patched).unwrap();
    let err = load_model_dir::<CpuBackend>(out.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Shape { name, .. } if name == "model.layers.0.mlp.gate_proj.weight"),
        "{err}"
    );

    // A Qwen2-style q bias in a Llama checkpoint without attention_bias.
    let mut tensors: BTreeMap<String, burn::tensor::TensorData> = read_raw_tensors(&src)
        .unwrap()
        .into_iter()
        .map(|(n, raw)| {
            let data = burn::tensor::TensorData::new(raw.to_f32(&n).unwrap(), raw.shape.clone());
            (n, data)
        })
        .collect();
    tensors.insert(
        "model.layers.0.self_attn.q_proj.bias".into(),
        burn::tensor::TensorData::new(vec![0.0f32; 64], [64]),
    );
    let data: Vec<_> = tensors.into_iter().collect();
    write_safetensors(&out.path().join("model.safetensors"), &data, SaveDtype::F32).unwrap();
    std::fs::copy(src.join("config.json"), out.path().join("config.json")).unwrap();
    let err = load_model_dir::<CpuBackend>(out.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnexpectedTensor { name, .. } if name == "model.layers.0.self_attn.q_proj.bias"),
        "{err}"
    );
}

/// The seven projections of every layer of a quantized model, by Hugging Face name,
/// as stored on the device.
fn stored_projections(
    model: &graft::model::CausalLm<CpuBackend>,
) -> BTreeMap<String, graft::model::quantize::QuantizedHost> {
    let mut stored = BTreeMap::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        let attn = &layer.self_attn;
        let mlp = &layer.mlp;
        let projections = [
            ("self_attn.q_proj", attn.q_proj.as_ref()),
            ("self_attn.k_proj", attn.k_proj.as_ref()),
            ("self_attn.v_proj", attn.v_proj.as_ref()),
            ("self_attn.o_proj", Some(&attn.o_proj)),
            ("mlp.gate_proj", mlp.gate_proj.as_ref()),
            ("mlp.up_proj", mlp.up_proj.as_ref()),
            ("mlp.down_proj", Some(&mlp.down_proj)),
        ];
        for (name, linear) in projections {
            let weight = linear
                .and_then(|linear| linear.quantized.as_ref())
                .unwrap_or_else(|| panic!("layer {i} {name} is quantized"));
            stored.insert(format!("model.layers.{i}.{name}.weight"), weight.to_host());
        }
    }
    stored
}

#[test]
fn a_bf16_sharded_folder_quantizes_tensor_by_tensor_to_the_codes_of_its_whole_f32_weights() {
    use graft::model::quantize::{quantize_int8, quantize_nf4, QuantScheme};
    let out = tempfile::tempdir().unwrap();
    write_bf16_sharded_v4_copy(&fixture("llama-tiny"), out.path());
    // The old path: every tensor in memory, each projection widened whole to f32.
    let whole = read_raw_tensors(out.path()).unwrap();
    for scheme in [QuantScheme::Nf4, QuantScheme::Int8] {
        let model = graft::model::load_model_dir_as::<CpuBackend>(
            out.path(),
            &Default::default(),
            Some(scheme),
        )
        .unwrap();
        let stored = stored_projections(&model);
        assert_eq!(stored.len(), 2 * 7, "two layers of seven projections");
        for (name, host) in stored {
            let raw = &whole[&name];
            assert_eq!(raw.dtype, "BF16", "{name} is read from bf16 bytes");
            let values = raw.to_f32(&name).unwrap();
            let shape = [raw.shape[0], raw.shape[1]];
            let expected = match scheme {
                QuantScheme::Nf4 => quantize_nf4(&values, shape),
                QuantScheme::Int8 => quantize_int8(&values, shape),
            };
            assert_eq!(host, expected, "{} {name}", scheme.as_str());
        }
    }
}

#[test]
fn a_weight_file_shorter_than_its_header_says_is_refused_naming_it() {
    let src = fixture("llama-tiny");
    let out = tempfile::tempdir().unwrap();
    copy_without(&src, out.path(), "");
    let weights = out.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 3]).unwrap();
    let err = load_model_dir::<CpuBackend>(out.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Safetensors { path, .. } if path == &weights),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
