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
    /// Also list the id of every object removed (or, with --dry-run, that
    /// would be).
    #[arg(long, short)]
    pub verbose: bool,
    /// Print the report as JSON (with every removed id).
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
    if args.verbose {
        for id in &report.removed {
            output::println_safe(&format!("{verb} {id}"));
        }
    }
    output::println_safe(&format!(
        "{verb} {} ({}); kept {} reachable, {} unreachable but younger than {}s; {} stray temp files",
        output::count(report.removed.len(), "object", "objects"),
        output::bytes(report.bytes_freed),
        output::count(report.reachable, "object", "objects"),
        report.kept_young,
        args.grace,
        report.temp_files_removed
    ));
    Ok(())
}
