//! `graft push NAME [REF...]`: send the record (or the named runs with their
//! ancestry) to a remote: objects it lacks, then records, then tags.

use super::transfer_progress::TransferBar;
use super::{output, CliResult, Context};
use crate::store::remote::{self, PushOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The remote (`graft remote ls`).
    pub remote: String,
    /// Runs, checkpoints or tags to push, with their ancestry [default: everything].
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
    /// Move tags on the remote even when someone else moved them since this
    /// store last saw them.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON (and draw no progress bar).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let options = PushOptions {
        refs: args.refs,
        force: args.force,
    };
    let report = remote::push(&store, &args.remote, &options, TransferBar::new(args.json))?;
    if args.json {
        return output::print_json(&serde_json::to_value(&report).unwrap_or_default());
    }
    let records: usize = report.records_sent.values().sum();
    output::println_safe(&format!(
        "pushed to {} ({}): {} ({}), {} already there; {}",
        report.remote,
        report.url,
        output::count(report.objects_sent, "object", "objects"),
        output::bytes(report.bytes_sent),
        report.objects_already_there,
        if records == 0 {
            "the remote had every record".to_string()
        } else {
            format!("{} new", output::count(records, "record", "records"))
        }
    ));
    for tag in &report.tags {
        output::println_safe(&format!(
            "  tag {} -> {} ({})",
            tag.name, tag.target, tag.action
        ));
    }
    Ok(())
}
