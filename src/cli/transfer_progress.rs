//! A progress bar for object transfers (push, pull, clone), by bytes.

use crate::store::remote::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::{Arc, Mutex};

pub struct TransferBar {
    hidden: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl TransferBar {
    /// `hidden`: draw nothing (`--json`). indicatif draws nothing either when
    /// stderr is not a terminal. A transfer that begins with 0 bytes learns
    /// its total as each file's size arrives (`expect`).
    pub fn new(hidden: bool) -> Arc<TransferBar> {
        Arc::new(TransferBar {
            hidden,
            bar: Mutex::new(None),
        })
    }
}

impl Progress for TransferBar {
    fn begin(&self, what: &str, items: u64, bytes: u64) {
        if self.hidden {
            return;
        }
        let bar = ProgressBar::new(bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{what}: {items} files"));
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn expect(&self, bytes: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(bar) = slot.as_ref() {
                bar.inc_length(bytes);
            }
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(bar) = slot.as_ref() {
                bar.inc(bytes);
            }
        }
    }

    fn end(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        }
    }
}
