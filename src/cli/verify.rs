//! `graft verify`: re-hash every object and check every reference between
//! records. Exits 1 when anything is wrong; checkpoint tensors that a
//! metadata-only pull left on a remote are listed with where they are, and
//! are not a problem.

use super::{output, CliError, CliResult, Context};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let left_on_remote = crate::store::remote::lazy::holders(store.root())?
        .into_iter()
        .map(|(checkpoint, remotes)| {
            let places: Vec<String> = remotes
                .iter()
                .map(|r| format!("remote `{}` ({})", r.name, r.url))
                .collect();
            (checkpoint, places.join(" or "))
        })
        .collect();
    let index = store.index()?;
    let mut report = crate::store::verify::verify(&index, store.objects(), &left_on_remote)?;
    for model in index.models()? {
        report
            .changed_model_files
            .extend(crate::train::registry::check_model_folder(&model));
    }
    if args.json {
        output::print_json(&serde_json::to_value(&report).unwrap_or_default())?;
    } else {
        for line in report
            .corrupt_objects
            .iter()
            .chain(&report.dangling)
            .chain(&report.unreadable)
            .chain(&report.changed_model_files)
        {
            output::println_safe(line);
        }
        for line in &report.on_remote {
            output::println_safe(&format!("not here: {line}"));
        }
        output::println_safe(&format!(
            "checked {} objects and {} records: {}{}",
            report.objects_checked,
            report.records_checked,
            if report.is_clean() {
                "ok"
            } else {
                "PROBLEMS FOUND"
            },
            if report.on_remote.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} on remotes, not here",
                    output::count(report.objects_on_remote, "object", "objects")
                )
            }
        ));
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(CliError::check(format!(
            "{} corrupt objects, {} dangling references, {} unreadable records, {} changed model files",
            report.corrupt_objects.len(),
            report.dangling.len(),
            report.unreadable.len(),
            report.changed_model_files.len()
        ))
        .with_hint(if report.changed_model_files.is_empty() {
            "a corrupt object can be restored by re-running the step that wrote it (`graft reproduce RUN`)"
        } else {
            "restore the model folder's files (runs on it cannot load until then), or `graft model add DIR` to register the new content as another model"
        }))
    }
}
