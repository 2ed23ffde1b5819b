//! Ctrl-C and SIGTERM while `train`, `fork` or `resume` run: the first one asks
//! the trainer to stop after the step in progress (it checkpoints and ends the
//! execution as interrupted); a second one exits at once. The library installs
//! no handler: this is the only place graft touches signals.

use super::{CliError, CliResult};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// What the handlers set: whether a stop was asked for, and by which signal.
#[derive(Clone)]
pub struct StopRequest {
    asked: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    pub fn asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// The exit status of a process stopped by the signal: 128 + its number.
    pub fn exit_code(&self) -> i32 {
        match self.signal.load(Ordering::SeqCst) {
            0 => 128 + SIGINT,
            signal => 128 + signal as i32,
        }
    }
}

static INSTALLED: OnceLock<StopRequest> = OnceLock::new();

/// Installs the handlers (once per process; commands that train several runs
/// share them) and returns what they set.
pub fn install() -> CliResult<StopRequest> {
    if let Some(request) = INSTALLED.get() {
        return Ok(request.clone());
    }
    let request = StopRequest {
        asked: Arc::new(AtomicBool::new(false)),
        signal: Arc::new(AtomicUsize::new(0)),
    };
    let failed =
        |e: std::io::Error| CliError::internal(format!("cannot handle Ctrl-C and SIGTERM: {e}"));
    for signal in [SIGINT, SIGTERM] {
        // Order matters: the exit is armed by the first signal and fires on the
        // second, so it is registered before the flag it reads.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            128 + signal,
            request.asked.clone(),
        )
        .map_err(failed)?;
        signal_hook::flag::register_usize(signal, request.signal.clone(), signal as usize)
            .map_err(failed)?;
        signal_hook::flag::register(signal, request.asked.clone()).map_err(failed)?;
    }
    Ok(INSTALLED.get_or_init(|| request).clone())
}
