//! `graft clone URL DIR`: a new store holding a remote's record, with the
//! remote as `origin`. Running it again after an interruption completes it.

use super::transfer_progress::TransferBar;
use super::{CliResult, Context};
use crate::store::remote;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The remote: `file:///path` or `s3://bucket/prefix`.
    pub url: String,
    /// The new store's folder (must not exist, or be empty).
    pub dir: PathBuf,
    /// Fetch checkpoint tensors now. Without it the clone holds the whole
    /// record (runs, lineage, metrics, datasets, models) and fetches a
    /// checkpoint's tensors from `origin` when it is first loaded (`fork`,
    /// `export`, `eval`, `generate`, `resume`, `reproduce`).
    #[arg(long)]
    pub with_objects: bool,
    /// Print the report as JSON (and draw no progress bar).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, _context: &Context) -> CliResult {
    let (_, report) = remote::clone(
        &args.url,
        &args.dir,
        args.with_objects,
        TransferBar::new(args.json),
    )?;
    super::pull::render(
        &report,
        args.json,
        &format!("cloned into {}, from", args.dir.display()),
    )
}
