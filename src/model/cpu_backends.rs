//! The CPU training backends, recognised by type, as `cuda_backends` does for CUDA:
//! code with a fused CPU path (attention, the token loss, adapted projections)
//! checks the backend's `TypeId` and moves its tensors over with `super::retype`.

/// Runs `$body` with `$outer` bound to the autodiff CPU backend that `$backend` is,
/// with `$strategy` its checkpointing, if it is one.
macro_rules! with_cpu_autodiff {
    ($backend:ty, |$strategy:ident, $outer:ident| $body:block) => {{
        use burn::backend::autodiff::checkpoint::strategy::{
            BalancedCheckpointing, NoCheckpointing,
        };
        with_cpu_autodiff!(@one $backend, NoCheckpointing, $strategy, $outer, $body);
        with_cpu_autodiff!(@one $backend, BalancedCheckpointing, $strategy, $outer, $body);
    }};
    (@one $backend:ty, $c:ty, $strategy:ident, $outer:ident, $body:block) => {{
        #[allow(dead_code)]
        type $strategy = $c;
        type $outer = burn::backend::Autodiff<burn::backend::Flex, $c>;
        if std::any::TypeId::of::<$backend>() == std::any::TypeId::of::<$outer>() $body
    }};
}
pub(crate) use with_cpu_autodiff;

/// Whether `B` is the autodiff CPU backend, with or without checkpointing: where the
/// fused CPU nodes run.
pub fn is_cpu_autodiff<B: 'static>() -> bool {
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
    use burn::backend::{Autodiff, Flex};
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    id == TypeId::of::<Autodiff<Flex, NoCheckpointing>>()
        || id == TypeId::of::<Autodiff<Flex, BalancedCheckpointing>>()
}
