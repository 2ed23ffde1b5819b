//! `--backend cpu|cuda` and `--dtype`: the device and float type as the command line
//! names them (the values are `crate::compute`'s).

pub use crate::compute::{BackendKind, Dtype};
