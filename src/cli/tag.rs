//! `graft tag NAME REF`: name a run, checkpoint, dataset or model;
//! `graft tag --list`: every tag; `graft tag NAME --delete`: remove one.

use super::{output, CliError, CliResult, Context};
use crate::store::refs::TagChange;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tag to create (no `@`, not a hex string).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// What it names: a run, checkpoint (RUN@STEP, RUN@best, ...), dataset or model.
    #[arg(value_name = "REF")]
    pub reference: Option<String>,
    /// Move the tag when it already names something else.
    #[arg(long, conflicts_with_all = ["delete", "list"])]
    pub force: bool,
    /// Remove the tag instead.
    #[arg(long, conflicts_with_all = ["reference", "list"])]
    pub delete: bool,
    /// List every tag and what it names.
    #[arg(long, conflicts_with_all = ["name", "reference"])]
    pub list: bool,
    /// With --list: print JSON.
    #[arg(long, requires = "list")]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    if args.list {
        let tags = index.tags()?;
        if args.json {
            return output::print_json(&serde_json::Value::Array(
                tags.iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.name, "kind": t.kind, "target": t.target.to_hex(),
                            "created_at": t.created_at.to_rfc3339(),
                        })
                    })
                    .collect(),
            ));
        }
        let rows: Vec<Vec<String>> = tags
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.kind.clone(),
                    t.target.short(),
                    t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                ]
            })
            .collect();
        output::println_safe(&output::table(&["tag", "kind", "id", "set"], &rows));
        output::println_safe(&output::count(tags.len(), "tag", "tags"));
        return Ok(());
    }
    let name = args.name.unwrap_or_default();
    if args.delete {
        if !index.remove_ref(&name)? {
            return Err(CliError::user(format!("no tag `{name}`"))
                .with_hint("`graft tag --list` shows the tags"));
        }
        index.flush()?;
        output::println_safe(&format!("deleted tag {name}"));
        return Ok(());
    }
    let Some(reference) = args.reference else {
        return Err(CliError::user(format!(
            "give the REF for tag `{name}` to name, --delete, or --list"
        )));
    };
    crate::store::refs::validate_tag_name(&name)?;
    let target = index.resolve(&reference)?;
    let describe = |kind: &str, id: &crate::store::Id| format!("{kind} {}", id.to_hex());
    let note = match index.place_tag(&name, target, args.force)? {
        TagChange::Refused { current } => {
            return Err(CliError::user(format!(
                "tag `{name}` already names {}",
                describe(&current.kind, &current.target)
            ))
            .with_hint(format!(
                "pass --force to move it to {} {}, or choose another name",
                target.kind(),
                target.id().short()
            )))
        }
        TagChange::Moved { from } => {
            format!(" (moved from {})", describe(&from.kind, &from.target))
        }
        TagChange::Created | TagChange::Unchanged => String::new(),
    };
    index.flush()?;
    output::println_safe(&format!(
        "{name} -> {}{note}",
        describe(target.kind(), &target.id())
    ));
    Ok(())
}
