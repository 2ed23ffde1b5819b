//! Data benchmark: tokenize + pack throughput and peak memory on generated
//! chat JSONL of 10 MB and 100 MB. Run with `cargo bench --bench data`
//! (`GRAFT_BENCH_DATA_MB=10,100,300` picks the sizes).
//!
//! For each size it prints the scan (hash + parse + render + tokenize +
//! statistics, what registering a dataset costs) and one shuffled epoch of
//! training batches (parse + render + tokenize + pack), in MB/s of JSONL and
//! tokens/s, MB per CPU-second (which other load on the machine does not
//! change: on N idle cores, MB/s is about N times it), and the peak resident memory of each phase (VmHWM, reset
//! between phases through /proc/self/clear_refs). Memory does not depend on
//! the file size: a window of 2048 examples, 16 bytes of index per 128
//! examples, and a per-thread cache of encoded words capped at 16 MiB, which
//! fills over the first tens of MB and then stays at its cap.

use graft::data::format::Format;
use graft::data::{scan, BatchStream, DataSource, Encoder, RowStream, StreamConfig, Tokenizer};
use rand::RngCore;
use rand_chacha::rand_core::SeedableRng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const SEQ_LEN: usize = 512;
const BATCH_SIZE: usize = 8;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Start a fresh peak-memory measurement (Linux: "5" resets VmHWM).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Chat records with a Zipf-like word distribution over 20k made-up words,
/// written as they are generated so the generator holds no file in memory.
fn generate(path: &Path, megabytes: u64) {
    let syllables = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "en", "or", "th", "ing", "st", "pre",
        "con", "al", "de", "ri", "qu", "x", "z", "an", "ex", "ment", "ly",
    ];
    let words: Vec<String> = (0..20_000u32)
        .map(|i| {
            let mut word = String::new();
            let mut n = i;
            loop {
                word.push_str(syllables[(n % syllables.len() as u32) as usize]);
                n /= syllables.len() as u32;
                if n == 0 {
                    break;
                }
            }
            word
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::from_seed([7; 32]);
    let sentence = |rng: &mut rand_chacha::ChaCha8Rng, length: u64| {
        let mut text = String::new();
        for i in 0..length {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let word = &words[(u * u * u * words.len() as f64) as usize];
            if i > 0 {
                text.push(' ');
            }
            text.push_str(word);
        }
        text.push('.');
        text
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create bench file"));
    let mut written = 0u64;
    while written < megabytes << 20 {
        let user_len = 5 + rng.next_u64() % 40;
        let answer_len = 10 + rng.next_u64() % 120;
        let record = serde_json::json!({"messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": sentence(&mut rng, user_len)},
            {"role": "assistant", "content": sentence(&mut rng, answer_len)},
        ]});
        let line = record.to_string();
        out.write_all(line.as_bytes()).expect("write bench file");
        out.write_all(b"\n").expect("write bench file");
        written += line.len() as u64 + 1;
    }
    out.flush().expect("flush bench file");
}

/// CPU seconds (user + system) this process has used, all threads.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn breakdown(path: &Path, encoder: &Encoder) {
    use rayon::prelude::*;
    let text = std::fs::read_to_string(path).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let mb = text.len() as f64 / 1e6;
    let t = Instant::now();
    let examples: Vec<_> = lines
        .par_iter()
        .map(|l| Format::Chat.parse_line(l, "f", 1).unwrap())
        .collect();
    println!(
        "  parse json      {:>7.1} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let segments: Vec<_> = examples
        .par_iter()
        .map(|e| encoder.segments(e, "f", 1).unwrap())
        .collect();
    println!(
        "  render          {:>7.1} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let _: Vec<_> = segments
        .par_iter()
        .map(|s| encoder.encode_segments(s).unwrap())
        .collect();
    println!(
        "  encode (cold)   {:>7.1} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let _: Vec<_> = segments
        .par_iter()
        .map(|s| encoder.encode_segments(s).unwrap())
        .collect();
    println!(
        "  encode (warm)   {:>7.1} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let _: Vec<_> = segments
        .par_iter()
        .map(|s| {
            s.iter()
                .map(|s| encoder.tokenizer().encode_uncached(&s.text).unwrap().len())
                .sum::<usize>()
        })
        .collect();
    println!(
        "  encode uncached {:>7.1} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
}

fn main() {
    let sizes: Vec<u64> = std::env::var("GRAFT_BENCH_DATA_MB")
        .unwrap_or_else(|_| "10,100".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny");
    let tokenizer = Arc::new(Tokenizer::from_dir(&fixture).expect("fixture tokenizer"));
    let encoder = Arc::new(Encoder::new(tokenizer, Format::Chat, "chatml").expect("encoder"));
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "data bench: chat/chatml, byte-level BPE (320 tokens), seq_len {SEQ_LEN}, batch {BATCH_SIZE}, {} threads",
        rayon::current_num_threads()
    );
    for megabytes in sizes {
        let path = dir.path().join(format!("bench-{megabytes}mb.jsonl"));
        generate(&path, megabytes);
        let bytes = std::fs::metadata(&path).expect("bench file").len() as f64;
        let source = DataSource::file(&path);
        if std::env::var("GRAFT_BENCH_BREAKDOWN").is_ok() {
            breakdown(&path, &encoder);
        }

        reset_peak_rss();
        let (started, cpu_started) = (Instant::now(), cpu_seconds());
        let scanned = scan(&source, &encoder, SEQ_LEN).expect("scan");
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_started;
        println!(
            "{megabytes:>5} MB  scan  {:>6.1} MB/s  {:>5.1} MB/cpu-s  {:>6.2} M tokens/s  {} examples, {} tokens  peak RSS {:.0} MB",
            bytes / seconds / 1e6,
            bytes / cpu / 1e6,
            scanned.stats.tokens as f64 / seconds / 1e6,
            scanned.stats.examples,
            scanned.stats.tokens,
            peak_rss_mb()
        );

        reset_peak_rss();
        let (started, cpu_started) = (Instant::now(), cpu_seconds());
        let mut config = StreamConfig::train(SEQ_LEN, true, 1);
        config.repeat = false;
        let rows = RowStream::open(source.clone(), encoder.clone(), config).expect("open stream");
        let mut stream = BatchStream::new(rows, BATCH_SIZE).expect("batch stream");
        let (mut batches, mut tokens) = (0u64, 0u64);
        while let Some(batch) = stream.next_batch().expect("batch") {
            batches += 1;
            tokens += batch.input_ids.len() as u64;
            std::hint::black_box(&batch);
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_started;
        println!(
            "{megabytes:>5} MB  pack  {:>6.1} MB/s  {:>5.1} MB/cpu-s  {:>6.2} M tokens/s  {batches} batches  peak RSS {:.0} MB",
            bytes / seconds / 1e6,
            bytes / cpu / 1e6,
            tokens as f64 / seconds / 1e6,
            peak_rss_mb()
        );
        let _ = std::fs::remove_file(&path);
    }
}
