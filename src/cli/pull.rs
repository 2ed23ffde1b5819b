//! `graft pull NAME [REF...]`: bring a remote's record (or the named runs
//! with their ancestry and metrics) into this store, every object verified;
//! checkpoint tensors stay on the remote unless `--with-objects`.

use super::transfer_progress::TransferBar;
use super::{output, CliResult, Context};
use crate::store::remote::{self, PullOptions, PullReport};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The remote (`graft remote ls`).
    pub remote: String,
    /// Runs, checkpoints or tags on the remote to pull, with their ancestry
    /// [default: everything].
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
    /// Take the remote's target for tags that name something else here.
    #[arg(long)]
    pub force: bool,
    /// Fetch checkpoint tensors now. Without it only the record comes (runs,
    /// ancestry, metrics, datasets, models): a checkpoint's tensors are
    /// fetched from this remote when `fork`, `export`, `eval`, `generate`,
    /// `resume` or `reproduce` first loads it.
    #[arg(long)]
    pub with_objects: bool,
    /// Print the report as JSON (and draw no progress bar).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let options = PullOptions {
        refs: args.refs,
        force: args.force,
        with_objects: args.with_objects,
    };
    let report = remote::pull(&store, &args.remote, &options, TransferBar::new(args.json))?;
    render(&report, args.json, "pulled from")
}

/// Shared with `clone`.
pub fn render(report: &PullReport, json: bool, verb: &str) -> CliResult {
    if json {
        return output::print_json(&serde_json::to_value(report).unwrap_or_default());
    }
    let added = &report.records_added;
    output::println_safe(&format!(
        "{verb} {} ({}): {}, {}, {} metric points new; {} ({}), {} already here",
        report.remote,
        report.url,
        output::count(added.runs, "run", "runs"),
        output::count(added.checkpoints, "checkpoint", "checkpoints"),
        added.metric_points,
        output::count(report.objects_received, "object", "objects"),
        output::bytes(report.bytes_received),
        report.objects_already_here,
    ));
    if report.checkpoints_left_on_remote > 0 {
        output::println_safe(&format!(
            "  {} left on {} ({}); fetched when first used, or now with --with-objects",
            output::count(
                report.checkpoints_left_on_remote,
                "checkpoint's tensors",
                "checkpoints' tensors"
            ),
            report.remote,
            output::count(report.objects_left_on_remote, "object", "objects"),
        ));
    }
    for tag in &report.tags {
        output::println_safe(&format!(
            "  tag {} -> {} ({})",
            tag.name, tag.target, tag.action
        ));
    }
    Ok(())
}
