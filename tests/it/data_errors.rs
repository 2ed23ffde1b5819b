//! Bad input: each case is an error naming the file, the line and the field,
//! found by the scan that runs before anything is recorded.

use graft::data::format::Format;
use graft::data::{
    prepare_dataset, DataError, DataSource, Encoder, RowStream, Split, StreamConfig, Tokenizer,
};
use std::path::PathBuf;
use std::sync::Arc;

fn encoder(format: Format) -> Encoder {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny");
    let tokenizer = Arc::new(Tokenizer::from_dir(&dir).expect("fixture tokenizer loads"));
    Encoder::new(tokenizer, format, "chatml").unwrap()
}

/// Write `bytes` to a file and prepare it as a dataset of `format`.
fn prepare(format: Format, bytes: &[u8]) -> (String, DataError) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    std::fs::write(&path, bytes).unwrap();
    let err = prepare_dataset(
        &DataSource::file(&path),
        &encoder(format),
        64,
        true,
        chrono::Utc::now(),
    )
    .expect_err("bad input must fail");
    (path.display().to_string(), err)
}

const GOOD_CHAT: &str =
    r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;

#[test]
fn malformed_json_names_file_and_line() {
    let (path, err) = prepare(
        Format::Chat,
        format!("{GOOD_CHAT}\n{{\"messages\": [\n{GOOD_CHAT}\n").as_bytes(),
    );
    match &err {
        DataError::MalformedJson { file, line, .. } => {
            assert_eq!((file.as_str(), *line), (path.as_str(), 2))
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("{path}:2: malformed JSON")),
        "{err}"
    );
}

#[test]
fn missing_field_names_the_field() {
    let (path, err) = prepare(
        Format::PromptCompletion,
        b"{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"prompt\": \"a\"}\n",
    );
    match &err {
        DataError::MissingField {
            file,
            line,
            field,
            format,
        } => {
            assert_eq!(
                (file.as_str(), *line, field.as_str(), *format),
                (path.as_str(), 3, "completion", "prompt_completion")
            )
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("missing field `completion`"));
}

#[test]
fn missing_nested_chat_field_names_its_path() {
    let (_, err) = prepare(
        Format::Chat,
        br#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}"#,
    );
    assert!(
        matches!(err, DataError::MissingField { line: 1, ref field, .. } if field == "messages[1].content"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_field_expected_and_found() {
    let (path, err) = prepare(Format::Text, b"{\"text\": \"fine\"}\n{\"text\": 42}\n");
    match &err {
        DataError::WrongType {
            file,
            line,
            field,
            expected,
            found,
        } => {
            assert_eq!(file, &path);
            assert_eq!(
                (*line, field.as_str(), *expected, *found),
                (2, "text", "a string", "a number")
            );
        }
        other => panic!("unexpected {other}"),
    }
    let (_, err) = prepare(Format::Chat, br#"{"messages": {"role": "user"}}"#);
    assert!(
        matches!(err, DataError::WrongType { ref field, expected: "an array", found: "an object", .. } if field == "messages"),
        "{err}"
    );
    let (_, err) = prepare(Format::Text, b"[\"text\"]");
    assert!(
        matches!(
            err,
            DataError::WrongType {
                expected: "a JSON object",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn non_utf8_bytes_name_line_and_byte() {
    let mut bytes = b"{\"text\": \"ok\"}\n{\"text\": \"caf".to_vec();
    bytes.extend([0xE9, b'"', b'}', b'\n']);
    let (path, err) = prepare(Format::Text, &bytes);
    match &err {
        DataError::NonUtf8 { file, line, byte } => {
            assert_eq!((file.as_str(), *line, *byte), (path.as_str(), 2, 14))
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn file_empty_after_filtering_is_an_error() {
    let (path, err) = prepare(Format::Text, b"\n   \n\r\n");
    assert!(
        matches!(err, DataError::Empty { ref file, .. } if *file == path),
        "{err}"
    );
    let (_, err) = prepare(Format::Text, b"");
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
}

#[test]
fn split_that_leaves_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.jsonl");
    std::fs::write(&path, "{\"text\": \"only\"}\n").unwrap();
    let mut config = StreamConfig::eval(16, true);
    // With one example and a tiny fraction, the validation split is empty.
    config.split = Split::Validation {
        val_fraction: 1e-9,
        seed: 0,
    };
    let err = RowStream::open(
        DataSource::file(&path),
        Arc::new(encoder(Format::Text)),
        config,
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, DataError::Empty { ref reason, .. } if reason.contains("validation")),
        "{err}"
    );
}

#[test]
fn chat_without_an_assistant_turn_has_nothing_to_train() {
    let (_, err) = prepare(
        Format::Chat,
        br#"{"messages": [{"role": "user", "content": "hi"}]}"#,
    );
    assert!(
        matches!(err, DataError::InvalidValue { line: 1, ref field, .. } if field == "messages"),
        "{err}"
    );
}

#[test]
fn the_first_bad_line_in_file_order_is_reported() {
    // Bad lines in different tokenization batches: the earliest wins, always.
    let mut text = String::new();
    for i in 0..10_000 {
        if i == 6000 || i == 9000 {
            text.push_str("{\"nope\": 1}\n");
        } else {
            text.push_str("{\"text\": \"x\"}\n");
        }
    }
    let (_, err) = prepare(Format::Text, text.as_bytes());
    assert!(
        matches!(err, DataError::MissingField { line: 6001, .. }),
        "{err}"
    );
}

#[test]
fn unknown_format_name_is_an_error() {
    let err = "jsonl".parse::<Format>().unwrap_err();
    assert!(err
        .to_string()
        .contains("text, prompt_completion, alpaca, chat"));
    assert_eq!("alpaca".parse::<Format>().unwrap(), Format::Alpaca);
}
