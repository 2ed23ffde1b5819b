//! Chat templates: turning chat messages into text segments with loss flags.
//!
//! A conversation is rendered either through the model's own Jinja
//! `chat_template` (from `tokenizer_config.json`, run by minijinja with the
//! globals Hugging Face provides: `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `raise_exception`, `strftime_now`) or through a
//! built-in template (`chatml`, `plain`) for models that ship none.
//!
//! # Locating assistant turns in a Jinja rendering
//!
//! A Jinja template yields one string, but training needs to know which
//! characters are assistant output. For each assistant message `i` we render
//! twice: the conversation before it with `add_generation_prompt = true` (what
//! the model sees when asked to answer) and the conversation up to and
//! including it. The characters between the two renderings are the assistant
//! turn: its content plus the template's end-of-turn marker, which the model
//! must learn to emit in order to stop. Both renderings must be prefixes of the
//! full rendering, with one allowance: a template that writes the end-of-text
//! token only after the last turn (Phi-3's) ends an earlier turn's rendering
//! with a token the full one does not have there, so that trailing token is
//! set aside before the comparison. A template that rewrites earlier turns
//! (Qwen3 drops past reasoning, some stamp the date) is not prefix-stable and
//! is rejected with [`DataError::TemplateNotPrefixStable`] rather than trained
//! with a wrong mask.
//!
//! This costs O(turns²) renderings per conversation, which is fine for chat
//! data; the built-in templates build their segments directly and produce
//! exactly what the same procedure would produce on their Jinja equivalents.

use super::error::{DataError, Result};
use super::format::{Message, Segment};
use super::tokenizer::Tokenizer;
use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

/// The `chatml` template as Jinja, for reference and for tests that check the
/// built-in renders the same.
pub const CHATML_JINJA: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The date `strftime_now` returns. Templates that print today's date would
/// otherwise give different tokens on different days and break the dataset
/// id's promise that the same inputs give the same tokens.
const PINNED_DATE: (i32, u32, u32) = (2024, 1, 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (Qwen, many others).
    Chatml,
    /// `role: content\n`, for base models without chat tokens.
    Plain,
}

pub enum ChatTemplate {
    Builtin(BuiltinTemplate),
    Jinja(Box<JinjaTemplate>),
}

pub struct JinjaTemplate {
    environment: Environment<'static>,
    source_hash: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Resolve a template name from the config: `auto` (the model's template
    /// if it has one, else `chatml`), `model`, `chatml` or `plain`.
    pub fn resolve(name: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        match name {
            "chatml" => Ok(ChatTemplate::Builtin(BuiltinTemplate::Chatml)),
            "plain" => Ok(ChatTemplate::Builtin(BuiltinTemplate::Plain)),
            "model" => match tokenizer.chat_template() {
                Some(source) => ChatTemplate::jinja(source, tokenizer),
                None => Err(DataError::NoModelTemplate),
            },
            "auto" => match tokenizer.chat_template() {
                Some(source) => ChatTemplate::jinja(source, tokenizer),
                None => Ok(ChatTemplate::Builtin(BuiltinTemplate::Chatml)),
            },
            other => Err(DataError::UnknownTemplate {
                name: other.to_string(),
            }),
        }
    }

    /// Compile a Jinja chat template with the tokenizer's special tokens.
    pub fn jinja(source: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let mut environment = Environment::new();
        // Hugging Face renders with trim_blocks and lstrip_blocks on; templates
        // are written for that whitespace handling.
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment.add_function("raise_exception", raise_exception);
        environment.add_function("strftime_now", strftime_now);
        environment.add_filter("tojson", tojson);
        environment.set_unknown_method_callback(python_string_methods);
        environment
            .add_template_owned("chat", source.to_string())
            .map_err(|err| DataError::Template {
                template: "model".to_string(),
                message: err.to_string(),
            })?;
        Ok(ChatTemplate::Jinja(Box::new(JinjaTemplate {
            environment,
            source_hash: blake3::hash(source.as_bytes()).to_hex().to_string(),
            bos_token: tokenizer.bos().map(|t| t.text.clone()).unwrap_or_default(),
            eos_token: tokenizer.eos().map(|t| t.text.clone()).unwrap_or_default(),
        })))
    }

    /// What goes into the dataset spec: the built-in's name, or `jinja:` and
    /// the blake3 hash of the template source.
    pub fn identity(&self) -> String {
        match self {
            ChatTemplate::Builtin(BuiltinTemplate::Chatml) => "chatml".to_string(),
            ChatTemplate::Builtin(BuiltinTemplate::Plain) => "plain".to_string(),
            ChatTemplate::Jinja(jinja) => format!("jinja:{}", jinja.source_hash),
        }
    }

    /// Built-in templates end a trained conversation with the tokenizer's eos
    /// token so that generation has a token to stop on; a model's own
    /// template already ends turns with the tokens the model stops on.
    pub fn appends_eos(&self) -> bool {
        matches!(self, ChatTemplate::Builtin(_))
    }

    /// Whether the rendering writes the bos token itself (a model's own
    /// template does, where it wants one); otherwise the encoder prepends it,
    /// and so must whoever tokenizes a prompt rendered by this template.
    pub fn writes_bos(&self) -> bool {
        matches!(self, ChatTemplate::Jinja(_))
    }

    /// Render a conversation into segments; assistant turns carry the loss.
    /// `file` and `line` only name the record in errors.
    pub fn render_segments(
        &self,
        messages: &[Message],
        file: &str,
        line: u64,
    ) -> Result<Vec<Segment>> {
        match self {
            ChatTemplate::Builtin(builtin) => Ok(builtin.render_segments(messages)),
            ChatTemplate::Jinja(jinja) => jinja.render_segments(messages, file, line),
        }
    }

    /// The whole text of a conversation, as `apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=...)` renders it. A model's own
    /// template renders in one pass, so templates that rewrite earlier turns
    /// (Qwen3 drops past reasoning) render here even where
    /// [`ChatTemplate::render_segments`] refuses them.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatTemplate::Jinja(jinja) => jinja.render(messages, add_generation_prompt),
            ChatTemplate::Builtin(_) if add_generation_prompt => self.render_prompt(messages),
            ChatTemplate::Builtin(builtin) => Ok(builtin
                .render_segments(messages)
                .into_iter()
                .map(|segment| segment.text)
                .collect()),
        }
    }

    /// The prompt text that asks the model for the next assistant turn.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String> {
        match self {
            ChatTemplate::Builtin(builtin) => {
                let mut text: String = builtin
                    .render_segments(messages)
                    .into_iter()
                    .map(|segment| segment.text)
                    .collect();
                text.push_str(builtin.generation_prompt());
                Ok(text)
            }
            ChatTemplate::Jinja(jinja) => jinja.render(messages, true),
        }
    }
}

impl BuiltinTemplate {
    fn generation_prompt(&self) -> &'static str {
        match self {
            BuiltinTemplate::Chatml => "<|im_start|>assistant\n",
            BuiltinTemplate::Plain => "assistant:",
        }
    }

    fn render_segments(&self, messages: &[Message]) -> Vec<Segment> {
        let mut segments = Vec::with_capacity(messages.len() * 2);
        let mut context = String::new();
        for message in messages {
            match (self, message.is_assistant()) {
                (BuiltinTemplate::Chatml, false) => {
                    context.push_str("<|im_start|>");
                    context.push_str(&message.role);
                    context.push('\n');
                    context.push_str(&message.content);
                    context.push_str("<|im_end|>\n");
                }
                (BuiltinTemplate::Plain, false) => {
                    context.push_str(&message.role);
                    context.push_str(": ");
                    context.push_str(&message.content);
                    context.push('\n');
                }
                (BuiltinTemplate::Chatml, true) => {
                    context.push_str(self.generation_prompt());
                    segments.push(Segment::context(std::mem::take(&mut context)));
                    segments.push(Segment::trained(format!("{}<|im_end|>\n", message.content)));
                }
                (BuiltinTemplate::Plain, true) => {
                    context.push_str(self.generation_prompt());
                    segments.push(Segment::context(std::mem::take(&mut context)));
                    segments.push(Segment::trained(format!(" {}\n", message.content)));
                }
            }
        }
        if !context.is_empty() {
            segments.push(Segment::context(context));
        }
        segments
    }
}

impl JinjaTemplate {
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(|err| template_error(&err))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|err| template_error(&err))
    }

    fn render_segments(&self, messages: &[Message], file: &str, line: u64) -> Result<Vec<Segment>> {
        let full = self.render(messages, false)?;
        let not_stable = |prefix_messages: usize| DataError::TemplateNotPrefixStable {
            file: file.to_string(),
            line,
            template: format!("jinja:{}", &self.source_hash[..12]),
            prefix_messages,
        };
        let mut segments = Vec::new();
        let mut cursor = 0;
        for (index, message) in messages.iter().enumerate() {
            if !message.is_assistant() {
                continue;
            }
            let prompt = self.render(&messages[..index], true)?;
            let answered = self.render(&messages[..=index], false)?;
            let answered = match answered.strip_suffix(self.eos_token.as_str()) {
                Some(turn) if !self.eos_token.is_empty() && !full.starts_with(&answered) => turn,
                _ => answered.as_str(),
            };
            let stable = full.starts_with(&prompt)
                && full.starts_with(answered)
                && cursor <= prompt.len()
                && prompt.len() <= answered.len();
            if !stable {
                return Err(not_stable(index));
            }
            if cursor < prompt.len() {
                segments.push(Segment::context(&full[cursor..prompt.len()]));
            }
            segments.push(Segment::trained(&full[prompt.len()..answered.len()]));
            cursor = answered.len();
        }
        if cursor < full.len() {
            segments.push(Segment::context(&full[cursor..]));
        }
        Ok(segments)
    }
}

fn template_error(err: &JinjaError) -> DataError {
    DataError::Template {
        template: "model".to_string(),
        message: format!("{err:#}"),
    }
}

fn raise_exception(message: String) -> std::result::Result<JinjaValue, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> String {
    let (year, month, day) = PINNED_DATE;
    chrono::NaiveDate::from_ymd_opt(year, month, day)
        .map(|date| date.format(&format).to_string())
        .unwrap_or_default()
}

/// Jinja's `tojson`, which minijinja only has behind a feature.
fn tojson(value: JinjaValue, options: Kwargs) -> std::result::Result<String, JinjaError> {
    let indent: Option<usize> = options.get("indent")?;
    options.assert_all_used()?;
    let serialized = match indent {
        Some(_) => serde_json::to_string_pretty(&value),
        None => serde_json::to_string(&value),
    };
    serialized.map_err(|err| JinjaError::new(ErrorKind::InvalidOperation, err.to_string()))
}

/// The Python string and dict methods that Hugging Face templates call
/// (`content.strip()`, `message.get('x')`, `tools.items()`...), which
/// minijinja, not being Python, does not have.
fn python_string_methods(
    _state: &minijinja::State,
    value: &JinjaValue,
    method: &str,
    args: &[JinjaValue],
) -> std::result::Result<JinjaValue, JinjaError> {
    let arg = |index: usize| args.get(index).and_then(|a| a.as_str().map(str::to_string));
    if let Some(text) = value.as_str() {
        let chars = arg(0);
        let trim_set = |c: char| {
            chars
                .as_deref()
                .map_or(c.is_whitespace(), |s| s.contains(c))
        };
        let result = match method {
            "strip" => JinjaValue::from(text.trim_matches(trim_set)),
            "lstrip" => JinjaValue::from(text.trim_start_matches(trim_set)),
            "rstrip" => JinjaValue::from(text.trim_end_matches(trim_set)),
            "upper" => JinjaValue::from(text.to_uppercase()),
            "lower" => JinjaValue::from(text.to_lowercase()),
            "startswith" => JinjaValue::from(arg(0).is_some_and(|p| text.starts_with(&p))),
            "endswith" => JinjaValue::from(arg(0).is_some_and(|p| text.ends_with(&p))),
            "replace" => match (arg(0), arg(1)) {
                (Some(from), Some(to)) => JinjaValue::from(text.replace(&from, &to)),
                _ => return Err(JinjaError::from(ErrorKind::MissingArgument)),
            },
            "split" => match arg(0) {
                Some(separator) => JinjaValue::from(
                    text.split(separator.as_str())
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                ),
                None => JinjaValue::from(
                    text.split_whitespace()
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                ),
            },
            _ => return Err(JinjaError::from(ErrorKind::UnknownMethod)),
        };
        return Ok(result);
    }
    if value.as_object().is_some() {
        match method {
            "get" => {
                let key = args.first().cloned().unwrap_or(JinjaValue::UNDEFINED);
                let found = value.get_item(&key).unwrap_or(JinjaValue::UNDEFINED);
                return Ok(if found.is_undefined() {
                    args.get(1).cloned().unwrap_or(JinjaValue::from(()))
                } else {
                    found
                });
            }
            "items" => {
                let keys = value.try_iter()?;
                let pairs: Vec<JinjaValue> = keys
                    .map(|key| {
                        let item = value.get_item(&key).unwrap_or(JinjaValue::UNDEFINED);
                        JinjaValue::from(vec![key, item])
                    })
                    .collect();
                return Ok(JinjaValue::from(pairs));
            }
            "keys" => return Ok(JinjaValue::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let values: Vec<JinjaValue> = value
                    .try_iter()?
                    .map(|key| value.get_item(&key).unwrap_or(JinjaValue::UNDEFINED))
                    .collect();
                return Ok(JinjaValue::from(values));
            }
            _ => {}
        }
    }
    Err(JinjaError::from(ErrorKind::UnknownMethod))
}
