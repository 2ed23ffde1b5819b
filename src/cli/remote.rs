//! `graft remote add NAME URL`, `graft remote ls`, `graft remote remove NAME`:
//! the remotes this store pushes to and pulls from.

use super::{output, CliResult, Context};
use crate::store::remote;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Add a remote: `file:///path`, or `s3://bucket/prefix` (credentials and
    /// AWS_ENDPOINT_URL for S3-compatible servers from the usual AWS_*
    /// environment variables).
    Add {
        /// A name for it (letters, digits, `-`, `_`).
        name: String,
        /// Where it is.
        url: String,
    },
    /// List the remotes and the tags last seen on each.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a remote (the remote itself is left as it is).
    Remove {
        /// The remote's name.
        name: String,
    },
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    match args.command {
        Command::Add { name, url } => {
            let config = remote::add(store.root(), &name, &url)?;
            output::println_safe(&format!("remote {} -> {}", config.name, config.url));
        }
        Command::Ls { json } => {
            let remotes = remote::list(store.root())?;
            if json {
                return output::print_json(&serde_json::json!(remotes
                    .iter()
                    .map(|r| serde_json::json!({
                        "name": r.name, "url": r.url, "tags_seen": r.seen_tags.len(),
                    }))
                    .collect::<Vec<_>>()));
            }
            let rows: Vec<Vec<String>> = remotes
                .iter()
                .map(|r| vec![r.name.clone(), r.url.clone(), r.seen_tags.len().to_string()])
                .collect();
            output::println_safe(&output::table(&["remote", "url", "tags seen"], &rows));
            output::println_safe(&output::count(remotes.len(), "remote", "remotes"));
        }
        Command::Remove { name } => {
            let config = remote::remove(store.root(), &name)?;
            output::println_safe(&format!("removed remote {} ({})", config.name, config.url));
        }
    }
    Ok(())
}
