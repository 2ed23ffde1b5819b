//! A thin wrapper over `tokenizers::Tokenizer` with what training needs
//! beside it: the special token ids, the model's chat template, and a
//! content id.
//!
//! `tokenizer.json` is the truth for the vocabulary; `tokenizer_config.json`
//! (optional) supplies `chat_template` and the names of the bos/eos/pad
//! tokens, and `generation_config.json` (optional) their ids. Where neither
//! names them, well-known token names are looked up, so a bare
//! `tokenizer.json` still gets an end-of-sequence token to stop on.
//!
//! Text is always encoded without the tokenizer's post-processor
//! (`add_special_tokens = false`): the data module decides where bos and eos
//! go, so that every format and template is treated the same way. Special
//! tokens written literally in the text (a template's `<|im_end|>`, a
//! `{{ eos_token }}`) are still recognised as single tokens.

use super::chunk_cache::ChunkedEncoder;
use super::error::{DataError, Result};
use crate::store::canonical::{object_id, Id};
use serde_json::Value;
use std::path::Path;

const BOS_NAMES: [&str; 4] = ["<|bos|>", "<s>", "<|begin_of_text|>", "<bos>"];
const EOS_NAMES: [&str; 5] = [
    "<|eos|>",
    "</s>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<eos>",
];
const PAD_NAMES: [&str; 3] = ["<|pad|>", "<pad>", "<|finetune_right_pad_id|>"];

/// A special token: its text (as templates write it) and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    id: Id,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad_id: u32,
    chat_template: Option<String>,
    /// The cached fast path, for tokenizers it is exact for.
    chunked: Option<ChunkedEncoder>,
}

impl Tokenizer {
    /// Load from a Hugging Face model folder: `tokenizer.json`, and
    /// `tokenizer_config.json` / `generation_config.json` when present. The
    /// chat template is tokenizer_config.json's, else `chat_template.jinja`'s
    /// (where transformers 4.50 and later save it).
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(DataError::io(&path.display().to_string(), err)),
            }
        };
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = read("tokenizer.json")?.ok_or_else(|| DataError::TokenizerLoad {
            path: tokenizer_path.display().to_string(),
            message: "file not found".to_string(),
        })?;
        let mut tokenizer = Tokenizer::from_bytes(
            &tokenizer_json,
            read("tokenizer_config.json")?.as_deref(),
            read("generation_config.json")?.as_deref(),
            &tokenizer_path.display().to_string(),
        )?;
        if tokenizer.chat_template.is_none() {
            if let Some(bytes) = read("chat_template.jinja")? {
                let path = dir.join("chat_template.jinja").display().to_string();
                let text = String::from_utf8(bytes).map_err(|err| DataError::TokenizerLoad {
                    path,
                    message: format!("not UTF-8: {err}"),
                })?;
                tokenizer.chat_template = Some(text);
            }
        }
        Ok(tokenizer)
    }

    /// Load a `tokenizer.json`; its folder is searched for the config files.
    pub fn from_file(tokenizer_json: &Path) -> Result<Tokenizer> {
        match tokenizer_json.parent() {
            Some(dir) if tokenizer_json.file_name() == Some("tokenizer.json".as_ref()) => {
                Tokenizer::from_dir(dir)
            }
            _ => {
                let path = tokenizer_json.display().to_string();
                let bytes =
                    std::fs::read(tokenizer_json).map_err(|err| DataError::io(&path, err))?;
                Tokenizer::from_bytes(&bytes, None, None, &path)
            }
        }
    }

    /// Load from bytes (e.g. objects read back from the store). `name` is
    /// only used in error messages.
    pub fn from_bytes(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        generation_config: Option<&[u8]>,
        name: &str,
    ) -> Result<Tokenizer> {
        let load_error = |message: String| DataError::TokenizerLoad {
            path: name.to_string(),
            message,
        };
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|err| load_error(err.to_string()))?;
        let parse = |bytes: Option<&[u8]>, file: &str| -> Result<Value> {
            match bytes {
                None => Ok(Value::Null),
                Some(bytes) => serde_json::from_slice(bytes)
                    .map_err(|err| load_error(format!("{file}: {err}"))),
            }
        };
        let config = parse(tokenizer_config, "tokenizer_config.json")?;
        let tokenizer_value = parse(Some(tokenizer_json), "tokenizer.json")?;
        let chunked = ChunkedEncoder::new(&tokenizer_value, &inner);
        let generation = parse(generation_config, "generation_config.json")?;

        let bos = resolve_special(&inner, &config, &generation, "bos", &BOS_NAMES);
        let eos = resolve_special(&inner, &config, &generation, "eos", &EOS_NAMES);
        let pad_id = resolve_special(&inner, &config, &generation, "pad", &PAD_NAMES)
            .map(|token| token.id)
            .or(eos.as_ref().map(|token| token.id))
            .unwrap_or(0);
        Ok(Tokenizer {
            inner,
            id: object_id(tokenizer_json),
            bos,
            eos,
            pad_id,
            chat_template: chat_template(&config),
            chunked,
        })
    }

    /// The object id of the `tokenizer.json` bytes (as the model record has it).
    pub fn id(&self) -> Id {
        self.id
    }

    /// Token ids of `text`, with no bos/eos added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = match &self.chunked {
            Some(chunked) => chunked.encode(&self.inner, text),
            None => self
                .inner
                .encode_fast(text, false)
                .map(|encoding| encoding.get_ids().to_vec()),
        };
        ids.map_err(|err| DataError::Tokenizer {
            message: err.to_string(),
        })
    }

    /// Token ids straight from `tokenizers`, bypassing the chunk cache (to
    /// check that the two agree).
    pub fn encode_uncached(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|err| DataError::Tokenizer {
                message: err.to_string(),
            })
    }

    /// Whether [`Tokenizer::encode`] uses the exact chunk cache.
    pub fn is_cached(&self) -> bool {
        self.chunked.is_some()
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|err| DataError::Tokenizer {
                message: err.to_string(),
            })
    }

    /// The surface text of one token (for loss-mask renderings).
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }
    pub fn eos(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|token| token.id)
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|token| token.id)
    }
    /// The padding id: the pad token, else eos, else 0. Padding never carries
    /// loss, so its value only has to be a valid id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The model's own Jinja chat template, if `tokenizer_config.json` or
    /// `chat_template.jinja` has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `bos_token` in tokenizer_config.json is a string, an `AddedToken` object
/// (`{"content": ...}`) or null.
fn token_name(value: &Value) -> Option<&str> {
    match value {
        Value::String(text) => Some(text),
        Value::Object(map) => map.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// Resolve a special token: the config's name, then the generation config's
/// id, then a well-known name. An explicit `null` in the config means the
/// model has no such token (Qwen has no bos) and stops the search.
fn resolve_special(
    tokenizer: &tokenizers::Tokenizer,
    config: &Value,
    generation: &Value,
    kind: &str,
    known_names: &[&str],
) -> Option<SpecialToken> {
    let by_name = |name: &str| {
        tokenizer.token_to_id(name).map(|id| SpecialToken {
            text: name.to_string(),
            id,
        })
    };
    if let Some(entry) = config.get(format!("{kind}_token")) {
        return token_name(entry).and_then(by_name);
    }
    let generation_id = match generation.get(format!("{kind}_token_id")) {
        Some(Value::Number(id)) => id.as_u64(),
        // Several stop ids: the first is the canonical end of sequence.
        Some(Value::Array(ids)) => ids.first().and_then(Value::as_u64),
        _ => None,
    };
    if let Some(id) = generation_id.and_then(|id| u32::try_from(id).ok()) {
        if let Some(text) = tokenizer.id_to_token(id) {
            return Some(SpecialToken { text, id });
        }
    }
    known_names.iter().find_map(|name| by_name(name))
}

/// The chat template of a parsed tokenizer_config.json: `chat_template` is a
/// string, or a list of `{name, template}` of which `default` is the one for
/// plain chat.
pub fn chat_template(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(template) => Some(template.clone()),
        Value::Array(entries) => entries
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| entries.first())
            .and_then(|entry| entry.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}
