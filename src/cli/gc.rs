//! `graft gc`: remove objects that no run, checkpoint, dataset, model or ref
//! reaches.

use super::{output, CliResult, Context};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep unreachable objects younger than this many seconds: they may
    /// belong to a checkpoint another process is writing right now.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub grace: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let report = crate::store::gc::collect(
        &index,
        store.objects(),
        std::time::Duration::from_secs(args.grace),
        args.dry_run,
    )?;
    if args.json {
        return output::print_json(&serde_json::to_value(&report).unwrap_or_default());
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for id in &report.removed {
        output::println_safe(&format!("{verb} {id}"));
    }
    output::println_safe(&format!(
        "{} reachable objects kept; {verb} {} objects ({} bytes); {} unreachable kept as younger than {}s; {} stray temp files",
        report.reachable,
        report.removed.len(),
        report.bytes_freed,
        report.kept_young,
        args.grace,
        report.temp_files_removed
    ));
    Ok(())
}
