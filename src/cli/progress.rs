//! Terminal progress for training: a bar over the base model's bytes while it
//! loads, then a bar with loss and learning rate, and a line per evaluation.

use super::interrupt::StopRequest;
use crate::store::Id;
use crate::train::eval::EvalResult;
use crate::train::Events;
use indicatif::{ProgressBar, ProgressStyle};

/// A bar over a base model's bytes while it loads, drawn from the first report and
/// cleared at the last (`done == total`).
#[derive(Default)]
pub struct LoadBar {
    bar: Option<ProgressBar>,
}

impl LoadBar {
    pub fn update(&mut self, done: u64, total: u64) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "loading the base [{bar:30}] {bytes}/{total_bytes} ({elapsed} < {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
            self.bar = None;
        }
    }
}

/// A model or checkpoint rebuilt from the store on the CPU, with a [`LoadBar`] while
/// its base loads.
pub fn restore_with_bar(
    store: &crate::store::Store,
    reference: &str,
) -> Result<
    crate::train::restore::Restored<crate::model::CpuBackend>,
    crate::train::restore::RestoreError,
> {
    let mut bar = LoadBar::default();
    crate::train::restore::restore_reporting(
        store,
        reference,
        &Default::default(),
        &mut |done, total| bar.update(done, total),
    )
}

pub struct TerminalEvents {
    bar: Option<ProgressBar>,
    load_bar: LoadBar,
    quiet: bool,
    stop: Option<StopRequest>,
    stop_announced: bool,
}

impl TerminalEvents {
    pub fn new(quiet: bool) -> Self {
        TerminalEvents {
            bar: None,
            load_bar: LoadBar::default(),
            quiet,
            stop: None,
            stop_announced: false,
        }
    }

    /// Stops the run when `request` is asked (Ctrl-C, SIGTERM).
    pub fn stopping_on(mut self, request: Option<StopRequest>) -> Self {
        self.stop = request;
        self
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(text),
            _ => eprintln!("{text}"),
        }
    }
}

impl Events for TerminalEvents {
    fn begin(&mut self, run: &Id, first_step: u64, total: u64) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_position(first_step.saturating_sub(1));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed} < {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("run {}", run.short()));
        self.bar = Some(bar);
    }

    fn step(&mut self, step: u64, loss: f64, lr: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        }
    }

    fn eval(&mut self, step: u64, results: &[(String, EvalResult)]) {
        let parts: Vec<String> = results
            .iter()
            .map(|(name, r)| match r.accuracy {
                Some(acc) => format!("{name} loss {:.4} acc {:.1}%", r.loss, acc * 100.0),
                None => format!("{name} loss {:.4}", r.loss),
            })
            .collect();
        self.line(&format!("eval @ step {step}: {}", parts.join(" | ")));
    }

    fn message(&mut self, text: &str) {
        self.line(text);
    }

    fn loading(&mut self, done: u64, total: u64) {
        if !self.quiet {
            self.load_bar.update(done, total);
        }
    }

    fn should_stop(&mut self) -> bool {
        let asked = self.stop.as_ref().is_some_and(StopRequest::asked);
        if asked && !self.stop_announced {
            self.stop_announced = true;
            // Said even with --quiet: it answers the user's own keypress.
            let text = "stopping: writing a checkpoint at the step just finished (press Ctrl-C again to stop at once, losing the steps since the last checkpoint)";
            match &self.bar {
                Some(bar) if !bar.is_hidden() => bar.println(text),
                _ => eprintln!("{text}"),
            }
        }
        asked
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
