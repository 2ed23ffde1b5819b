//! `graft quickstart`: the whole continued fine-tuning story on a tiny model,
//! through the same commands a user runs by hand (the experiment files are
//! in `experiments/`):
//!
//! 1. write the synthetic data, and a random tiny Llama (`models/tiny-init`);
//! 2. pretrain it from scratch and export it as `models/tiny-base`;
//! 3. LoRA fine-tune on task A (addition);
//! 4. fork from A's best checkpoint to task B (reversal) twice: without
//!    replay, and with replay of A's data plus progressive unfreezing;
//! 5. print the fork tree, task A and B accuracy before and after each fork,
//!    and write a loss plot.
//!
//! Content addressing makes it idempotent: a second run finds every recipe
//! already trained and only prints the results.

use super::train::{train_experiment, RunOptions};
use super::{output, plot, CliError, CliResult, Context};
use crate::data::{synth, DataSource, Encoder, Format, Tokenizer};
use crate::lineage::{tags_by_target, Forgetting, RunSummary};
use crate::model::CpuBackend;
use crate::train::eval::{evaluate, EvalSet};
use crate::train::restore::restore;
use crate::train::Experiment;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the loss plot.
    #[arg(long, default_value = "quickstart-loss.svg")]
    pub plot: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub backend: super::backend::BackendKind,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

const EXPERIMENTS: &str = "experiments";
const INIT: &str = "models/tiny-init";
const BASE: &str = "models/tiny-base";

/// (file, task, examples, seed); the pretraining file interleaves two tasks.
const DATA: &[(&str, &str, u64, u64)] = &[
    ("add.jsonl", "add", 1000, 1),
    ("add-val.jsonl", "add", 64, 2),
    ("reverse.jsonl", "reverse-short", 1000, 3),
    ("reverse-val.jsonl", "reverse-short", 64, 4),
];

pub fn run(args: Args, context: &Context) -> CliResult {
    let started = Instant::now();
    let experiments = Path::new(EXPERIMENTS);
    if !experiments.join("task-a.toml").is_file() {
        return Err(CliError::user("experiments/task-a.toml not found: run the quickstart from the root of the graft repository"));
    }
    say("1/5 writing synthetic data and a random tiny Llama");
    write_data(&experiments.join("data"))?;
    if !Path::new(INIT).join("model.safetensors").is_file() {
        super::dispatch(
            parse(&[
                "graft",
                "model",
                "init",
                INIT,
                "--tokenizer",
                "experiments/tokenizer",
                "--seed",
                "0",
            ])?,
            context,
        )?;
    }

    let options = |tag: &str| RunOptions {
        backend: Some(args.backend),
        tag: Some(tag.to_string()),
        quiet: false,
        json: false,
    };
    say("2/5 pretraining the base model from scratch");
    let pretrain = train_experiment(
        &load("pretrain.toml", None)?,
        &options("pretrain"),
        context,
        true,
    )?;
    if !Path::new(BASE).join("model.safetensors").is_file() {
        super::dispatch(
            parse(&["graft", "export", &pretrain.to_hex(), "--merged", BASE])?,
            context,
        )?;
    }

    say("3/5 task A: LoRA fine-tuning on addition");
    train_experiment(
        &load("task-a.toml", None)?,
        &options("task-a"),
        context,
        true,
    )?;
    say("4/5 task B: forking from task-a@best, without and with replay");
    train_experiment(
        &load("task-b.toml", Some(("task-a@best", context)))?,
        &options("task-b"),
        context,
        true,
    )?;
    train_experiment(
        &load("task-b-replay.toml", Some(("task-a@best", context)))?,
        &options("task-b-replay"),
        context,
        true,
    )?;

    say("5/5 results");
    super::dispatch(parse(&["graft", "log", "--graph"])?, context)?;
    let table = accuracy_table(context)?;
    let budgets = budget_table(context)?;
    write_plot(context, &args.plot)?;
    if args.json {
        let budgets: Vec<_> = budgets
            .iter()
            .map(|(tag, forgetting)| serde_json::json!({ "run": tag, "forgetting": forgetting.to_json() }))
            .collect();
        return output::print_json(&serde_json::json!({
            "accuracy": table,
            "forgetting_budget": budgets,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    let rows: Vec<Vec<String>> = table
        .iter()
        .map(|(name, scores)| {
            vec![
                name.clone(),
                percent(scores.get("add")),
                percent(scores.get("reverse")),
            ]
        })
        .collect();
    output::println_safe("");
    output::println_safe(&output::table(
        &[
            "checkpoint",
            "task A (add) accuracy",
            "task B (reverse) accuracy",
        ],
        &rows,
    ));
    output::println_safe("");
    output::println_safe(&output::table(
        &[
            "fork",
            "forgetting budget",
            "@best with the budget",
            "task A loss rise there",
            "@best by task B loss alone",
            "task A loss rise there",
        ],
        &budget_rows(&budgets),
    ));
    output::println_safe(&format!(
        "\nloss plot: {}\nquickstart took {:.0} s; try `graft lineage task-b-replay`, `graft diff task-b task-b-replay`, `graft runs --where 'forget.add < 0.05'`",
        args.plot.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn say(text: &str) {
    eprintln!("\n== {text}");
}

fn parse(argv: &[&str]) -> CliResult<super::Command> {
    <super::Cli as clap::Parser>::try_parse_from(argv)
        .map(|cli| cli.command)
        .map_err(|e| CliError::internal(e.to_string()))
}

fn load(file: &str, fork_from: Option<(&str, &Context)>) -> CliResult<Experiment> {
    let path = Path::new(EXPERIMENTS).join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
    match fork_from {
        // As `graft fork REF FILE`: the file patches the parent's recipe.
        Some((reference, context)) => Ok(crate::train::fork::fork_experiment(
            &context.store()?,
            reference,
            Some((&text, &path)),
            &[],
        )?),
        None => Ok(Experiment::parse(&text, &path, &[])?),
    }
}

/// Deterministic: the same bytes every time, so the same dataset ids.
fn write_data(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir).map_err(|e| CliError::user(format!("{}: {e}", dir.display())))?;
    let write = |name: &str, lines: Vec<String>| -> CliResult {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n")
            .map_err(|e| CliError::user(format!("{}: {e}", path.display())))
    };
    let copy = synth("copy", 1500, 10)?;
    let successor = synth("successor", 1500, 11)?;
    write(
        "pretrain.jsonl",
        copy.into_iter()
            .zip(successor)
            .flat_map(|(a, b)| [a, b])
            .collect(),
    )?;
    for (name, task, n, seed) in DATA {
        write(name, synth(task, *n, *seed)?)?;
    }
    Ok(())
}

fn percent(value: Option<&f64>) -> String {
    value
        .map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// Task A and task B exact-match accuracy at each step of the story.
fn accuracy_table(context: &Context) -> CliResult<Vec<(String, BTreeMap<String, f64>)>> {
    let store = context.store()?;
    let mut table = Vec::new();
    for reference in ["pretrain", "task-a@best", "task-b", "task-b-replay"] {
        let restored = restore::<CpuBackend>(&store, reference, &Default::default())?;
        let tokenizer = Arc::new(Tokenizer::from_dir(&restored.folder)?);
        let mut scores = BTreeMap::new();
        for (name, file) in [("add", "add-val.jsonl"), ("reverse", "reverse-val.jsonl")] {
            let encoder = Encoder::new(tokenizer.clone(), Format::Chat, "plain")?;
            let path = Path::new(EXPERIMENTS).join("data").join(file);
            let set =
                EvalSet::from_source(name.into(), DataSource::file(&path), encoder, 32, 64, 32)?;
            scores.insert(
                name.to_string(),
                evaluate(&restored.model, &set).accuracy.unwrap_or(0.0),
            );
        }
        let label = match reference {
            "pretrain" => "base (pretrained)",
            "task-a@best" => "task-a@best (before the forks)",
            "task-b" => "task-b (fork, no replay)",
            _ => "task-b-replay (fork, replay + unfreezing)",
        };
        table.push((label.to_string(), scores));
    }
    Ok(table)
}

/// Each fork's forgetting of task A, where `@best` picks with its budget
/// and where it would pick by task B's loss alone.
fn budget_table(context: &Context) -> CliResult<Vec<(String, Forgetting)>> {
    let store = context.store()?;
    let index = store.index()?;
    let tags = tags_by_target(&index)?;
    let mut rows = Vec::new();
    for tag in ["task-b", "task-b-replay"] {
        let run = index.run(&index.resolve_run(tag)?)?;
        let summary = RunSummary::load(&index, run, &tags)?;
        let forgetting = summary
            .forgetting
            .ok_or_else(|| CliError::internal(format!("{tag} recorded no forgetting of task A")))?;
        rows.push((tag.to_string(), forgetting));
    }
    Ok(rows)
}

fn budget_rows(budgets: &[(String, Forgetting)]) -> Vec<Vec<String>> {
    let step = |s: Option<u64>| s.map_or("-".into(), |s| format!("{s}"));
    let rise = |value: Option<f64>| value.map_or("-".into(), |v| format!("{:+.1}%", v * 100.0));
    budgets
        .iter()
        .map(|(tag, f)| {
            let add = f.sets.iter().find(|s| s.short_name() == "add");
            vec![
                tag.clone(),
                f.budget
                    .map_or("none".into(), |b| format!("{:.0}%", b * 100.0)),
                format!("{tag}@{}", step(f.best_step)),
                rise(add.map(|s| s.forgetting)),
                format!("{tag}@{}", step(f.best_step_ignoring_budget)),
                rise(add.map(|s| s.forgetting_ignoring_budget)),
            ]
        })
        .collect()
}

/// Training loss of every quickstart run on one plot.
fn write_plot(context: &Context, path: &Path) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let mut series = BTreeMap::new();
    for tag in ["pretrain", "task-a", "task-b", "task-b-replay"] {
        let run = index.resolve_run(tag)?;
        series.insert(format!("{tag} loss"), index.series(&run, "loss")?);
    }
    plot::write(path, "quickstart: training loss per run", &series)
}
