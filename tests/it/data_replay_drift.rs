//! Replay mixing ratios, drift reports, the format-change check, synthetic tasks.

use graft::data::format::Format;
use graft::data::replay::replay_rows_in_batch;
use graft::data::{
    answer_examples, check_format_change, dataset_spec, exact_match, scan, synth, BatchStream,
    DataError, DataSource, DriftReport, Encoder, ReplaySource, RowStream, StreamConfig, Tokenizer,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tokenizer() -> Arc<Tokenizer> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny");
    Arc::new(Tokenizer::from_dir(&dir).expect("fixture tokenizer loads"))
}

fn encoder(format: Format) -> Arc<Encoder> {
    Arc::new(Encoder::new(tokenizer(), format, "chatml").unwrap())
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| serde_json::json!({ "text": format!("{prefix} {i}") }).to_string())
        .collect()
}

#[test]
fn replay_ratio_holds_within_one_row_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "new.jsonl", &texts("fresh", 700));
    let old_a = write(dir.path(), "a.jsonl", &texts("olda", 300));
    let old_b = write(dir.path(), "b.jsonl", &texts("oldb", 200));
    let encoder = encoder(Format::Text);
    let open = |path: &Path, seed: u64| {
        RowStream::open(
            DataSource::file(path),
            encoder.clone(),
            StreamConfig::train(16, false, seed),
        )
        .unwrap()
    };
    for (ratio, batch_size) in [(0.2, 8), (0.3, 5), (0.25, 16), (0.05, 6)] {
        let sources = vec![
            ReplaySource {
                rows: open(&old_a, 1),
                weight: 3.0,
            },
            ReplaySource {
                rows: open(&old_b, 2),
                weight: 1.0,
            },
        ];
        let mut stream = BatchStream::new(open(&main, 0), batch_size)
            .unwrap()
            .with_replay(sources, ratio)
            .unwrap();
        let (mut replayed, mut from_a, mut from_b) = (0usize, 0usize, 0usize);
        for batch_index in 1..=400usize {
            let batch = stream.next_batch().unwrap().unwrap();
            assert_eq!(batch.batch, batch_size);
            let exact = ratio * batch_size as f64;
            assert!(
                (batch.replay_rows as f64 - exact).abs() < 1.0,
                "batch {batch_index}: {} vs {exact}",
                batch.replay_rows
            );
            // The replay rows are the last ones, and they really are old data.
            for row in 0..batch.batch {
                let ids = &batch.input_ids[row * 16..(row + 1) * 16];
                let text = encoder.tokenizer().decode(ids, true).unwrap();
                let is_old = text.contains("old");
                assert_eq!(is_old, row >= batch.batch - batch.replay_rows, "{text:?}");
                from_a += usize::from(text.contains("olda"));
                from_b += usize::from(text.contains("oldb"));
            }
            replayed += batch.replay_rows;
            let long_run = ratio * (batch_index * batch_size) as f64;
            assert!(
                (replayed as f64 - long_run).abs() <= 0.5 + 1e-9,
                "after {batch_index}: {replayed} vs {long_run}"
            );
        }
        assert!(
            (from_a as f64 - 0.75 * replayed as f64).abs() <= 1.0,
            "{from_a} of {replayed}"
        );
        assert_eq!(from_a + from_b, replayed);
    }
}

#[test]
fn replay_schedule_is_floor_or_ceil_of_the_exact_share() {
    for batch_index in 0..1000 {
        let rows = replay_rows_in_batch(batch_index, 0.37, 10);
        assert!(rows == 3 || rows == 4);
    }
    assert_eq!(
        (0..10)
            .map(|k| replay_rows_in_batch(k, 0.5, 1))
            .sum::<usize>(),
        5
    );
}

#[test]
fn replay_with_ratio_and_no_sources_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "new.jsonl", &texts("fresh", 10));
    let rows = RowStream::open(
        DataSource::file(&main),
        encoder(Format::Text),
        StreamConfig::train(8, true, 0),
    )
    .unwrap();
    let err = BatchStream::new(rows, 4)
        .unwrap()
        .with_replay(Vec::new(), 0.2)
        .err()
        .unwrap();
    assert!(err.to_string().contains("data.replay"), "{err}");
}

#[test]
fn fork_with_a_different_format_fails_unless_allowed() {
    let chat = Encoder::new(tokenizer(), Format::Chat, "chatml").unwrap();
    let text = Encoder::new(tokenizer(), Format::Text, "chatml").unwrap();
    let plain = Encoder::new(tokenizer(), Format::Chat, "plain").unwrap();
    let parent = dataset_spec(&chat, 64, true);

    let err = check_format_change(&parent, &dataset_spec(&text, 64, true), false).unwrap_err();
    assert!(matches!(
        err,
        DataError::FormatChange { what: "format", .. }
    ));
    let message = err.to_string();
    assert!(
        message.contains("`chat` to `text`") && message.contains("data.allow_format_change = true"),
        "{message}"
    );

    let err = check_format_change(&parent, &dataset_spec(&plain, 64, true), false).unwrap_err();
    assert!(err.to_string().contains("`chatml` to `plain`"), "{err}");

    let allowed = check_format_change(&parent, &dataset_spec(&text, 64, true), true).unwrap();
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    // Same format, other seq_len: not a format change.
    assert!(
        check_format_change(&parent, &dataset_spec(&chat, 128, false), false)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn drift_report_is_zero_for_the_same_data_and_grows_with_change() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = encoder(Format::Text);
    let profile = |name: &str, lines: &[String]| {
        scan(
            &DataSource::file(write(dir.path(), name, lines)),
            &encoder,
            64,
        )
        .unwrap()
        .profile
    };
    let parent = profile("p.jsonl", &texts("the cat sat", 200));
    let same = DriftReport::compare(&parent, &profile("s.jsonl", &texts("the cat sat", 200)));
    assert_eq!(same.unigram_divergence, 0.0);
    assert_eq!(same.vocab_overlap, 1.0);
    assert_eq!(same.new_token_share, 0.0);

    let other_lines: Vec<String> = (0..100)
        .map(|i| {
            serde_json::json!({ "text": format!("QUANTUM XYLOPHONE {} {}", i, "W".repeat(i % 40)) })
                .to_string()
        })
        .collect();
    let drifted = DriftReport::compare(&parent, &profile("o.jsonl", &other_lines));
    assert!(drifted.unigram_divergence > 0.3, "{drifted:?}");
    assert!(drifted.new_token_share > 0.1);
    assert!(drifted.vocab_overlap < 1.0);
    assert!(drifted.length_divergence > 0.0);
    let rendered = drifted.render();
    assert!(
        rendered.contains("unigram divergence") && rendered.contains("mean length"),
        "{rendered}"
    );
    assert!(drifted.to_canon().get("unigram_divergence").is_some());
}

#[test]
fn synthetic_tasks_are_deterministic_and_exact() {
    let arithmetic = synth("arithmetic", 50, 7).unwrap();
    assert_eq!(arithmetic, synth("arithmetic", 50, 7).unwrap());
    assert_eq!(arithmetic[..10], synth("arithmetic", 10, 7).unwrap()[..]);
    assert_ne!(arithmetic, synth("arithmetic", 50, 8).unwrap());
    for line in &arithmetic {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let question = value["messages"][0]["content"].as_str().unwrap();
        let answer: u64 = value["messages"][1]["content"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let sum = question
            .trim_start_matches("What is ")
            .trim_end_matches('?');
        let (a, b) = sum.split_once('+').unwrap();
        assert_eq!(
            a.parse::<u64>().unwrap() + b.parse::<u64>().unwrap(),
            answer
        );
    }
    for line in synth("reverse", 50, 1).unwrap() {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let word = value["messages"][0]["content"]
            .as_str()
            .unwrap()
            .trim_start_matches("Reverse the string: ");
        let reversed: String = word.chars().rev().collect();
        assert_eq!(value["messages"][1]["content"].as_str().unwrap(), reversed);
    }
    assert!(matches!(
        synth("sorting", 1, 0),
        Err(DataError::UnknownTask { .. })
    ));
}

#[test]
fn answer_examples_split_prompt_and_answer_as_training_tokenizes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "arith.jsonl",
        &synth("arithmetic", 20, 3).unwrap(),
    );
    let encoder = encoder(Format::Chat);
    let examples = answer_examples(&DataSource::file(&path), &encoder).unwrap();
    assert_eq!(examples.len(), 20);
    let tokenizer = encoder.tokenizer();
    for example in &examples {
        let prompt = tokenizer.decode(&example.prompt_ids, false).unwrap();
        let answer = tokenizer.decode(&example.answer_ids, false).unwrap();
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
        assert_eq!(
            answer,
            format!("{}<|im_end|>\n<|eos|>", example.answer_text)
        );
        let mut generated = example.answer_ids.clone();
        generated.extend([5, 6]);
        assert!(exact_match(&generated, &example.answer_ids));
        assert!(!exact_match(&example.answer_ids[1..], &example.answer_ids));
    }
}

#[test]
fn an_encoder_rebuilt_from_a_dataset_spec_reads_the_same_way() {
    for (format, template) in [
        (Format::Chat, "plain"),
        (Format::Chat, "chatml"),
        (Format::Alpaca, "auto"),
    ] {
        let original = Encoder::new(tokenizer(), format, template).unwrap();
        let spec = dataset_spec(&original, 64, true);
        let rebuilt = Encoder::from_spec(tokenizer(), &spec).unwrap();
        assert_eq!(dataset_spec(&rebuilt, 64, true), spec);
    }
}
