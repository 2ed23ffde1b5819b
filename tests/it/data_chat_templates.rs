//! Real models' chat templates (Llama 3.1/3.2, Qwen2.5, Qwen3, Gemma 2/3, Phi-3.5), as
//! shipped in their tokenizer_config.json, render under graft's minijinja renderer
//! exactly as transformers renders them. The templates and transformers' renderings
//! are test data in tests/fixtures/chat_templates (SOURCES.md says where each template
//! comes from; make_expected.py made expected.json).

use crate::common::family_fixture;
use graft::data::template::ChatTemplate;
use graft::data::tokenizer::Tokenizer;
use graft::data::{DataError, Message};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn expected_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(templates_dir().join("expected.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    expected["cases"].as_array().unwrap().clone()
}

/// A model folder whose tokenizer knows the case's special tokens and whose
/// tokenizer_config.json carries the real template, loaded as graft loads a model's.
fn model_template(case: &Value) -> (tempfile::TempDir, ChatTemplate) {
    let name = case["template"].as_str().unwrap();
    let source = std::fs::read_to_string(templates_dir().join(format!("{name}.jinja"))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_json = family_fixture("qwen3-tiny").join("tokenizer.json");
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_json).unwrap()).unwrap();
    let added = tokenizer["added_tokens"].as_array_mut().unwrap();
    let mut config = json!({ "chat_template": source, "bos_token": null });
    for (next_id, key) in (320..).zip(["bos_token", "eos_token"]) {
        if let Some(text) = case[key].as_str() {
            added.push(json!({"id": next_id, "content": text, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            config[key] = json!(text);
        }
    }
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let template = ChatTemplate::resolve("model", &tokenizer).unwrap();
    (dir, template)
}

fn messages(case: &Value) -> Vec<Message> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn label(case: &Value) -> String {
    format!(
        "{} / {} / add_generation_prompt={}",
        case["template"], case["conversation"], case["add_generation_prompt"]
    )
}

#[test]
fn real_templates_render_exactly_as_transformers_renders_them() {
    let cases = expected_cases();
    assert!(cases.len() >= 40, "expected.json has {} cases", cases.len());
    for case in &cases {
        let (_dir, template) = model_template(case);
        let rendered = template.render(
            &messages(case),
            case["add_generation_prompt"].as_bool().unwrap(),
        );
        match (&case["text"], rendered) {
            (Value::String(expected), Ok(actual)) => {
                assert_eq!(&actual, expected, "{}", label(case))
            }
            (Value::Null, Err(err)) => {
                let refusal = case["error"].as_str().unwrap();
                assert!(err.to_string().contains(refusal), "{}: {err}", label(case));
            }
            (_, other) => panic!("{}: expected {case}, got {other:?}", label(case)),
        }
    }
}

/// The loss mask of a conversation trains exactly the assistant turns: the
/// segments put together are transformers' rendering, and each trained segment
/// holds one assistant message and its end-of-turn marker (Phi-3.5 writes its
/// end-of-text token only after the last turn; the earlier turns end before it).
/// Qwen3 re-renders earlier assistant turns once a later one follows (an empty
/// reasoning block is written only into the last), so a conversation with two
/// assistant turns has no stable prefix and is refused, not mistrained.
#[test]
fn loss_masks_of_real_templates_follow_their_assistant_turns() {
    for case in expected_cases() {
        let Some(expected) = case["text"].as_str() else {
            continue;
        };
        if case["add_generation_prompt"].as_bool().unwrap() {
            continue;
        }
        let (_dir, template) = model_template(&case);
        let messages = messages(&case);
        let segments = match template.render_segments(&messages, "chat.jsonl", 1) {
            Ok(segments) => segments,
            Err(DataError::TemplateNotPrefixStable { .. })
                if case["template"] == "qwen3-0.6b" && case["conversation"] == "multi_turn" =>
            {
                continue
            }
            Err(err) => panic!("{}: {err}", label(&case)),
        };
        let joined: String = segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(joined, expected, "{}", label(&case));
        let trained: Vec<&str> = segments
            .iter()
            .filter(|s| s.loss)
            .map(|s| s.text.as_str())
            .collect();
        let answers: Vec<&Message> = messages.iter().filter(|m| m.is_assistant()).collect();
        assert_eq!(
            trained.len(),
            answers.len(),
            "{}: {trained:?}",
            label(&case)
        );
        for (segment, answer) in trained.iter().zip(&answers) {
            assert!(
                segment.contains(answer.content.trim()),
                "{}: trained {segment:?} lacks {:?}",
                label(&case),
                answer.content
            );
            assert!(
                !segment.contains("user"),
                "{}: trained {segment:?} runs into the next user turn",
                label(&case)
            );
        }
        // Each earlier turn ends with the same marker as the last one's, less
        // anything written only after the last turn.
        if let [first, .., last] = trained.as_slice() {
            let first_end = &first[first.find(answers[0].content.trim()).unwrap()
                + answers[0].content.trim().len()..];
            let last_answer = answers[answers.len() - 1].content.trim();
            let last_end = &last[last.find(last_answer).unwrap() + last_answer.len()..];
            assert!(
                !first_end.is_empty() && last_end.starts_with(first_end),
                "{}: turns end with {first_end:?} and {last_end:?}",
                label(&case)
            );
        }
    }
}

/// Newer snapshots keep the template in chat_template.jinja, not in
/// tokenizer_config.json: the model's template is found there too.
#[test]
fn a_template_in_chat_template_jinja_is_the_models_template() {
    let case = expected_cases()
        .into_iter()
        .find(|c| c["template"] == "qwen2.5-7b-instruct" && c["conversation"] == "system")
        .unwrap();
    let (dir, _) = model_template(&case);
    let config_path = dir.path().join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let source = config["chat_template"].as_str().unwrap().to_string();
    config.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&config_path, config.to_string()).unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), &source).unwrap();
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tokenizer.chat_template(), Some(source.as_str()));
    let template = ChatTemplate::resolve("auto", &tokenizer).unwrap();
    let rendered = template
        .render(
            &messages(&case),
            case["add_generation_prompt"].as_bool().unwrap(),
        )
        .unwrap();
    assert_eq!(rendered, case["text"].as_str().unwrap());
}
