//! The tokenizer as GGUF metadata (`tokenizer.ggml.*` and
//! `tokenizer.chat_template`), read from the model folder's `tokenizer.json`,
//! `tokenizer_config.json` and `chat_template.jinja`.
//!
//! Two kinds of BPE `tokenizer.json` are told apart as llama.cpp's converter
//! tells them apart: byte-level BPE (Llama 3, Qwen, GPT-2 style) becomes the
//! `gpt2` model with its merges; BPE with `byte_fallback` (the SentencePiece
//! models of Llama 2, Mistral, Gemma, Phi-3 exported to `tokenizer.json`) becomes
//! the `llama` model with scores. `tokenizer.json` carries no SentencePiece
//! scores: they come from the folder's `tokenizer.model` where it has one (as
//! llama.cpp's converter takes them), else the score written is minus the rank of
//! the merge that forms the token (tokens no merge forms score 0), which orders
//! merges exactly as the merge list does, where llama.cpp's own fallback writes one
//! placeholder score for all.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::super::config::{ModelConfig, ModelType};
use super::super::error::ModelError;
use super::writer::MetaValue;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModelError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::io(path, e)),
    }
}

/// The pre-tokenizer name llama.cpp keys its byte-level splitting on.
fn pre_tokenizer(model_type: ModelType) -> &'static str {
    match model_type {
        ModelType::Llama => "llama-bpe",
        ModelType::Qwen2 | ModelType::Qwen3 => "qwen2",
        _ => "default",
    }
}

/// `bos_token` and friends in tokenizer_config.json: a string or `{content}`.
fn token_text(value: &Value) -> Option<&str> {
    match value {
        Value::String(text) => Some(text),
        Value::Object(map) => map.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// The chat template: tokenizer_config.json's `chat_template`, else
/// `chat_template.jinja` beside it, as the tokenizer reads it for training.
pub fn chat_template(dir: &Path, config: Option<&Value>) -> Result<Option<String>, ModelError> {
    if let Some(template) = config.and_then(crate::data::tokenizer::chat_template) {
        return Ok(Some(template));
    }
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::io(jinja, e)),
    }
}

/// Whether the tokenizer's post-processor puts `token` first (`first`) or last.
fn template_adds(tokenizer: &Value, token: &str, first: bool) -> bool {
    let Some(post) = tokenizer.get("post_processor").filter(|p| !p.is_null()) else {
        return false;
    };
    let processors: Vec<&Value> = match post.get("processors").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![post],
    };
    processors.iter().any(|p| {
        let single = p.get("single").and_then(Value::as_array);
        let end = single.and_then(|s| if first { s.first() } else { s.last() });
        end.and_then(|e| e.pointer("/SpecialToken/id"))
            .and_then(Value::as_str)
            == Some(token)
    })
}

/// Every `tokenizer.*` key for the model folder `dir`.
pub fn tokenizer_metadata(
    dir: &Path,
    config: &ModelConfig,
) -> Result<Vec<(String, MetaValue)>, ModelError> {
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = read_json(&tokenizer_path)?.ok_or_else(|| ModelError::Tokenizer {
        path: tokenizer_path.clone(),
        message:
            "not found: a GGUF file carries the tokenizer, and graft reads it from tokenizer.json"
                .into(),
    })?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let bad = |message: String| ModelError::Tokenizer {
        path: tokenizer_path.clone(),
        message,
    };
    let model = tokenizer
        .get("model")
        .ok_or_else(|| bad("no `model` object".into()))?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "BPE" {
        return Err(bad(format!(
            "model.type = {kind:?}: the GGUF export writes BPE tokenizers (byte-level or with byte_fallback)"
        )));
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `model.vocab` object".into()))?;
    let size = config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; size];
    let mut types = vec![UNUSED; size];
    let mut place = |text: &str, id: u64, kind: i32| -> Result<(), ModelError> {
        let slot = usize::try_from(id)
            .ok()
            .filter(|i| *i < size)
            .ok_or_else(|| {
                bad(format!(
                    "token {text:?} has id {id}, beyond vocab_size {size} of config.json"
                ))
            })?;
        tokens[slot] = Some(text.to_string());
        types[slot] = kind;
        Ok(())
    };
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
    let unk = model.get("unk_token").and_then(Value::as_str);
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("vocab entry {text:?} is not an id")))?;
        let is_byte =
            byte_fallback && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>');
        let kind = if Some(text.as_str()) == unk {
            UNKNOWN
        } else if is_byte {
            BYTE
        } else {
            NORMAL
        };
        place(text, id, kind)?;
    }
    for added in tokenizer
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(text), Some(id)) = (
            added.get("content").and_then(Value::as_str),
            added.get("id").and_then(Value::as_u64),
        ) else {
            continue;
        };
        let special = added.get("special").and_then(Value::as_bool) == Some(true);
        let kind = if Some(text) == unk {
            UNKNOWN
        } else if special {
            CONTROL
        } else {
            USER_DEFINED
        };
        place(text, id, kind)?;
    }
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .filter_map(|(id, t)| t.as_deref().map(|t| (t, id as u32)))
        .collect();
    let token_list: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| t.clone().unwrap_or_else(|| format!("[PAD{id}]")))
        .collect();

    let merges = merge_list(model).map_err(bad)?;
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            MetaValue::String(if byte_fallback { "llama" } else { "gpt2" }.into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            MetaValue::String(
                if byte_fallback {
                    "default"
                } else {
                    pre_tokenizer(config.model_type)
                }
                .into(),
            ),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            MetaValue::Strings(token_list.clone()),
        ),
    ];
    let model_file = dir.join("tokenizer.model");
    if byte_fallback && model_file.is_file() {
        let scores = piece_scores(&model_file, &token_list)?;
        out.push(("tokenizer.ggml.scores".to_string(), MetaValue::F32s(scores)));
    } else if byte_fallback {
        let rank: HashMap<String, usize> = merges
            .iter()
            .enumerate()
            .rev()
            .map(|(rank, merge)| (merge.replace(' ', ""), rank))
            .collect();
        let scores = token_list
            .iter()
            .map(|t| rank.get(t).map_or(0.0, |r| -(*r as f32) - 1.0))
            .collect();
        out.push(("tokenizer.ggml.scores".to_string(), MetaValue::F32s(scores)));
    }
    out.push((
        "tokenizer.ggml.token_type".to_string(),
        MetaValue::I32s(types),
    ));
    if !byte_fallback {
        out.push((
            "tokenizer.ggml.merges".to_string(),
            MetaValue::Strings(merges),
        ));
    }

    // Special tokens: the names tokenizer_config.json gives, else config.json's ids.
    let named = |key: &str| {
        tokenizer_config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(token_text)
            .and_then(|text| ids.get(text).copied())
    };
    let bos = named("bos_token").or(config.bos_token_id);
    let eos = named("eos_token").or(config.eos_token_ids.first().copied());
    let pad = named("pad_token").or(config.pad_token_id);
    let unk_id = named("unk_token").or(unk.and_then(|u| ids.get(u).copied()));
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.padding_token_id", pad),
        ("tokenizer.ggml.unknown_token_id", unk_id),
    ] {
        if let Some(id) = id {
            out.push((key.to_string(), MetaValue::U32(id)));
        }
    }
    let flag = |key: &str| {
        tokenizer_config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(Value::as_bool)
    };
    let text_of = |id: Option<u32>| id.and_then(|id| tokens.get(id as usize).cloned().flatten());
    let add_bos = flag("add_bos_token")
        .unwrap_or_else(|| text_of(bos).is_some_and(|t| template_adds(&tokenizer, &t, true)));
    let add_eos = flag("add_eos_token")
        .unwrap_or_else(|| text_of(eos).is_some_and(|t| template_adds(&tokenizer, &t, false)));
    out.push((
        "tokenizer.ggml.add_bos_token".to_string(),
        MetaValue::Bool(add_bos),
    ));
    out.push((
        "tokenizer.ggml.add_eos_token".to_string(),
        MetaValue::Bool(add_eos),
    ));
    if byte_fallback {
        // Gemma's SentencePiece adds no leading space; Llama 2's and Mistral's do.
        let prefix = flag("add_prefix_space").unwrap_or(!config.gemma_layout);
        out.push((
            "tokenizer.ggml.add_space_prefix".to_string(),
            MetaValue::Bool(prefix),
        ));
    }
    if let Some(template) = chat_template(dir, tokenizer_config.as_ref())? {
        out.push((
            "tokenizer.chat_template".to_string(),
            MetaValue::String(template),
        ));
    }
    Ok(out)
}

/// The merges as `"left right"` strings: tokenizers writes them so, or (since
/// tokenizers 0.20) as `[left, right]` pairs, whose spaces llama.cpp's converter
/// writes as U+0120 so that the one separator stays unambiguous.
/// The score of every token from a SentencePiece `tokenizer.model` whose pieces are
/// the first tokens of `tokens` (added tokens past its pieces score 0).
fn piece_scores(path: &Path, tokens: &[String]) -> Result<Vec<f32>, ModelError> {
    let pieces = super::sentencepiece::read_pieces(path)?;
    if pieces.len() > tokens.len() {
        return Err(ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "{} pieces, more than the {} tokens of tokenizer.json and config.json's vocab_size",
                pieces.len(),
                tokens.len()
            ),
        });
    }
    if let Some((id, (piece, _))) = pieces
        .iter()
        .enumerate()
        .find(|(id, (piece, _))| *piece != tokens[*id])
    {
        return Err(ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "piece {id} is {piece:?} where tokenizer.json has {:?}: the two files are not one tokenizer",
                tokens[id]
            ),
        });
    }
    let mut scores = vec![0.0; tokens.len()];
    for (score, (_, piece_score)) in scores.iter_mut().zip(pieces) {
        *score = piece_score;
    }
    Ok(scores)
}

fn merge_list(model: &Value) -> Result<Vec<String>, String> {
    let Some(merges) = model.get("merges").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    merges
        .iter()
        .map(|merge| match merge {
            Value::String(text) => Ok(text.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &Value| {
                    v.as_str()
                        .map(|s| s.replace(' ', "\u{0120}"))
                        .ok_or_else(|| format!("merge {merge} is not a pair of strings"))
                };
                Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            other => Err(format!("merge {other} is neither \"a b\" nor [a, b]")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn value<'a>(metadata: &'a [(String, MetaValue)], key: &str) -> &'a MetaValue {
        &metadata
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
    }

    /// tests/fixtures/spm-tiny copied to a temp dir, with or without its
    /// `tokenizer.model`.
    fn spm_tiny(with_model: bool) -> tempfile::TempDir {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm-tiny");
        let dir = tempfile::tempdir().unwrap();
        for name in ["tokenizer.json", "tokenizer_config.json", "tokenizer.model"] {
            if with_model || name != "tokenizer.model" {
                std::fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
            }
        }
        dir
    }

    fn spm_config() -> ModelConfig {
        let mut config = ModelConfig::tiny();
        config.vocab_size = 320;
        config.model_type = ModelType::Mistral;
        config
    }

    fn scores(metadata: &[(String, MetaValue)]) -> Vec<f32> {
        match value(metadata, "tokenizer.ggml.scores") {
            MetaValue::F32s(scores) => scores.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tokenizer_model_gives_the_scores_sentencepiece_trained() {
        let metadata = tokenizer_metadata(spm_tiny(true).path(), &spm_config()).unwrap();
        let trained = scores(&metadata);
        // As the sentencepiece package reports them (tests/fixtures/README.md):
        // 270 "▁train" -11 and 319 "k" -60; the special and byte pieces 0.
        assert_eq!(
            (trained[270], trained[319], trained[0], trained[3]),
            (-11.0, -60.0, 0.0, 0.0)
        );
        // A piece no merge forms keeps its own score, where the merge-rank
        // fallback gives it 0.
        let fallback = tokenizer_metadata(spm_tiny(false).path(), &spm_config()).unwrap();
        assert_eq!(scores(&fallback)[319], 0.0);
    }

    #[test]
    fn a_tokenizer_model_of_another_tokenizer_is_refused_naming_it() {
        let dir = spm_tiny(true);
        let path = dir.path().join("tokenizer.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"▁train\"", "\"▁trail\"");
        std::fs::write(&path, text).unwrap();
        let error = tokenizer_metadata(dir.path(), &spm_config())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tokenizer.model") && error.contains("piece 270"),
            "{error}"
        );
        std::fs::write(dir.path().join("tokenizer.model"), b"not a protobuf").unwrap();
        let error = tokenizer_metadata(dir.path(), &spm_config())
            .unwrap_err()
            .to_string();
        assert!(error.contains("tokenizer.model"), "{error}");
    }

    #[test]
    fn sentencepiece_bpe_becomes_the_llama_model_with_byte_tokens_and_merge_rank_scores() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = serde_json::json!({
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true},
                             {"id": 1, "content": "<s>", "special": true}],
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}]},
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                "vocab": {"<unk>": 0, "<s>": 1, "<0x0A>": 2, "▁": 3, "a": 4, "▁a": 5, "▁aa": 6},
                "merges": ["▁ a", "▁a a"]}
        });
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "{{ messages[0]['content'] }}",
        )
        .unwrap();
        let mut config = ModelConfig::tiny();
        config.vocab_size = 8;
        config.model_type = ModelType::Mistral;
        config.bos_token_id = Some(1);
        let metadata = tokenizer_metadata(dir.path(), &config).unwrap();
        let string = |key| match value(&metadata, key) {
            MetaValue::String(s) => s.clone(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(string("tokenizer.ggml.model"), "llama");
        assert_eq!(
            string("tokenizer.chat_template"),
            "{{ messages[0]['content'] }}"
        );
        match value(&metadata, "tokenizer.ggml.token_type") {
            MetaValue::I32s(types) => assert_eq!(types, &[2, 3, 6, 1, 1, 1, 1, 5]),
            other => panic!("{other:?}"),
        }
        match value(&metadata, "tokenizer.ggml.scores") {
            // "▁a" comes of the first merge, "▁aa" of the second; the rest of none.
            MetaValue::F32s(scores) => {
                assert_eq!(scores, &[0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, 0.0])
            }
            other => panic!("{other:?}"),
        }
        match value(&metadata, "tokenizer.ggml.tokens") {
            MetaValue::Strings(tokens) => assert_eq!(tokens[7], "[PAD7]"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            value(&metadata, "tokenizer.ggml.add_bos_token"),
            &MetaValue::Bool(true)
        );
        assert_eq!(
            value(&metadata, "tokenizer.ggml.add_space_prefix"),
            &MetaValue::Bool(true)
        );
        assert_eq!(
            value(&metadata, "tokenizer.ggml.unknown_token_id"),
            &MetaValue::U32(0)
        );
        assert!(!metadata.iter().any(|(k, _)| k == "tokenizer.ggml.merges"));
    }
}
