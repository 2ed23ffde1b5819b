//! Errors of the model layer: each names the file, key or tensor that is wrong.

use std::path::PathBuf;

/// Everything that can go wrong loading, running or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Config { key: String, message: String },
    #[error("unsupported {key} = {value:?} (supported: {supported})")]
    Unsupported {
        key: String,
        value: String,
        supported: String,
    },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{name}` has dtype {dtype}, expected F32, BF16 or F16")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor `{name}` in the checkpoint is not used by a {model_type} model (unexpected)")]
    UnexpectedTensor { name: String, model_type: String },
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// `tensor` says which tensor and how its shape differs.
    #[error("{path}: {key} = {value} disagrees with the weights: {tensor}")]
    ConfigMismatch {
        path: PathBuf,
        key: String,
        value: usize,
        tensor: String,
    },
    #[error("no parameter named `{name}`")]
    UnknownParam { name: String },
    #[error("adapter: {message}")]
    Adapter { message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("reference {path}: {message}")]
    Reference { path: PathBuf, message: String },
    #[error("model `{id}` is not in the local Hugging Face cache: {detail}")]
    NotInCache { id: String, detail: String },
    #[error("{message}")]
    Invalid { message: String },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
