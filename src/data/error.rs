//! The one error type of the data module.
//!
//! Every error caused by a data file names the file, the 1-based line and,
//! where it applies, the JSON field (as a path such as `messages[2].content`),
//! so that a user can open the file and fix it without guessing.

use std::fmt;

/// Where in a data file something went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based line number.
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}:{line}: byte {byte} is not valid UTF-8; re-encode the file as UTF-8")]
    NonUtf8 {
        file: String,
        line: u64,
        byte: usize,
    },

    #[error("{file}:{line}: malformed JSON: {message}")]
    MalformedJson {
        file: String,
        line: u64,
        message: String,
    },

    #[error("{file}:{line}: missing field `{field}` (format `{format}` needs it)")]
    MissingField {
        file: String,
        line: u64,
        field: String,
        format: &'static str,
    },

    #[error("{file}:{line}: field `{field}` should be {expected}, found {found}")]
    WrongType {
        file: String,
        line: u64,
        field: String,
        expected: &'static str,
        found: &'static str,
    },

    #[error("{file}:{line}: field `{field}`: {message}")]
    InvalidValue {
        file: String,
        line: u64,
        field: String,
        message: String,
    },

    #[error("{file}: no examples left after filtering ({reason}); check the file and the split settings")]
    Empty { file: String, reason: String },

    #[error("unknown data format `{name}`; expected one of text, prompt_completion, alpaca, chat")]
    UnknownFormat { name: String },

    #[error("unknown chat template `{name}`; expected `model` (the tokenizer's chat_template), `chatml` or `plain`")]
    UnknownTemplate { name: String },

    #[error("the tokenizer has no chat_template; set the template to `chatml` or `plain`")]
    NoModelTemplate,

    #[error("chat template `{template}`: {message}")]
    Template { template: String, message: String },

    #[error("{file}:{line}: chat template `{template}` is not prefix-stable (rendering the first {prefix_messages} messages is not a prefix of the full conversation), so the assistant turns cannot be located for the loss mask; use the `chatml` or `plain` template")]
    TemplateNotPrefixStable {
        file: String,
        line: u64,
        template: String,
        prefix_messages: usize,
    },

    #[error("cannot load tokenizer {path}: {message}")]
    TokenizerLoad { path: String, message: String },

    #[error("tokenizer: {message}")]
    Tokenizer { message: String },

    #[error("the data {what} changed from the parent's `{parent}` to `{new}`: the model was trained on the parent's form and will see a different one; set data.allow_format_change = true if this is intended")]
    FormatChange {
        what: &'static str,
        parent: String,
        new: String,
    },

    #[error("unknown synthetic task `{name}`; expected one of {known}")]
    UnknownTask { name: String, known: String },

    #[error("invalid data setting `{setting}`: {message}")]
    Config { setting: String, message: String },

    #[error("cannot resume the data stream: {message}")]
    Resume { message: String },
}

impl DataError {
    pub(crate) fn io(file: &str, source: std::io::Error) -> DataError {
        DataError::Io {
            file: file.to_string(),
            source,
        }
    }

    pub(crate) fn config(setting: &str, message: impl Into<String>) -> DataError {
        DataError::Config {
            setting: setting.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
