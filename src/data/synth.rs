//! Deterministic synthetic tasks with exact answers, and what exact-match
//! evaluation needs from them.
//!
//! Each example is drawn from its own random stream keyed by (seed, task,
//! example number), so `synth(task, 100, s)` starts with `synth(task, 10, s)`
//! and the same call always writes the same bytes (and so the same dataset
//! id).
//!
//! Exact match: for every example, [`answer_examples`] gives the prompt ids
//! (the conversation up to the last assistant turn, with the generation
//! prompt) and the answer ids (that turn's content, its end-of-turn marker
//! and eos, exactly as training tokenizes them). A model gets an example
//! right when greedy decoding from the prompt yields the answer ids; since
//! the answer ends with the stop marker, "95" does not match "950". Teacher
//! forcing gives the same verdict in one forward pass: the example is right
//! iff the argmax at every answer position is the answer token.

use super::encode::Encoder;
use super::error::{DataError, Result};
use super::format::{Example, Message};
use super::rng::rng_for;
use super::source::{DataSource, LineReader};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;

pub const TASKS: [&str; 6] = [
    "arithmetic",
    "reverse",
    "add",
    "reverse-short",
    "copy",
    "successor",
];

fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    ((rng.next_u64() as u128 * bound as u128) >> 64) as u64
}

/// One synthetic exchange: (question, answer).
pub fn synth_pair(task: &str, seed: u64, example: u64) -> Result<(String, String)> {
    let mut rng = rng_for(seed, &format!("synth/{task}"), &[example]);
    match task {
        "arithmetic" => {
            let (a, b) = (below(&mut rng, 100), below(&mut rng, 100));
            Ok((format!("What is {a}+{b}?"), (a + b).to_string()))
        }
        "reverse" => {
            let length = 3 + below(&mut rng, 6);
            let word: String = (0..length)
                .map(|_| (b'a' + below(&mut rng, 26) as u8) as char)
                .collect();
            let reversed: String = word.chars().rev().collect();
            Ok((format!("Reverse the string: {word}"), reversed))
        }
        // Short tasks a tiny model learns in a few hundred steps: the
        // quickstart pretrains on `copy` and `successor`, then fine-tunes on
        // `add` (task A) and `reverse-short` (task B).
        "add" => {
            let (a, b) = (below(&mut rng, 10), below(&mut rng, 10));
            Ok((format!("add {a} {b}"), (a + b).to_string()))
        }
        "reverse-short" | "copy" => {
            let length = if task == "copy" {
                3 + below(&mut rng, 4)
            } else {
                2 + below(&mut rng, 2)
            };
            let word: String = (0..length)
                .map(|_| (b'a' + below(&mut rng, 26) as u8) as char)
                .collect();
            if task == "copy" {
                Ok((format!("copy {word}"), word))
            } else {
                Ok((format!("reverse {word}"), word.chars().rev().collect()))
            }
        }
        "successor" => {
            let digit = below(&mut rng, 10);
            Ok((format!("next {digit}"), ((digit + 1) % 10).to_string()))
        }
        other => Err(DataError::UnknownTask {
            name: other.to_string(),
            known: TASKS.join(", "),
        }),
    }
}

/// `n` JSON lines (without newlines) in `chat` format.
pub fn synth(task: &str, n: u64, seed: u64) -> Result<Vec<String>> {
    (0..n)
        .map(|example| {
            let (question, answer) = synth_pair(task, seed, example)?;
            let messages = [
                Message::new("user", &question),
                Message::new("assistant", &answer),
            ];
            Ok(serde_json::json!({ "messages": messages }).to_string())
        })
        .collect()
}

/// An evaluation example split at its last answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerExample {
    /// 1-based line in the file.
    pub line: u64,
    /// What the model is given.
    pub prompt_ids: Vec<u32>,
    /// What it must produce, stop marker included.
    pub answer_ids: Vec<u32>,
    /// The expected answer as text (the content, without markers).
    pub answer_text: String,
}

/// Split every example of a (small) eval file into prompt and answer.
/// Formats without an answer (`text`) have none and give an empty list.
pub fn answer_examples(source: &DataSource, encoder: &Encoder) -> Result<Vec<AnswerExample>> {
    let file = source.name();
    let mut reader = LineReader::open(source)?;
    let mut out = Vec::new();
    while let Some(line) = reader.next_line()? {
        if line.is_blank() {
            continue;
        }
        let number = line.line;
        let text = super::source::line_text(line.bytes, &file, number)?;
        let example = encoder.format().parse_line(&text, &file, number)?;
        let answer_text = match &example {
            Example::Chat(messages) => messages
                .iter()
                .rev()
                .find(|m| m.is_assistant())
                .map(|m| m.content.clone()),
            Example::Segments(segments) if segments.len() >= 2 => {
                segments.last().map(|s| s.text.clone())
            }
            Example::Segments(_) => None,
        };
        let Some(answer_text) = answer_text else {
            continue;
        };
        let tokens = encoder.encode_example(&example, &file, number)?;
        let (prompt, answer) = tokens.split_last_answer();
        out.push(AnswerExample {
            line: number,
            prompt_ids: prompt.to_vec(),
            answer_ids: answer.to_vec(),
            answer_text,
        });
    }
    Ok(out)
}

/// Whether generated ids reproduce the answer (generation may continue past
/// it; the answer's own stop marker is what must match).
pub fn exact_match(generated_ids: &[u32], answer_ids: &[u32]) -> bool {
    generated_ids.len() >= answer_ids.len() && generated_ids[..answer_ids.len()] == *answer_ids
}

/// Fraction of `(generated, answer)` pairs that match exactly.
pub fn exact_match_accuracy<'a>(pairs: impl IntoIterator<Item = (&'a [u32], &'a [u32])>) -> f64 {
    let (mut right, mut total) = (0usize, 0usize);
    for (generated, answer) in pairs {
        right += usize::from(exact_match(generated, answer));
        total += 1;
    }
    if total == 0 {
        0.0
    } else {
        right as f64 / total as f64
    }
}
