//! `--backend cpu|cuda`: which burn backend a command runs on.

/// The compute backend.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// burn's Flex CPU backend (the default).
    #[default]
    Cpu,
    /// burn-cuda on an NVIDIA GPU (needs a build with `--features cuda`).
    Cuda,
}

/// Float type the model computes in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

/// Call a generic function `f::<B>(&device, args...)` on the chosen
/// autodiff backend.
#[macro_export]
macro_rules! on_backend {
    ($kind:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $kind {
            $crate::cli::backend::BackendKind::Cpu => {
                $f::<$crate::model::CpuTrainBackend>(&Default::default(), $($arg),*)
            }
            #[cfg(feature = "cuda")]
            $crate::cli::backend::BackendKind::Cuda => {
                $f::<burn::backend::Autodiff<burn::backend::Cuda>>(&Default::default(), $($arg),*)
            }
            #[cfg(not(feature = "cuda"))]
            $crate::cli::backend::BackendKind::Cuda => Err($crate::cli::CliError::user(
                "this graft was built without CUDA: rebuild with `cargo build --release --features cuda`",
            )),
        }
    };
}
