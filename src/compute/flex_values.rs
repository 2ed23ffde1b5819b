//! Plain values in and out of CPU tensor primitives, for the fused CPU nodes that work
//! on slices.

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
