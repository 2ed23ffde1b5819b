//! `graft ui [--port N] [--open]`: the record in a browser.

use super::{CliError, CliResult, Context};
use crate::ui::{Server, UiError};
use std::net::IpAddr;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 7770)]
    pub port: u16,
    /// The address to listen on. Anything but a loopback address lets other
    /// machines read the record (the UI has no login): a warning says so. On
    /// a loopback or named address only requests naming it as their Host are
    /// answered; on 0.0.0.0 or :: any Host is.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Open the page in the default browser once the server is up.
    #[arg(long)]
    pub open: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    if !args.host.is_loopback() {
        eprintln!(
            "warning: listening on {}: any machine that can reach it can read this store's record",
            args.host
        );
    }
    if args.host.is_unspecified() {
        eprintln!(
            "warning: on every address the server answers whatever host name a request uses, so a web page that rebinds its own name to this machine can read the record too"
        );
    }
    eprintln!("reading the record of {} ...", store.root().display());
    let store_flag = (context.store_root != std::path::Path::new(crate::store::DEFAULT_STORE))
        .then(|| context.store_root.display().to_string());
    let server = Server::bind(&store, args.host, args.port, store_flag).map_err(|e| match e {
        UiError::Bind { .. } => CliError::user(e.to_string())
            .with_hint("another program may use that port: pick another with --port, or --port 0 for any free one"),
        UiError::Store(e) => CliError::from(e),
        other => CliError::internal(other.to_string()),
    })?;
    let url = format!("http://{}/", server.address());
    // Tests and scripts read the address from this line.
    println!(
        "graft ui: serving {} at {url} (Ctrl-C to stop)",
        store.root().display()
    );
    if args.open {
        open_browser(&url);
    }
    server.run().map_err(|e| CliError::internal(e.to_string()))
}

/// Hand the URL to the desktop's opener; the server runs on without it.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(error) = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!("could not open a browser ({opener}: {error}): open {url} yourself");
    }
}
