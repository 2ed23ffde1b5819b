//! The one place a [`super::Compute`] value becomes a burn backend type.

/// What a [`super::Compute`] value cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("{0}")]
    Unsupported(String),
}

/// Calls `f::<B>(&device, args...)` on the autodiff backend that `compute` names
/// (backend x dtype x checkpointing), after checking it can run in this build and
/// installing its kernel choices. `f` returns `Result<_, E>` with
/// `E: From<ComputeError>`.
#[macro_export]
macro_rules! on_compute {
    ($compute:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_imports)]
        use $crate::compute::{BackendKind, Checkpointing, Dtype};
        #[allow(unused_imports)]
        use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
        #[allow(unused_imports)]
        use burn::backend::{Autodiff, Flex};
        let compute: $crate::compute::Compute = $compute;
        match compute.check() {
            Err(message) => Err($crate::compute::ComputeError::Unsupported(message).into()),
            Ok(()) => {
                compute.install();
                match (compute.backend, compute.options.dtype, compute.options.checkpointing) {
                    (BackendKind::Cpu, _, Checkpointing::None | Checkpointing::Layers) => {
                        $f::<Autodiff<Flex, NoCheckpointing>>(&Default::default(), $($arg),*)
                    }
                    (BackendKind::Cpu, _, Checkpointing::Balanced) => {
                        $f::<Autodiff<Flex, BalancedCheckpointing>>(&Default::default(), $($arg),*)
                    }
                    #[cfg(feature = "cuda")]
                    (BackendKind::Cuda, Dtype::F32, Checkpointing::None | Checkpointing::Layers) => {
                        $f::<Autodiff<burn::backend::Cuda<f32>, NoCheckpointing>>(&Default::default(), $($arg),*)
                    }
                    #[cfg(feature = "cuda")]
                    (BackendKind::Cuda, Dtype::F32, Checkpointing::Balanced) => {
                        $f::<Autodiff<burn::backend::Cuda<f32>, BalancedCheckpointing>>(&Default::default(), $($arg),*)
                    }
                    #[cfg(feature = "cuda")]
                    (BackendKind::Cuda, Dtype::Bf16, Checkpointing::None | Checkpointing::Layers) => {
                        $f::<Autodiff<burn::backend::Cuda<burn::tensor::bf16>, NoCheckpointing>>(&Default::default(), $($arg),*)
                    }
                    #[cfg(feature = "cuda")]
                    (BackendKind::Cuda, Dtype::Bf16, Checkpointing::Balanced) => {
                        $f::<Autodiff<burn::backend::Cuda<burn::tensor::bf16>, BalancedCheckpointing>>(&Default::default(), $($arg),*)
                    }
                    #[cfg(not(feature = "cuda"))]
                    (BackendKind::Cuda, _, _) => {
                        unreachable!("Compute::check refuses CUDA in a build without it")
                    }
                }
            }
        }
    }};
}
