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
    with_cpu_autodiff!(B, |Strategy, Outer| {
        return true;
    });
    false
}

/// Whether `B` is an autodiff backend with graft's fused training nodes: the CPU one,
/// or (with the `cuda` feature) a CUDA one.
pub fn is_fused_autodiff<B: 'static>() -> bool {
    is_cpu_autodiff::<B>() || {
        #[cfg(feature = "cuda")]
        {
            super::cuda_backends::is_cuda_autodiff::<B>()
        }
        #[cfg(not(feature = "cuda"))]
        false
    }
}

/// The values of a CPU tensor primitive in logical (row-major) order, for the fused
/// CPU nodes that work on plain slices. It must be f32.
pub fn host_values(primitive: burn::tensor::ops::FloatTensor<burn::backend::Flex>) -> Vec<f32> {
    use burn::tensor::TensorPrimitive;
    // The rank only names the type: the data keeps the primitive's own shape.
    burn::tensor::Tensor::<burn::backend::Flex, 1>::from_primitive(TensorPrimitive::Float(
        primitive,
    ))
    .into_data()
    .to_vec::<f32>()
    .expect("the fused CPU nodes take f32")
}

/// A CPU tensor primitive of `shape` holding `values` (row-major).
pub fn flex_primitive<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
) -> burn::tensor::ops::FloatTensor<burn::backend::Flex> {
    burn::tensor::Tensor::<burn::backend::Flex, D>::from_data(
        burn::tensor::TensorData::new(values, shape),
        &Default::default(),
    )
    .into_primitive()
    .tensor()
}
