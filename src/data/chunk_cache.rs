//! Exact, cached encoding for byte-level BPE tokenizers.
//!
//! `tokenizers` spends most of its time per call on bookkeeping that
//! training does not need (offsets, alignments, token strings): about 2 MB/s
//! per core on chat text. Natural text repeats its words, so this encoder
//! splits text into chunks whose ids cannot depend on their neighbours,
//! encodes each distinct chunk once through the real tokenizer, and caches
//! the ids per thread.
//!
//! Why a chunk's ids are independent of its neighbours: special tokens are
//! split out first (leftmost-longest, as the tokenizer's added vocabulary
//! does), and the rest is cut before every space that is followed by a
//! printable ASCII character. The pre-tokenizer regexes of GPT-2, Llama 3
//! and Qwen style byte-level tokenizers only put such a space at the start
//! of a pre-token, never inside one, so no pre-token crosses a cut and BPE
//! never merges across pre-tokens. This holds only for those pre-tokenizers
//! with `add_prefix_space = false`, no normalizer (or NFC, which does not
//! compose across a space), and added tokens without strip/word flags: for
//! any other tokenizer [`ChunkedEncoder::new`] returns `None` and the plain
//! tokenizer is used. As a guard against a tokenizer that fits the shape but
//! not the argument, construction also compares both paths on probe text.

use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of cached chunks per thread before the cache is dropped and
/// refilled: the bound on the memory this cache adds, whatever the file size.
const CACHE_BYTES: usize = 16 << 20;

/// Approximate heap cost of one entry beyond its bytes (boxes, table slot).
const ENTRY_OVERHEAD: usize = 48;

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CACHE: RefCell<ChunkCache> = RefCell::new(ChunkCache::default());
}

/// A word-at-a-time hash with a full avalanche at the end: chunks are
/// short, SipHash's setup costs more than the hashing, and the table indexes
/// by the low bits, which a plain FNV leaves poorly mixed.
#[derive(Default)]
struct ChunkHasher(u64);
impl Hasher for ChunkHasher {
    fn finish(&self) -> u64 {
        // murmur3's fmix64.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51afd7ed558ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        let mut mix = |word: u64| {
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517cc1b727220a95);
        };
        for word in &mut words {
            mix(u64::from_le_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]));
        }
        let mut tail = [0u8; 8];
        let rest = words.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        mix(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
    }
}

#[derive(Default)]
struct ChunkCache {
    /// Which encoder the cached ids belong to.
    owner: u64,
    bytes: usize,
    ids: HashMap<Box<str>, Box<[u32]>, BuildHasherDefault<ChunkHasher>>,
}

pub(crate) struct ChunkedEncoder {
    instance: u64,
    /// Special tokens by first byte, longest first.
    specials: Vec<Vec<(Box<[u8]>, u32)>>,
}

impl ChunkedEncoder {
    /// `None` when the tokenizer is not of a shape the chunking is exact for.
    pub(crate) fn new(config: &Value, tokenizer: &tokenizers::Tokenizer) -> Option<ChunkedEncoder> {
        if !matches!(config.get("normalizer"), None | Some(Value::Null))
            && config.pointer("/normalizer/type").and_then(Value::as_str) != Some("NFC")
        {
            return None;
        }
        if !pre_tokenizer_is_byte_level(config.get("pre_tokenizer")?) {
            return None;
        }
        let mut specials: Vec<Vec<(Box<[u8]>, u32)>> = vec![Vec::new(); 256];
        for (id, token) in tokenizer.get_added_tokens_decoder() {
            if token.lstrip || token.rstrip || token.single_word || token.normalized {
                return None;
            }
            let bytes = token.content.as_bytes();
            if let Some(&first) = bytes.first() {
                specials[first as usize].push((bytes.into(), id));
            }
        }
        for group in &mut specials {
            group.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        let encoder = ChunkedEncoder {
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            specials,
        };
        encoder.agrees_on_probes(tokenizer).then_some(encoder)
    }

    fn agrees_on_probes(&self, tokenizer: &tokenizers::Tokenizer) -> bool {
        let specials: String = tokenizer
            .get_added_tokens_decoder()
            .values()
            .map(|token| format!("x{} {}y ", token.content, token.content))
            .collect();
        let probes = [
            "Hello, world! It's a test:  two  spaces,\ttabs\tand\nnewlines\n\n  indented.",
            "Numbers 12345 and 3.14159, 1,000,000; emails a.b@c.de (parens) [brackets] {braces}",
            " leading space, trailing space , double  space   triple    quad",
            "Unicode: café naïve Ünïcödé — “quotes” 日本語のテキスト 😀 emoji  \u{a0}nbsp",
            "they'll we've I'm you'd she's don't CAN'T Won'T",
            "<|im_start|>user\nWhat is 37+58?<|im_end|>\n<|im_start|>assistant\n95<|im_end|>\n",
            "code: fn main() { let x = vec![1, 2, 3]; println!(\"{x:?}\"); }\r\n",
            &specials,
        ];
        probes.iter().all(|probe| {
            let slow = tokenizer
                .encode_fast(*probe, false)
                .map(|encoding| encoding.get_ids().to_vec());
            let fast = self.encode(tokenizer, probe);
            matches!((slow, fast), (Ok(a), Ok(b)) if a == b)
        })
    }

    /// The ids `tokenizer.encode_fast(text, false)` would give.
    pub(crate) fn encode(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        text: &str,
    ) -> tokenizers::Result<Vec<u32>> {
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.owner != self.instance || cache.bytes > CACHE_BYTES {
                cache.owner = self.instance;
                cache.ids = HashMap::default();
                cache.bytes = 0;
            }
            let mut out = Vec::with_capacity(text.len() / 2);
            let bytes = text.as_bytes();
            let mut stretch_start = 0;
            let mut i = 0;
            while i < bytes.len() {
                let special = self.specials[bytes[i] as usize]
                    .iter()
                    .find(|(content, _)| bytes[i..].starts_with(content));
                match special {
                    Some((content, id)) => {
                        encode_stretch(tokenizer, &mut cache, &text[stretch_start..i], &mut out)?;
                        out.push(*id);
                        i += content.len();
                        stretch_start = i;
                    }
                    None => i += 1,
                }
            }
            encode_stretch(tokenizer, &mut cache, &text[stretch_start..], &mut out)?;
            Ok(out)
        })
    }
}

/// Encode text without special tokens, chunk by chunk.
fn encode_stretch(
    tokenizer: &tokenizers::Tokenizer,
    cache: &mut ChunkCache,
    text: &str,
    out: &mut Vec<u32>,
) -> tokenizers::Result<()> {
    let bytes = text.as_bytes();
    let mut start = 0;
    for cut in 1..bytes.len() {
        if bytes[cut] == b' ' && bytes.get(cut + 1).is_some_and(u8::is_ascii_graphic) {
            encode_chunk(tokenizer, cache, &text[start..cut], out)?;
            start = cut;
        }
    }
    if start < bytes.len() {
        encode_chunk(tokenizer, cache, &text[start..], out)?;
    }
    Ok(())
}

fn encode_chunk(
    tokenizer: &tokenizers::Tokenizer,
    cache: &mut ChunkCache,
    chunk: &str,
    out: &mut Vec<u32>,
) -> tokenizers::Result<()> {
    if let Some(ids) = cache.ids.get(chunk) {
        out.extend_from_slice(ids);
        return Ok(());
    }
    let ids: Box<[u32]> = tokenizer.encode_fast(chunk, false)?.get_ids().into();
    out.extend_from_slice(&ids);
    cache.bytes += chunk.len() + 4 * ids.len() + ENTRY_OVERHEAD;
    cache.ids.insert(chunk.into(), ids);
    Ok(())
}

/// ByteLevel with its own regex, or a regex Split followed by ByteLevel
/// without one; never with a prefix space.
fn pre_tokenizer_is_byte_level(pre_tokenizer: &Value) -> bool {
    let kind = |value: &Value| {
        value
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let flag = |value: &Value, key: &str| value.get(key).and_then(Value::as_bool);
    match kind(pre_tokenizer).as_deref() {
        Some("ByteLevel") => {
            flag(pre_tokenizer, "add_prefix_space") == Some(false)
                && flag(pre_tokenizer, "use_regex") != Some(false)
        }
        Some("Sequence") => {
            let Some(steps) = pre_tokenizer.get("pretokenizers").and_then(Value::as_array) else {
                return false;
            };
            match steps.as_slice() {
                [split, byte_level] => {
                    kind(split).as_deref() == Some("Split")
                        && split.get("behavior").and_then(Value::as_str) == Some("Isolated")
                        && flag(split, "invert") == Some(false)
                        && kind(byte_level).as_deref() == Some("ByteLevel")
                        && flag(byte_level, "add_prefix_space") == Some(false)
                        && flag(byte_level, "use_regex") == Some(false)
                }
                _ => false,
            }
        }
        _ => false,
    }
}
