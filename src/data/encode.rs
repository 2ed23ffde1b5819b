//! One record in, token ids and per-token loss flags out.
//!
//! The rules, the same for every format so that formats compare fairly:
//! - each segment is tokenized on its own and the ids concatenated, so a
//!   loss flag never straddles a token (the cost: a token that would have
//!   spanned a prompt/answer boundary is split; train, eval and generation
//!   all use the same segments, so they agree);
//! - bos is prepended (no loss) when the tokenizer has one, except for a
//!   model's own Jinja template, which writes `bos_token` itself if it wants;
//! - eos is appended when the tokenizer has one (not after a model's own
//!   template), trained when the record ends with trained text, so that the
//!   model learns to stop;
//! - the first token never carries loss: nothing before it predicts it.

use super::error::{DataError, Result};
use super::format::{Example, Format, Segment};
use super::template::ChatTemplate;
use super::tokenizer::Tokenizer;
use crate::store::canonical::Canon;
use std::sync::Arc;

/// Token ids of one example and, per token, whether it is a training target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizedExample {
    pub ids: Vec<u32>,
    /// `loss[i]`: predicting `ids[i]` from `ids[..i]` is trained on.
    pub loss: Vec<bool>,
}

impl TokenizedExample {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn trained_tokens(&self) -> usize {
        self.loss.iter().filter(|&&loss| loss).count()
    }

    /// Split before the last run of trained tokens: `(prompt, answer)`. For a
    /// chat example that is the conversation up to the last assistant turn,
    /// and that turn with its end marker, which is what exact-match
    /// evaluation compares.
    pub fn split_last_answer(&self) -> (&[u32], &[u32]) {
        let end = self
            .loss
            .iter()
            .rposition(|&loss| loss)
            .map_or(0, |last| last + 1);
        let start = self.loss[..end]
            .iter()
            .rposition(|&loss| !loss)
            .map_or(0, |last_context| last_context + 1);
        (&self.ids[..start], &self.ids[start..end])
    }
}

/// Turns records of one format into tokens.
pub struct Encoder {
    tokenizer: Arc<Tokenizer>,
    format: Format,
    /// Only for `chat`; other formats carry their own fixed layout.
    template: Option<ChatTemplate>,
}

impl Encoder {
    /// `template` names the chat template (`auto`, `model`, `chatml`,
    /// `plain`); it is ignored for formats other than `chat`.
    pub fn new(tokenizer: Arc<Tokenizer>, format: Format, template: &str) -> Result<Encoder> {
        let template = match format {
            Format::Chat => Some(ChatTemplate::resolve(template, &tokenizer)?),
            _ => None,
        };
        Ok(Encoder {
            tokenizer,
            format,
            template,
        })
    }

    /// The encoder a dataset record's spec describes (to replay or compare
    /// an earlier dataset in its own format). A `jinja:` template must be
    /// the tokenizer's own template, by hash.
    pub fn from_spec(tokenizer: Arc<Tokenizer>, spec: &Canon) -> Result<Encoder> {
        let field = |key: &str| spec.get(key).and_then(Canon::as_str).unwrap_or("");
        let format: Format = field("format").parse()?;
        let identity = field("template");
        let template_name = match identity {
            "chatml" | "plain" => identity,
            "none" => "auto",
            _ if identity.starts_with("jinja:") => "model",
            other => {
                return Err(DataError::UnknownTemplate {
                    name: other.to_string(),
                })
            }
        };
        let encoder = Encoder::new(tokenizer, format, template_name)?;
        if format == Format::Chat && encoder.template_identity() != identity {
            return Err(DataError::Template {
                template: identity.to_string(),
                message: "the tokenizer's chat_template is not the one this dataset was read with"
                    .to_string(),
            });
        }
        Ok(encoder)
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    pub fn format(&self) -> Format {
        self.format
    }
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The template's identity for the dataset spec (`none` outside chat).
    pub fn template_identity(&self) -> String {
        self.template
            .as_ref()
            .map_or_else(|| "none".to_string(), ChatTemplate::identity)
    }

    /// Everything about how records become tokens, for the dataset spec.
    pub fn spec(&self) -> Canon {
        Canon::map()
            .with("format", self.format.name())
            .with("template", self.template_identity())
            .with("tokenizer", self.tokenizer.id())
            .with(
                "bos",
                self.add_bos().then(|| self.tokenizer.bos_id()).flatten(),
            )
            .with(
                "eos",
                self.add_eos().then(|| self.tokenizer.eos_id()).flatten(),
            )
    }

    fn add_bos(&self) -> bool {
        !matches!(self.template, Some(ChatTemplate::Jinja(_)))
    }
    fn add_eos(&self) -> bool {
        self.template.as_ref().is_none_or(ChatTemplate::appends_eos)
    }

    /// Parse and tokenize one line.
    pub fn encode_line(
        &self,
        line: &str,
        file: &str,
        line_number: u64,
    ) -> Result<TokenizedExample> {
        let example = self.format.parse_line(line, file, line_number)?;
        self.encode_example(&example, file, line_number)
    }

    /// The segments of a parsed record (chat rendered through the template).
    pub fn segments(&self, example: &Example, file: &str, line: u64) -> Result<Vec<Segment>> {
        match (example, &self.template) {
            (Example::Segments(segments), _) => Ok(segments.clone()),
            (Example::Chat(messages), Some(template)) => {
                template.render_segments(messages, file, line)
            }
            // A chat record read as another format cannot happen: parsing
            // follows the format. Render it plainly rather than fail.
            (Example::Chat(messages), None) => Ok(messages
                .iter()
                .map(|message| Segment {
                    text: format!("{}: {}\n", message.role, message.content),
                    loss: message.is_assistant(),
                })
                .collect()),
        }
    }

    pub fn encode_example(
        &self,
        example: &Example,
        file: &str,
        line: u64,
    ) -> Result<TokenizedExample> {
        let segments = self.segments(example, file, line)?;
        self.encode_segments(&segments)
    }

    pub fn encode_segments(&self, segments: &[Segment]) -> Result<TokenizedExample> {
        let mut out = TokenizedExample::default();
        if let (true, Some(bos)) = (self.add_bos(), self.tokenizer.bos_id()) {
            out.ids.push(bos);
            out.loss.push(false);
        }
        for segment in segments.iter().filter(|segment| !segment.text.is_empty()) {
            let ids = self.tokenizer.encode(&segment.text)?;
            out.loss.resize(out.loss.len() + ids.len(), segment.loss);
            out.ids.extend(ids);
        }
        if let (true, Some(eos)) = (self.add_eos(), self.tokenizer.eos_id()) {
            let ends_trained = segments.last().is_some_and(|segment| segment.loss);
            out.ids.push(eos);
            out.loss.push(ends_trained);
        }
        if let Some(first) = out.loss.first_mut() {
            *first = false;
        }
        Ok(out)
    }
}
