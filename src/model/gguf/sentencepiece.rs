//! The pieces of a SentencePiece `tokenizer.model`, for the scores llama.cpp's
//! SentencePiece tokenizer ranks merges by (`tokenizer.json` does not carry them).
//!
//! The file is sentencepiece's `ModelProto`; only its `pieces` (field 1: piece text,
//! score, type) are read, the trainer and normalizer specs are skipped.

use std::path::Path;

use prost::Message;

use super::super::error::ModelError;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<SentencePiece>,
}

#[derive(Clone, PartialEq, Message)]
struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
}

/// Each piece's text and score, by id, from the `tokenizer.model` at `path`.
pub fn read_pieces(path: &Path) -> Result<Vec<(String, f32)>, ModelError> {
    let bad = |message: String| ModelError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| bad(format!("not a SentencePiece model: {e}")))?;
    if model.pieces.is_empty() {
        return Err(bad("not a SentencePiece model: it holds no pieces".into()));
    }
    Ok(model
        .pieces
        .into_iter()
        .map(|p| (p.piece.unwrap_or_default(), p.score.unwrap_or(0.0)))
        .collect())
}
