//! `graft init`: create a store.

use super::{output::println_safe, CliResult, Context};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args, context: &Context) -> CliResult {
    let store = crate::store::Store::init(&context.store_root)?;
    println_safe(&format!(
        "initialised graft store at {}",
        store.root().display()
    ));
    Ok(())
}
