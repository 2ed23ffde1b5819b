//! Command line: parse arguments, call the library, render output. One file
//! per command; no training math and no storage logic here.

pub mod backend;
pub mod error;
pub mod output;

mod bench;
mod clone;
mod data;
mod diff;
mod eval;
mod export;
mod fork;
mod gc;
mod generate;
mod init;
mod interrupt;
mod lineage;
mod log;
mod metrics;
mod model;
mod plot;
mod progress;
mod pull;
mod push;
mod quickstart;
mod remote;
mod reproduce;
mod resume;
mod runs;
mod show;
mod tag;
mod train;
mod transfer_progress;
mod ui;
mod verify;

use crate::store::Store;
use clap::{Parser, Subcommand};
pub use error::{CliError, CliResult, ErrorKind};
use std::path::PathBuf;
use transfer_progress::TransferBar;

/// graft: continued fine-tuning of language models, with every run recorded
/// by the hash of its recipe so it can be forked, traced and reproduced.
#[derive(Parser, Debug)]
#[command(name = "graft", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The store to use [default: ./store].
    #[arg(long, global = true, env = crate::store::STORE_ENV, value_name = "DIR")]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole story on a tiny model: pretrain, fine-tune task A, fork to
    /// task B with and without replay, then show lineage and accuracy.
    Quickstart(quickstart::Args),
    /// Create a store (default ./store).
    Init(init::Args),
    /// Run a recipe from an experiment file (new, or from a checkpoint via `from`).
    ///
    /// Every key of an experiment file, its default and meaning, is listed in
    /// experiments/REFERENCE.md; `[compute]` says how the numbers are computed (dtype,
    /// attention, fused kernels) and is recorded with the run. Ctrl-C finishes the step,
    /// writes a checkpoint and leaves the run resumable (`graft resume RUN`).
    Train(train::Args),
    /// Continue fine-tuning from a checkpoint with a changed recipe.
    ///
    /// The new run starts from the parent run's recorded settings, data
    /// settings included (template, seq_len, replay, eval_ancestors, seed,
    /// batch size, warmup, ...): the experiment file is a patch over them.
    /// Keys the file names replace the parent's (its [model] is replaced by
    /// REF); keys it leaves out keep the parent's values, not the defaults;
    /// --set applies last. Without [data] train, the run keeps training on the
    /// parent's data and eval sets.
    Fork(fork::Args),
    /// Continue an interrupted execution from its last checkpoint, exactly.
    Resume(resume::Args),
    /// Execute a run's recipe again and compare checkpoint ids and metrics.
    Reproduce(reproduce::Args),
    /// Evaluate a model or checkpoint on a data file.
    Eval(eval::Args),
    /// Sample text from a model or checkpoint.
    Generate(generate::Args),
    /// Write a checkpoint as a PEFT adapter, a merged Hugging Face folder, or a GGUF file.
    Export(export::Args),
    /// Runs, newest first; `--graph` draws forks as a tree.
    Log(log::Args),
    /// One run, checkpoint, dataset or model in full.
    Show(show::Args),
    /// Ancestry of a run or checkpoint down to the base model.
    Lineage(lineage::Args),
    /// Compare two runs: changed recipe keys, datasets, metrics.
    Diff(diff::Args),
    /// Query runs by config values and metric summaries.
    Runs(runs::Args),
    /// Per-step metrics of a run: a table, CSV, JSON, a terminal chart or a plot file.
    Metrics(metrics::Args),
    /// Name a run, checkpoint, dataset or model.
    Tag(tag::Args),
    /// Synthetic data, and a look at a data file as training reads it.
    Data(data::Args),
    /// Register, list and check base models.
    Model(model::Args),
    /// Throughput benchmarks (`bench train`: the HF + PEFT reference workload).
    Bench(bench::Args),
    /// Remove objects that nothing in the store reaches.
    Gc(gc::Args),
    /// Re-hash every object and check every reference between records.
    Verify(verify::Args),
    /// The remotes this store shares its record through: add, ls, remove.
    Remote(remote::Args),
    /// Send the record (objects the remote lacks, then records, then tags).
    Push(push::Args),
    /// Bring a remote's record into this store, every object verified.
    Pull(pull::Args),
    /// A new store holding a remote's record, with the remote as `origin`.
    Clone(clone::Args),
    /// The record in a browser: lineage graph, runs table with --where,
    /// overlaid curves, run pages, live while runs train.
    ///
    /// A local web server inside this binary, read-only over the store. It
    /// listens on 127.0.0.1 (port 7770 unless --port) and serves the page and
    /// the same JSON the read commands' --json prints under /api/ (e.g.
    /// /api/runs?where=best.eval_loss<2). It reads the index in short visits
    /// and follows training runs through their journals, so trainers are
    /// never kept waiting for the index.
    Ui(ui::Args),
}

/// What every command gets: where the store is.
pub struct Context {
    pub store_root: PathBuf,
}

impl Context {
    /// Open the existing store; an error tells how to create one.
    pub fn store(&self) -> CliResult<Store> {
        Ok(Store::open(&self.store_root)?.with_fetch_progress(TransferBar::new(false)))
    }

    /// Open the store, creating it if needed (for commands that write runs).
    pub fn store_or_init(&self) -> CliResult<Store> {
        Ok(Store::open_or_init(&self.store_root)?.with_fetch_progress(TransferBar::new(false)))
    }
}

pub fn run(cli: Cli) -> CliResult {
    let context = Context {
        store_root: crate::store::default_root(cli.store.as_deref()),
    };
    dispatch(cli.command, &context)
}

/// Run one command against a context (the quickstart chains several).
pub fn dispatch(command: Command, context: &Context) -> CliResult {
    match command {
        Command::Quickstart(args) => quickstart::run(args, context),
        Command::Init(args) => init::run(args, context),
        Command::Train(args) => train::run(args, context),
        Command::Fork(args) => fork::run(args, context),
        Command::Resume(args) => resume::run(args, context),
        Command::Reproduce(args) => reproduce::run(args, context),
        Command::Eval(args) => eval::run(args, context),
        Command::Generate(args) => generate::run(args, context),
        Command::Export(args) => export::run(args, context),
        Command::Log(args) => log::run(args, context),
        Command::Show(args) => show::run(args, context),
        Command::Lineage(args) => lineage::run(args, context),
        Command::Diff(args) => diff::run(args, context),
        Command::Runs(args) => runs::run(args, context),
        Command::Metrics(args) => metrics::run(args, context),
        Command::Tag(args) => tag::run(args, context),
        Command::Model(args) => model::run(args, context),
        Command::Data(args) => data::run(args, context),
        Command::Bench(args) => bench::run(args, context),
        Command::Gc(args) => gc::run(args, context),
        Command::Verify(args) => verify::run(args, context),
        Command::Remote(args) => remote::run(args, context),
        Command::Push(args) => push::run(args, context),
        Command::Pull(args) => pull::run(args, context),
        Command::Clone(args) => clone::run(args, context),
        Command::Ui(args) => ui::run(args, context),
    }
}

/// Entry point for the binary: parse, run, map errors to exit codes.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("{error}");
            error.exit_code()
        }
    }
}
