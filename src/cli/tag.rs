//! `graft tag NAME REF`: name a run, checkpoint, dataset or model.

use super::{output::println_safe, CliResult, Context};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tag to create or move (no `@`, not a hex string).
    pub name: String,
    /// What it names: a run, checkpoint (RUN@STEP, RUN@best, ...), dataset or model.
    #[arg(value_name = "REF")]
    pub reference: Option<String>,
    /// Remove the tag instead.
    #[arg(long, conflicts_with = "reference")]
    pub delete: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    if args.delete {
        if !index.remove_ref(&args.name)? {
            return Err(super::CliError::user(format!("no tag `{}`", args.name)));
        }
        index.flush()?;
        println_safe(&format!("deleted tag {}", args.name));
        return Ok(());
    }
    let Some(reference) = args.reference else {
        return Err(super::CliError::user("give the REF to tag, or --delete"));
    };
    crate::store::refs::validate_tag_name(&args.name)?;
    let target = index.resolve(&reference)?;
    index.set_tag(&args.name, target)?;
    index.flush()?;
    println_safe(&format!(
        "{} -> {} {}",
        args.name,
        target.kind(),
        target.id().to_hex()
    ));
    Ok(())
}
