//! The CUDA backends graft trains on, recognised by type.
//!
//! The model is generic over burn backends and stable Rust has no specialisation, so
//! code with a faster CUDA path (cuBLAS products, the fused cross-entropy) checks the
//! backend's `TypeId` against this list and moves its tensors over with [`retype`].

use std::any::TypeId;

pub use super::retype;

/// Runs `$body` with `$outer` bound to the autodiff CUDA backend that `$backend` is,
/// with `$float` and `$strategy` its element type and checkpointing, if it is one.
macro_rules! with_cuda_autodiff {
    ($backend:ty, |$float:ident, $strategy:ident, $outer:ident| $body:block) => {{
        use burn::backend::autodiff::checkpoint::strategy::{
            BalancedCheckpointing, NoCheckpointing,
        };
        use burn::backend::{Autodiff, Cuda};
        use burn::tensor::bf16;
        with_cuda_autodiff!(@one $backend, f32, NoCheckpointing, $float, $strategy, $outer, $body);
        with_cuda_autodiff!(@one $backend, bf16, NoCheckpointing, $float, $strategy, $outer, $body);
        with_cuda_autodiff!(@one $backend, f32, BalancedCheckpointing, $float, $strategy, $outer, $body);
        with_cuda_autodiff!(@one $backend, bf16, BalancedCheckpointing, $float, $strategy, $outer, $body);
    }};
    (@one $backend:ty, $f:ty, $c:ty, $float:ident, $strategy:ident, $outer:ident, $body:block) => {{
        #[allow(dead_code)]
        type $float = $f;
        #[allow(dead_code)]
        type $strategy = $c;
        type $outer = Autodiff<Cuda<$f>, $c>;
        if std::any::TypeId::of::<$backend>() == std::any::TypeId::of::<$outer>() $body
    }};
}
pub(crate) use with_cuda_autodiff;

/// Whether `B` is one of the CUDA backends, inner or autodiff.
pub fn is_cuda<B: 'static>() -> bool {
    use burn::backend::Cuda;
    use burn::tensor::bf16;
    let id = TypeId::of::<B>();
    id == TypeId::of::<Cuda<f32>>() || id == TypeId::of::<Cuda<bf16>>() || is_cuda_autodiff::<B>()
}

/// Whether `B` is one of the autodiff CUDA backends that [`with_cuda_autodiff`]
/// dispatches on: where the fused autodiff nodes run.
pub fn is_cuda_autodiff<B: 'static>() -> bool {
    with_cuda_autodiff!(B, |Float, Strategy, Outer| {
        return true;
    });
    false
}
