//! JSONL record formats and what part of each record carries the loss.
//!
//! | format | fields | loss on |
//! | --- | --- | --- |
//! | `text` | `text` | every token |
//! | `prompt_completion` | `prompt`, `completion` | the completion |
//! | `alpaca` | `instruction`, `input` (optional), `output` | the output |
//! | `chat` | `messages: [{role, content}]` | assistant turns |
//!
//! Parsing turns one line into an [`Example`]: either final text segments with
//! loss flags, or chat messages that a [`crate::data::template::ChatTemplate`]
//! renders into segments. Fields are extracted by hand rather than through a
//! derived struct so that every error can name the exact field that is wrong.

use super::error::{DataError, Result};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// How the records of a JSONL file are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Text,
    PromptCompletion,
    Alpaca,
    Chat,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::Text,
        Format::PromptCompletion,
        Format::Alpaca,
        Format::Chat,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::PromptCompletion => "prompt_completion",
            Format::Alpaca => "alpaca",
            Format::Chat => "chat",
        }
    }

    /// Parse one non-blank line of a file of this format.
    pub fn parse_line(&self, line: &str, file: &str, line_number: u64) -> Result<Example> {
        let at = FieldReader {
            file,
            line: line_number,
            format: self.name(),
        };
        let value: Value = serde_json::from_str(line).map_err(|err| DataError::MalformedJson {
            file: file.to_string(),
            line: line_number,
            message: err.to_string(),
        })?;
        let Value::Object(record) = &value else {
            return Err(at.wrong_type("(record)", "a JSON object", &value));
        };
        match self {
            Format::Text => Ok(Example::Segments(vec![Segment::trained(
                at.string(record, "text")?,
            )])),
            Format::PromptCompletion => Ok(Example::Segments(vec![
                Segment::context(at.string(record, "prompt")?),
                Segment::trained(at.string(record, "completion")?),
            ])),
            Format::Alpaca => {
                let instruction = at.string(record, "instruction")?;
                let input = at.optional_string(record, "input")?;
                let output = at.string(record, "output")?;
                Ok(Example::Segments(vec![
                    Segment::context(alpaca_prompt(&instruction, input.as_deref())),
                    Segment::trained(output),
                ]))
            }
            Format::Chat => at.messages(record).map(Example::Chat),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = DataError;
    fn from_str(name: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| DataError::UnknownFormat {
                name: name.to_string(),
            })
    }
}

/// A run of text and whether its tokens are trained on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub loss: bool,
}

impl Segment {
    pub fn trained(text: impl Into<String>) -> Segment {
        Segment {
            text: text.into(),
            loss: true,
        }
    }
    pub fn context(text: impl Into<String>) -> Segment {
        Segment {
            text: text.into(),
            loss: false,
        }
    }
}

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
    pub fn is_assistant(&self) -> bool {
        self.role == "assistant"
    }
}

/// One parsed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Example {
    /// Final text with loss flags (`text`, `prompt_completion`, `alpaca`).
    Segments(Vec<Segment>),
    /// Chat turns, still to be rendered through a template.
    Chat(Vec<Message>),
}

/// The Stanford Alpaca prompt, the one models trained on Alpaca data expect.
pub fn alpaca_prompt(instruction: &str, input: Option<&str>) -> String {
    match input.filter(|input| !input.is_empty()) {
        Some(input) => format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        None => format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    }
}

/// The JSON type name a user would recognise, for wrong-type errors.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field extraction that knows where it is, for precise errors.
struct FieldReader<'a> {
    file: &'a str,
    line: u64,
    format: &'static str,
}

type JsonObject = serde_json::Map<String, Value>;

impl FieldReader<'_> {
    fn wrong_type(&self, field: &str, expected: &'static str, found: &Value) -> DataError {
        DataError::WrongType {
            file: self.file.to_string(),
            line: self.line,
            field: field.to_string(),
            expected,
            found: json_type(found),
        }
    }

    fn missing(&self, field: &str) -> DataError {
        DataError::MissingField {
            file: self.file.to_string(),
            line: self.line,
            field: field.to_string(),
            format: self.format,
        }
    }

    fn string_at(&self, record: &JsonObject, key: &str, path: &str) -> Result<String> {
        match record.get(key) {
            None => Err(self.missing(path)),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(self.wrong_type(path, "a string", other)),
        }
    }

    fn string(&self, record: &JsonObject, key: &str) -> Result<String> {
        self.string_at(record, key, key)
    }

    /// Absent and `null` both mean "not given".
    fn optional_string(&self, record: &JsonObject, key: &str) -> Result<Option<String>> {
        match record.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn messages(&self, record: &JsonObject) -> Result<Vec<Message>> {
        let list = match record.get("messages") {
            None => return Err(self.missing("messages")),
            Some(Value::Array(list)) => list,
            Some(other) => return Err(self.wrong_type("messages", "an array", other)),
        };
        if list.is_empty() {
            return Err(DataError::InvalidValue {
                file: self.file.to_string(),
                line: self.line,
                field: "messages".to_string(),
                message: "the conversation has no messages".to_string(),
            });
        }
        let mut messages = Vec::with_capacity(list.len());
        for (index, item) in list.iter().enumerate() {
            let Value::Object(turn) = item else {
                return Err(self.wrong_type(&format!("messages[{index}]"), "an object", item));
            };
            messages.push(Message {
                role: self.string_at(turn, "role", &format!("messages[{index}].role"))?,
                content: self.string_at(turn, "content", &format!("messages[{index}].content"))?,
            });
        }
        if !messages.iter().any(Message::is_assistant) {
            return Err(DataError::InvalidValue {
                file: self.file.to_string(),
                line: self.line,
                field: "messages".to_string(),
                message: "no message has role \"assistant\", so nothing would be trained on"
                    .to_string(),
            });
        }
        Ok(messages)
    }
}
