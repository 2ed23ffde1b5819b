//! AdamW over named parameters, with global-norm clipping.
//!
//! Hand-written rather than burn's optimizer so that its state is keyed by
//! parameter name (what a checkpoint stores and a fork restores), weight
//! decay applies to matrices only, each parameter has its own step count
//! (a block unfrozen at step 300 starts with fresh moments), and the
//! gradient norm is global across parameters.

use crate::model::{AnyTensor, Block, CausalLm, ParamInfo};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Moments of one parameter, flattened, in burn layout.
pub struct Moments<B: Backend> {
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    pub steps: u64,
}

pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    pub state: BTreeMap<String, Moments<B>>,
}

/// Flattened gradients of the trainable parameters, summed over micro-batches.
pub struct GradAccumulator<B: Backend> {
    pub grads: BTreeMap<String, Tensor<B, 1>>,
}

impl<B: Backend> Default for GradAccumulator<B> {
    fn default() -> Self {
        GradAccumulator {
            grads: BTreeMap::new(),
        }
    }
}

fn flatten<B: Backend>(tensor: AnyTensor<B>) -> Tensor<B, 1> {
    match tensor {
        AnyTensor::D1(t) => t,
        AnyTensor::D2(t) => {
            let n = t.dims().iter().product::<usize>();
            t.reshape([n])
        }
    }
}

impl<B: Backend> GradAccumulator<B> {
    /// Add the gradients of `model`'s trainable parameters from one backward pass.
    pub fn add<A: AutodiffBackend<InnerBackend = B>>(
        &mut self,
        model: &CausalLm<A>,
        grads: &A::Gradients,
    ) {
        for (info, value) in model.params_with_values() {
            if !info.trainable {
                continue;
            }
            let grad = match value {
                AnyTensor::D1(t) => t.grad(grads).map(AnyTensor::D1),
                AnyTensor::D2(t) => t.grad(grads).map(AnyTensor::D2),
            };
            let Some(grad) = grad else { continue };
            let grad = flatten(grad);
            let entry = match self.grads.remove(&info.name) {
                Some(sum) => sum + grad,
                None => grad,
            };
            self.grads.insert(info.name, entry);
        }
    }

    /// The global L2 norm (one device read).
    pub fn norm(&self) -> f64 {
        let squares: Vec<Tensor<B, 1>> = self
            .grads
            .values()
            .map(|g| g.clone().powi_scalar(2).sum())
            .collect();
        if squares.is_empty() {
            return 0.0;
        }
        let total: f32 = Tensor::cat(squares, 0).sum().into_scalar().elem();
        (total as f64).sqrt()
    }
}

use burn::tensor::ElementConversion;

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            state: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient. `scale` multiplies
    /// the gradients first (1/accumulation and the clip factor); `lr_of`
    /// gives each parameter's learning rate.
    pub fn step<A: AutodiffBackend<InnerBackend = B>>(
        &mut self,
        model: CausalLm<A>,
        grads: GradAccumulator<B>,
        scale: f64,
        lr_of: impl Fn(&ParamInfo) -> f64,
    ) -> CausalLm<A> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let mut grads = grads.grads;
        let state = &mut self.state;
        model.map_params(|info, value| {
            if !info.trainable {
                return None;
            }
            let grad = grads.remove(&info.name)? * scale;
            let shape = value.dims();
            let param = match value {
                AnyTensor::D1(t) => t.inner(),
                AnyTensor::D2(t) => {
                    let n = shape.iter().product::<usize>();
                    t.inner().reshape([n])
                }
            };
            let moments = state.entry(info.name.clone()).or_insert_with(|| Moments {
                m: param.zeros_like(),
                v: param.zeros_like(),
                steps: 0,
            });
            moments.steps += 1;
            moments.m = moments.m.clone() * beta1 + grad.clone() * (1.0 - beta1);
            moments.v = moments.v.clone() * beta2 + grad.powi_scalar(2) * (1.0 - beta2);
            let correction1 = 1.0 - beta1.powi(moments.steps as i32);
            let correction2 = 1.0 - beta2.powi(moments.steps as i32);
            let lr = lr_of(info);
            let update = (moments.m.clone() / correction1)
                / ((moments.v.clone() / correction2).sqrt() + eps);
            // Decoupled weight decay, on matrices only (not norms or biases).
            let decayed = if shape.len() >= 2 && weight_decay > 0.0 {
                param.clone() * (1.0 - lr * weight_decay)
            } else {
                param
            };
            let updated = decayed - update * lr;
            let value = match shape.len() {
                1 => AnyTensor::D1(Tensor::from_inner(updated)),
                _ => AnyTensor::D2(Tensor::from_inner(updated.reshape([shape[0], shape[1]]))),
            };
            Some((value, true))
        })
    }

    /// Drop state of parameters that no longer train.
    pub fn retain(&mut self, trainable: &[String]) {
        self.state.retain(|name, _| trainable.contains(name));
    }

    /// Moments as plain data, for a checkpoint.
    pub fn export(&self) -> Vec<(String, TensorData, TensorData, u64)> {
        self.state
            .iter()
            .map(|(name, m)| (name.clone(), m.m.to_data(), m.v.to_data(), m.steps))
            .collect()
    }

    /// Restore moments from a checkpoint.
    pub fn import(
        &mut self,
        entries: Vec<(String, TensorData, TensorData, u64)>,
        device: &B::Device,
    ) {
        for (name, m, v, steps) in entries {
            self.state.insert(
                name,
                Moments {
                    m: Tensor::from_data(m, device),
                    v: Tensor::from_data(v, device),
                    steps,
                },
            );
        }
    }
}

/// Embedding-side blocks take `embedding_lr` when one is set.
pub fn is_embedding_block(info: &ParamInfo) -> bool {
    !info.is_lora && matches!(info.block, Block::Embeddings | Block::LmHead)
}
