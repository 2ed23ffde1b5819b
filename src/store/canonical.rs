//! Canonical encoding and content ids.
//!
//! Ids are blake3 hashes of an explicit byte encoding that this module owns,
//! never of whatever a serializer happens to emit: a crate upgrade must not
//! change the id of a run. Every kind of record hashes under its own domain
//! tag (`graft.run.v1\0`, ...) so that equal bytes of two kinds never collide.
//!
//! The encoding of a [`Canon`] value is a tag byte followed by the payload:
//! integers as 8 big-endian bytes, floats by their IEEE bits (with every NaN
//! folded to one pattern and -0.0 kept distinct), strings and byte strings
//! length-prefixed, lists length-prefixed, maps sorted by key (a `BTreeMap`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A 32-byte blake3 content id. Serialized as raw bytes in records and as
/// hex in human-readable formats (JSON output).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let hex = String::deserialize(deserializer)?;
            Id::from_hex(&hex)
                .ok_or_else(|| D::Error::custom(format!("`{hex}` is not a 64-digit hex id")))
        } else {
            let bytes = serde_bytes_vec(deserializer)?;
            Id::from_slice(&bytes).ok_or_else(|| D::Error::custom("an id must be 32 bytes"))
        }
    }
}

fn serde_bytes_vec<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct BytesVisitor;
    impl<'de> serde::de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("32 bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_bytes(BytesVisitor)
}

impl Id {
    pub fn to_hex(&self) -> String {
        // By table rather than `format!` per byte: listings of thousands of
        // runs (the UI's lineage, `runs --json`) print a few ids each.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(DIGITS[(byte >> 4) as usize] as char);
            out.push(DIGITS[(byte & 0x0f) as usize] as char);
        }
        out
    }

    /// Whether the id's hex form starts with `prefix` (lowercase hex digits),
    /// without writing the hex form out.
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        prefix.len() <= 64
            && prefix.bytes().enumerate().all(|(i, digit)| {
                let byte = self.0[i / 2];
                let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                (digit as char).to_digit(16) == Some(nibble as u32)
            })
    }

    /// The first 12 hex characters: what tables and graphs show.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    pub fn from_hex(hex: &str) -> Option<Id> {
        if hex.len() != 64 {
            return None;
        }
        let bytes = hex_to_bytes(hex)?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes);
        Some(Id(id))
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Id> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(Id(array))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Decode an even-length hex string; `None` on any non-hex character.
pub fn hex_to_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Domain tags, one per kind of id.
pub mod domain {
    pub const OBJECT: &[u8] = b"graft.object.v1\0";
    pub const MODEL: &[u8] = b"graft.model.v1\0";
    pub const DATASET: &[u8] = b"graft.dataset.v1\0";
    pub const RUN: &[u8] = b"graft.run.v1\0";
    pub const CHECKPOINT: &[u8] = b"graft.checkpoint.v1\0";
}

/// A value in canonical form: the shape every hashed record is reduced to.
/// In records it is stored as a tagged enum; in JSON output as plain JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Canon {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Canon>),
    Map(BTreeMap<String, Canon>),
}

/// The stored form of [`Canon`]; kept separate so JSON output can differ.
#[derive(Serialize, Deserialize)]
enum StoredCanon {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    List(Vec<StoredCanon>),
    Map(BTreeMap<String, StoredCanon>),
}

mod serde_bytes_compat {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::serde_bytes_vec(d)
    }
}

impl From<&Canon> for StoredCanon {
    fn from(value: &Canon) -> Self {
        match value {
            Canon::Null => StoredCanon::Null,
            Canon::Bool(b) => StoredCanon::Bool(*b),
            Canon::Int(v) => StoredCanon::Int(*v),
            Canon::Float(v) => StoredCanon::Float(*v),
            Canon::Str(s) => StoredCanon::Str(s.clone()),
            Canon::Bytes(b) => StoredCanon::Bytes(b.clone()),
            Canon::List(items) => StoredCanon::List(items.iter().map(Into::into).collect()),
            Canon::Map(entries) => {
                StoredCanon::Map(entries.iter().map(|(k, v)| (k.clone(), v.into())).collect())
            }
        }
    }
}

impl From<StoredCanon> for Canon {
    fn from(value: StoredCanon) -> Self {
        match value {
            StoredCanon::Null => Canon::Null,
            StoredCanon::Bool(b) => Canon::Bool(b),
            StoredCanon::Int(v) => Canon::Int(v),
            StoredCanon::Float(v) => Canon::Float(v),
            StoredCanon::Str(s) => Canon::Str(s),
            StoredCanon::Bytes(b) => Canon::Bytes(b),
            StoredCanon::List(items) => Canon::List(items.into_iter().map(Into::into).collect()),
            StoredCanon::Map(entries) => {
                Canon::Map(entries.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
        }
    }
}

impl Serialize for Canon {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.to_json().serialize(serializer)
        } else {
            StoredCanon::from(self).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Canon {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            Ok(Canon::from_json(&serde_json::Value::deserialize(
                deserializer,
            )?))
        } else {
            Ok(StoredCanon::deserialize(deserializer)?.into())
        }
    }
}

impl Canon {
    /// An empty map, to be filled with [`Canon::with`].
    pub fn map() -> Canon {
        Canon::Map(BTreeMap::new())
    }

    /// Builder: insert `key` into a map value (no effect on other variants).
    pub fn with(mut self, key: &str, value: impl Into<Canon>) -> Canon {
        if let Canon::Map(entries) = &mut self {
            entries.insert(key.to_string(), value.into());
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&Canon> {
        match self {
            Canon::Map(entries) => entries.get(key),
            _ => None,
        }
    }

    /// Look up a dotted path such as `optim.lr`.
    pub fn get_path(&self, path: &str) -> Option<&Canon> {
        path.split('.').try_fold(self, |value, key| value.get(key))
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Canon::Int(v) => Some(*v as f64),
            Canon::Float(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Canon::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Append the canonical bytes of this value to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Canon::Null => out.push(0),
            Canon::Bool(b) => {
                out.push(1);
                out.push(*b as u8);
            }
            Canon::Int(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Canon::Float(v) => {
                out.push(3);
                let bits = if v.is_nan() {
                    f64::NAN.to_bits()
                } else {
                    v.to_bits()
                };
                out.extend_from_slice(&bits.to_be_bytes());
            }
            Canon::Str(s) => {
                out.push(4);
                encode_len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Canon::Bytes(b) => {
                out.push(5);
                encode_len(out, b.len());
                out.extend_from_slice(b);
            }
            Canon::List(items) => {
                out.push(6);
                encode_len(out, items.len());
                for item in items {
                    item.encode_into(out);
                }
            }
            Canon::Map(entries) => {
                out.push(7);
                encode_len(out, entries.len());
                for (key, value) in entries {
                    encode_len(out, key.len());
                    out.extend_from_slice(key.as_bytes());
                    value.encode_into(out);
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The id of this value under a domain tag.
    pub fn id(&self, domain: &[u8]) -> Id {
        let mut hasher = blake3::Hasher::new();
        hasher.update(domain);
        hasher.update(&self.encode());
        Id(*hasher.finalize().as_bytes())
    }

    /// Convert from JSON (used to canonicalise resolved configs).
    pub fn from_json(value: &serde_json::Value) -> Canon {
        match value {
            serde_json::Value::Null => Canon::Null,
            serde_json::Value::Bool(b) => Canon::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Canon::Int(i),
                None => Canon::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Canon::Str(s.clone()),
            serde_json::Value::Array(items) => {
                Canon::List(items.iter().map(Canon::from_json).collect())
            }
            serde_json::Value::Object(entries) => Canon::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), Canon::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Convert any serde-serializable value through JSON. Floats stay floats,
    /// integers stay integers, structs become maps with sorted keys.
    pub fn from_serialize<T: Serialize>(value: &T) -> Canon {
        match serde_json::to_value(value) {
            Ok(json) => Canon::from_json(&json),
            Err(_) => Canon::Null,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Canon::Null => Value::Null,
            Canon::Bool(b) => Value::Bool(*b),
            Canon::Int(v) => Value::from(*v),
            Canon::Float(v) => serde_json::Number::from_f64(*v)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Canon::Str(s) => Value::String(s.clone()),
            Canon::Bytes(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
            Canon::List(items) => Value::Array(items.iter().map(Canon::to_json).collect()),
            Canon::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Flatten nested maps to dotted keys (`optim.lr`), for diffs and queries.
    pub fn flatten(&self) -> BTreeMap<String, Canon> {
        let mut out = BTreeMap::new();
        flatten_into(self, String::new(), &mut out);
        out
    }
}

fn flatten_into(value: &Canon, prefix: String, out: &mut BTreeMap<String, Canon>) {
    match value {
        Canon::Map(entries) if !entries.is_empty() => {
            for (key, child) in entries {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_into(child, path, out);
            }
        }
        other => {
            out.insert(prefix, other.clone());
        }
    }
}

impl fmt::Display for Canon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Canon::Null => f.write_str("null"),
            Canon::Bool(b) => write!(f, "{b}"),
            Canon::Int(v) => write!(f, "{v}"),
            Canon::Float(v) => write!(f, "{v}"),
            Canon::Str(s) => write!(f, "{s:?}"),
            Canon::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            other => write!(f, "{}", other.to_json()),
        }
    }
}

fn encode_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

impl From<bool> for Canon {
    fn from(v: bool) -> Self {
        Canon::Bool(v)
    }
}
impl From<i64> for Canon {
    fn from(v: i64) -> Self {
        Canon::Int(v)
    }
}
impl From<u64> for Canon {
    fn from(v: u64) -> Self {
        Canon::Int(v as i64)
    }
}
impl From<usize> for Canon {
    fn from(v: usize) -> Self {
        Canon::Int(v as i64)
    }
}
impl From<u32> for Canon {
    fn from(v: u32) -> Self {
        Canon::Int(v as i64)
    }
}
impl From<f64> for Canon {
    fn from(v: f64) -> Self {
        Canon::Float(v)
    }
}
impl From<&str> for Canon {
    fn from(v: &str) -> Self {
        Canon::Str(v.to_string())
    }
}
impl From<String> for Canon {
    fn from(v: String) -> Self {
        Canon::Str(v)
    }
}
impl From<Id> for Canon {
    fn from(v: Id) -> Self {
        Canon::Str(v.to_hex())
    }
}
impl<T: Into<Canon>> From<Option<T>> for Canon {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Canon::Null)
    }
}
impl<T: Into<Canon>> From<Vec<T>> for Canon {
    fn from(v: Vec<T>) -> Self {
        Canon::List(v.into_iter().map(Into::into).collect())
    }
}

/// Hash raw object bytes (the id of a stored object file).
pub fn object_id(bytes: &[u8]) -> Id {
    let mut hasher = blake3::Hasher::new();
    hasher.update(domain::OBJECT);
    hasher.update(bytes);
    Id(*hasher.finalize().as_bytes())
}

/// A streaming hasher for object ids, for files too large to hold in memory.
pub struct ObjectHasher(blake3::Hasher);

impl ObjectHasher {
    pub fn new() -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(domain::OBJECT);
        ObjectHasher(hasher)
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(&self) -> Id {
        Id(*self.0.finalize().as_bytes())
    }
}

impl Default for ObjectHasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Id;

    #[test]
    fn hex_prefix_matches_the_hex_form_and_nothing_else() {
        let id = Id(std::array::from_fn(|i| (i * 37 + 5) as u8));
        let hex = id.to_hex();
        assert_eq!(Id::from_hex(&hex), Some(id));
        for length in [0, 1, 4, 7, 12, 64] {
            assert!(id.has_hex_prefix(&hex[..length]), "{length}");
        }
        assert!(!id.has_hex_prefix("ffff"));
        assert!(!id.has_hex_prefix(&format!("{hex}0")));
    }
}
