//! Each format's loss mask, shown on a rendered example, and chat templates.

use graft::data::format::Format;
use graft::data::template::CHATML_JINJA;
use graft::data::{render_loss_mask, DataError, Encoder, Marking, Message, Tokenizer};
use std::path::PathBuf;
use std::sync::Arc;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny")
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_dir(&fixture_dir()).expect("fixture tokenizer loads"))
}

/// A model folder with the fixture tokenizer and a tokenizer_config.json.
fn tokenizer_with_config(config: serde_json::Value) -> (tempfile::TempDir, Arc<Tokenizer>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_dir(dir.path()).unwrap());
    (dir, tokenizer)
}

fn marked(encoder: &Encoder, line: &str) -> String {
    let example = encoder.encode_line(line, "test.jsonl", 1).unwrap();
    render_loss_mask(encoder.tokenizer(), &example, Marking::Brackets)
}

#[test]
fn fixture_tokenizer_has_special_tokens_and_round_trips() {
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.vocab_size(), 320);
    assert_eq!(tokenizer.bos_id(), Some(0));
    assert_eq!(tokenizer.eos_id(), Some(1));
    assert_eq!(tokenizer.pad_id(), 2);
    let ids = tokenizer.encode("hello world<|eos|>").unwrap();
    assert_eq!(
        ids.last(),
        Some(&1),
        "special tokens in text stay single tokens"
    );
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), "hello world<|eos|>");
}

#[test]
fn text_format_trains_on_every_token_and_eos() {
    let encoder = Encoder::new(tokenizer(), Format::Text, "auto").unwrap();
    assert_eq!(
        marked(&encoder, r#"{"text": "the cat sat"}"#),
        "<|bos|>⟦the cat sat<|eos|>⟧"
    );
}

#[test]
fn prompt_completion_trains_on_the_completion_only() {
    let encoder = Encoder::new(tokenizer(), Format::PromptCompletion, "auto").unwrap();
    assert_eq!(
        marked(&encoder, r#"{"prompt": "Q: 2+2=", "completion": " 4"}"#),
        "<|bos|>Q: 2+2=⟦ 4<|eos|>⟧"
    );
}

#[test]
fn alpaca_trains_on_the_output_only() {
    let encoder = Encoder::new(tokenizer(), Format::Alpaca, "auto").unwrap();
    let rendered = marked(
        &encoder,
        r#"{"instruction": "Name the capital.", "input": "France", "output": "Paris"}"#,
    );
    assert!(rendered.starts_with("<|bos|>Below is an instruction"));
    assert!(rendered.contains("### Input:\nFrance\n\n### Response:\n⟦Paris<|eos|>⟧"));
    assert_eq!(rendered.matches('⟦').count(), 1);
    let without_input = marked(&encoder, r#"{"instruction": "Say hi.", "output": "hi"}"#);
    assert!(!without_input.contains("### Input"));
    assert!(without_input.ends_with("### Response:\n⟦hi<|eos|>⟧"));
}

#[test]
fn chat_trains_on_assistant_turns_only() {
    let encoder = Encoder::new(tokenizer(), Format::Chat, "chatml").unwrap();
    let line = r#"{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"}]}"#
        .replace('\n', " ");
    assert_eq!(
        marked(&encoder, &line),
        "<|bos|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
         <|im_start|>assistant\n⟦hello<|im_end|>\n⟧<|im_start|>user\nbye<|im_end|>\n\
         <|im_start|>assistant\n⟦ciao<|im_end|>\n<|eos|>⟧"
    );
}

#[test]
fn plain_template_keeps_the_answer_separate_from_the_role() {
    let encoder = Encoder::new(tokenizer(), Format::Chat, "plain").unwrap();
    let line = r#"{"messages": [{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "2"}]}"#;
    assert_eq!(
        marked(&encoder, line),
        "<|bos|>user: What is 1+1?\nassistant:⟦ 2\n<|eos|>⟧"
    );
}

#[test]
fn model_jinja_template_marks_the_same_spans_as_the_builtin() {
    let (_dir, tokenizer) = tokenizer_with_config(serde_json::json!({
        "chat_template": CHATML_JINJA,
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
    }));
    let jinja = Encoder::new(tokenizer.clone(), Format::Chat, "auto").unwrap();
    assert!(jinja.template_identity().starts_with("jinja:"));
    let builtin = Encoder::new(tokenizer, Format::Chat, "chatml").unwrap();
    let messages = vec![
        Message::new("user", "hi"),
        Message::new("assistant", "hello"),
        Message::new("user", "more"),
        Message::new("assistant", "sure"),
    ];
    let example = graft::data::Example::Chat(messages);
    let from_jinja = jinja.segments(&example, "f", 1).unwrap();
    let from_builtin = builtin.segments(&example, "f", 1).unwrap();
    assert_eq!(from_jinja, from_builtin);
}

#[test]
fn model_template_gets_hf_globals_and_python_string_methods() {
    let template = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}A: {{ m['content'].strip() }}{{ eos_token }}{% else %}U: {{ m.content | trim }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A: {% endif %}";
    let (_dir, tokenizer) = tokenizer_with_config(serde_json::json!({
        "chat_template": template, "bos_token": {"content": "<|bos|>"}, "eos_token": "<|eos|>",
    }));
    let encoder = Encoder::new(tokenizer, Format::Chat, "model").unwrap();
    let line = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  yo "}]}"#;
    // The template writes bos and eos itself; nothing is added around it.
    assert_eq!(marked(&encoder, line), "<|bos|>U: hi\nA: ⟦yo<|eos|>⟧");
}

#[test]
fn template_raise_exception_becomes_a_template_error() {
    let template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}";
    let (_dir, tokenizer) = tokenizer_with_config(serde_json::json!({ "chat_template": template }));
    let encoder = Encoder::new(tokenizer, Format::Chat, "model").unwrap();
    let err = encoder
        .encode_line(
            r#"{"messages": [{"role": "assistant", "content": "x"}]}"#,
            "f",
            1,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("first turn must be the user"),
        "{err}"
    );
}

#[test]
fn template_that_rewrites_history_is_rejected_not_mistrained() {
    // Prints only the last message: earlier renderings are not prefixes.
    let template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}";
    let (_dir, tokenizer) = tokenizer_with_config(serde_json::json!({ "chat_template": template }));
    let encoder = Encoder::new(tokenizer, Format::Chat, "model").unwrap();
    let line = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;
    let err = encoder.encode_line(line, "chat.jsonl", 7).unwrap_err();
    assert!(
        matches!(err, DataError::TemplateNotPrefixStable { ref file, line: 7, .. } if file == "chat.jsonl"),
        "{err}"
    );
}

#[test]
fn model_template_is_required_when_asked_for() {
    let err = Encoder::new(tokenizer(), Format::Chat, "model")
        .err()
        .unwrap();
    assert!(matches!(err, DataError::NoModelTemplate));
    let err = Encoder::new(tokenizer(), Format::Chat, "llama9")
        .err()
        .unwrap();
    assert!(err.to_string().contains("llama9"));
}

#[test]
fn cached_encoding_equals_the_tokenizers_own_on_varied_text() {
    let tokenizer = tokenizer();
    assert!(
        tokenizer.is_cached(),
        "the fixture is a plain byte-level BPE"
    );
    let mut texts: Vec<String> = graft::data::synth("arithmetic", 50, 1).unwrap();
    texts.extend(graft::data::synth("reverse", 50, 1).unwrap());
    texts.extend([
        "  two leading spaces,   three inside, trailing   ".to_string(),
        "tab\tsep\t\tdouble\ttab\n\nnew  lines \n indented\r\nwindows".to_string(),
        "unicode café — “quotes” 日本語 😀 mixed\u{a0}nbsp \u{3000}ideographic space x".to_string(),
        "specials<|eos|>glued<|bos|> <|pad|> spaced <|eos|><|eos|>".to_string(),
        "contractions: it's they'll we've I'M don't; numbers 1234567 3.14 -42 1e-9".to_string(),
        "punctuation!!! ... ??? (a) [b] {c} <d> \"e\" 'f' `g` ~h^ |i| \\j/".to_string(),
    ]);
    for text in &texts {
        // Twice: once filling the cache, once reading it.
        for _ in 0..2 {
            assert_eq!(
                tokenizer.encode(text).unwrap(),
                tokenizer.encode_uncached(text).unwrap(),
                "{text:?}"
            );
        }
    }
}
