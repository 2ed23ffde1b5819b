//! `graft diff REF REF`: changed recipe keys, datasets, and metrics side by side.

use super::{output, CliResult, Context};
use crate::lineage::{common_ancestor, diff_report, recipe_diff, tags_by_target, RunSummary};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The first run or checkpoint.
    #[arg(value_name = "REF")]
    pub left: String,
    /// The second run or checkpoint.
    #[arg(value_name = "REF")]
    pub right: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let left = index.run(&index.resolve_run(&args.left)?)?;
    let right = index.run(&index.resolve_run(&args.right)?)?;
    let tags = tags_by_target(&index)?;
    let common = common_ancestor(&index, &left.id, &right.id)?;
    let a = RunSummary::load(&index, left.clone(), &tags)?;
    let b = RunSummary::load(&index, right.clone(), &tags)?;
    drop(index);
    let report = diff_report(&a, &b, common);
    if args.json {
        return output::print_json(&report);
    }
    let changes = recipe_diff(&left.recipe, &right.recipe);
    let metrics = report["metrics"].as_array().cloned().unwrap_or_default();
    output::println_safe(&format!("--- {} {}", left.id.short(), a.tags.join(",")));
    output::println_safe(&format!("+++ {} {}", right.id.short(), b.tags.join(",")));
    if let Some(common) = common {
        output::println_safe(&format!("common ancestor: run {}", common.short()));
    }
    if changes.is_empty() {
        output::println_safe("recipes are identical");
    } else {
        let rows: Vec<Vec<String>> = changes
            .iter()
            .map(|c| {
                vec![
                    c.key.clone(),
                    c.left.clone().unwrap_or("-".into()),
                    c.right.clone().unwrap_or("-".into()),
                ]
            })
            .collect();
        output::println_safe(&output::table(&["key", "left", "right"], &rows));
    }
    if !metrics.is_empty() {
        output::println_safe("");
        let rows: Vec<Vec<String>> = metrics
            .iter()
            .map(|m| {
                let f =
                    |v: &serde_json::Value| v.as_f64().map(output::number).unwrap_or("-".into());
                vec![
                    m["series"].as_str().unwrap_or("").to_string(),
                    f(&m["left"]),
                    f(&m["right"]),
                    f(&m["delta"]),
                    f(&m["left_last"]),
                    f(&m["right_last"]),
                    f(&m["delta_last"]),
                ]
            })
            .collect();
        output::println_safe(&output::table(
            &[
                "series",
                "best left",
                "best right",
                "delta",
                "last left",
                "last right",
                "delta",
            ],
            &rows,
        ));
    }
    Ok(())
}
