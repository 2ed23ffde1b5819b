//! AdamW over named parameters, with global-norm clipping.
//!
//! Hand-written rather than burn's optimizer so that its state is keyed by
//! parameter name (what a checkpoint stores and a fork restores), weight
//! decay applies to matrices only, each parameter has its own step count
//! (a block unfrozen at step 300 starts with fresh moments), and the
//! gradient norm is global across parameters.

use crate::compute::cpu_adamw;
use crate::compute::kernels::{Hyper, Kernels};
use crate::compute::reduce::ordered_sum;
use crate::model::{AnyTensor, Block, CausalLm, ParamInfo};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor, TensorData};
use std::collections::BTreeMap;
use std::collections::HashMap;

pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The scalars of one update that depend on its number and learning rate, shared by
/// the host arithmetic and the fused CUDA kernels.
struct StepScalars {
    /// Bias corrections `1 - beta^t` of the two moments.
    correction1: f64,
    correction2: f64,
    /// What the parameter is multiplied by first (decoupled weight decay), where it
    /// decays.
    decay: Option<f64>,
}

impl AdamWConfig {
    /// For update number `steps` (counting this one) at learning rate `lr`.
    fn step_scalars(&self, steps: u64, lr: f64, decays: bool) -> StepScalars {
        StepScalars {
            correction1: 1.0 - self.beta1.powi(steps as i32),
            correction2: 1.0 - self.beta2.powi(steps as i32),
            decay: decays.then_some(1.0 - lr * self.weight_decay),
        }
    }
}

/// Moments of one parameter, flattened, in burn layout.
pub struct Moments<B: Backend> {
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    pub steps: u64,
}

pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Moments of parameters updated one by one, by name.
    pub state: BTreeMap<String, Moments<B>>,
    /// Moments of the parameters last updated together (see [`AdamW::step`]).
    fused: Option<FusedMoments<B>>,
}

/// Moments of a group of parameters as one flat tensor each, the members' in order.
/// A name is either here or in `AdamW::state`, never both.
struct FusedMoments<B: Backend> {
    /// Name and element count of each member.
    members: Vec<(String, usize)>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    steps: u64,
}

impl<B: Backend> FusedMoments<B> {
    /// Each member's moments as views of the flat tensors.
    fn split(&self) -> Vec<(String, Moments<B>)> {
        let mut offset = 0;
        self.members
            .iter()
            .map(|(name, len)| {
                let moments = Moments {
                    m: self.m.clone().narrow(0, offset, *len),
                    v: self.v.clone().narrow(0, offset, *len),
                    steps: self.steps,
                };
                offset += len;
                (name.clone(), moments)
            })
            .collect()
    }
}

/// One trainable parameter with its gradient, gathered for an update.
struct Entry<B: Backend> {
    name: String,
    /// Flattened, inner backend.
    param: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    lr: f64,
    decays: bool,
    steps: u64,
}

impl<B: Backend> Entry<B> {
    /// Whether the two can share one flat update: same step count, learning rate,
    /// decay and dtypes.
    fn shares_update_with(&self, other: &Entry<B>) -> bool {
        other.steps == self.steps
            && other.lr == self.lr
            && other.decays == self.decays
            && other.param.dtype() == self.param.dtype()
            && other.grad.dtype() == self.grad.dtype()
    }
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
    /// Adds another accumulator's sums, each after this one's.
    pub fn merge(&mut self, other: GradAccumulator<B>) {
        for (name, grad) in other.grads {
            self.accumulate(name, grad);
        }
    }

    /// `grad` added after the sum so far of parameter `name`.
    fn accumulate(&mut self, name: String, grad: Tensor<B, 1>) {
        let entry = match self.grads.remove(&name) {
            Some(sum) => sum + grad,
            None => grad,
        };
        self.grads.insert(name, entry);
    }

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
            self.accumulate(info.name, flatten(grad));
        }
    }
}

impl<B: Kernels> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            state: BTreeMap::new(),
            fused: None,
        }
    }

    /// One update of every parameter that has a gradient. `scale` multiplies
    /// the gradients first (1/accumulation and the clip factor); `lr_of`
    /// gives each parameter's learning rate.
    ///
    /// Parameters that share a step count, a learning rate, weight decay and a
    /// dtype (all LoRA matrices, usually) are updated as one flat tensor: the
    /// arithmetic per element is the same as one by one, but a step costs a few
    /// dozen tensor ops instead of about fifteen per parameter, and on a GPU each
    /// op costs host time whatever its size (hundreds of adapter matrices made the
    /// optimizer a sixth of a step).
    pub fn step<A: AutodiffBackend<InnerBackend = B>>(
        &mut self,
        model: CausalLm<A>,
        grads: GradAccumulator<B>,
        scale: f64,
        lr_of: impl Fn(&ParamInfo) -> f64,
    ) -> CausalLm<A> {
        self.update(model, grads, scale, None, lr_of).0
    }

    /// [`AdamW::step`] with global-norm clipping done on the device: gradients
    /// (after `scale`) are multiplied by `min(1, clip / (norm + 1e-6))`, torch's
    /// `clip_grad_norm_`, without reading the norm back. Returns the model and the
    /// norm before clipping, `[1]`.
    pub fn step_clipped<A: AutodiffBackend<InnerBackend = B>>(
        &mut self,
        model: CausalLm<A>,
        grads: GradAccumulator<B>,
        scale: f64,
        clip: f64,
        lr_of: impl Fn(&ParamInfo) -> f64,
    ) -> (CausalLm<A>, Option<Tensor<B, 1>>) {
        self.update(model, grads, scale, Some(clip), lr_of)
    }

    fn steps_of(&self, name: &str) -> u64 {
        if let Some(fused) = &self.fused {
            if fused.members.iter().any(|(member, _)| member == name) {
                return fused.steps;
            }
        }
        self.state.get(name).map_or(0, |m| m.steps)
    }

    /// Moves the fused group's moments back to per-name state.
    fn unfuse(&mut self) {
        if let Some(fused) = self.fused.take() {
            self.state.extend(fused.split());
        }
    }

    /// One update: the trainable entries, the fused kernels where they serve, else the
    /// flat groups scaled, clipped by their global norm and stepped group by group.
    fn update<A: AutodiffBackend<InnerBackend = B>>(
        &mut self,
        model: CausalLm<A>,
        grads: GradAccumulator<B>,
        scale: f64,
        clip: Option<f64>,
        lr_of: impl Fn(&ParamInfo) -> f64,
    ) -> (CausalLm<A>, Option<Tensor<B, 1>>) {
        let entries = self.entries(&model, grads, lr_of);
        let entries = match self.device_update(entries, scale, clip) {
            Ok((updated, norm)) => return (with_updates(model, updated), norm),
            Err(entries) => entries,
        };
        let flat_groups = flat_groups(entries, scale);
        let clipped = clip.and_then(|clip| global_norm_clip(&flat_groups, clip));
        let factor = clipped.as_ref().map(|(_, factor)| factor);
        let mut cached = self.fused_moments_for(&flat_groups);
        let mut updated: HashMap<String, Tensor<B, 1>> = HashMap::new();
        for (grad, group) in flat_groups {
            self.step_group(grad, factor.cloned(), group, &mut cached, &mut updated);
        }
        (with_updates(model, updated), clipped.map(|(norm, _)| norm))
    }

    /// The trainable parameters that have a gradient, in module order, flattened.
    fn entries<A: AutodiffBackend<InnerBackend = B>>(
        &self,
        model: &CausalLm<A>,
        grads: GradAccumulator<B>,
        lr_of: impl Fn(&ParamInfo) -> f64,
    ) -> Vec<Entry<B>> {
        let weight_decay = self.config.weight_decay;
        let mut grads = grads.grads;
        let mut entries = Vec::new();
        for (info, value) in model.params_with_values() {
            if !info.trainable {
                continue;
            }
            let Some(grad) = grads.remove(&info.name) else {
                continue;
            };
            let shape = value.dims();
            let param = match value {
                AnyTensor::D1(t) => t.inner(),
                AnyTensor::D2(t) => {
                    let n = shape.iter().product::<usize>();
                    t.inner().reshape([n])
                }
            };
            entries.push(Entry {
                steps: self.steps_of(&info.name),
                lr: lr_of(&info),
                decays: shape.len() >= 2 && weight_decay > 0.0,
                name: info.name,
                param,
                grad,
            });
        }
        entries
    }

    /// The fused moments, kept only if they belong to exactly one group now; otherwise
    /// they go back to per-name state.
    fn fused_moments_for(&mut self, flat_groups: &[FlatGroup<B>]) -> Option<FusedMoments<B>> {
        let fused = self.fused.take()?;
        let matches = flat_groups.iter().any(|(_, group)| {
            group.len() == fused.members.len()
                && group
                    .iter()
                    .zip(&fused.members)
                    .all(|(e, (name, _))| &e.name == name)
        });
        if matches {
            Some(fused)
        } else {
            self.state.extend(fused.split());
            None
        }
    }

    /// AdamW on one flat group: its moments (the cached fused ones, or each member's
    /// concatenated), the update (its gradient times the clip factor first, where
    /// given), and each member's new value into `updated`.
    fn step_group(
        &mut self,
        grad: Tensor<B, 1>,
        clip_factor: Option<Tensor<B, 1>>,
        group: Vec<Entry<B>>,
        cached: &mut Option<FusedMoments<B>>,
        updated: &mut HashMap<String, Tensor<B, 1>>,
    ) {
        let first = &group[0];
        let (lr, decays, steps) = (first.lr, first.decays, first.steps + 1);
        let members: Vec<(String, usize)> = group
            .iter()
            .map(|e| (e.name.clone(), e.param.dims()[0]))
            .collect();
        let (m, v) = match cached.take() {
            Some(fused) if fused.members == members => (fused.m, fused.v),
            other => {
                *cached = other;
                let (ms, vs): (Vec<_>, Vec<_>) = group
                    .iter()
                    .map(|entry| {
                        let moments = self.state.remove(&entry.name).unwrap_or_else(|| Moments {
                            m: entry.param.zeros_like(),
                            v: entry.param.zeros_like(),
                            steps: 0,
                        });
                        (moments.m, moments.v)
                    })
                    .unzip();
                (concat(ms), concat(vs))
            }
        };
        let params = group.into_iter().map(|e| e.param).collect();
        let scalars = self.host_scalars(steps, lr, decays);
        let (m, v) = match B::host_adamw(params, grad, m, v, scalars, clip_factor.clone()) {
            Ok((params, m, v)) => {
                for ((name, _), param) in members.iter().zip(params) {
                    updated.insert(name.clone(), param);
                }
                (m, v)
            }
            Err((params, grad, m, v)) => {
                let dtype = grad.dtype();
                let grad = match clip_factor {
                    Some(factor) => grad * factor.cast(dtype),
                    None => grad,
                };
                let (param, m, v) = self.adamw(concat(params), grad, m, v, steps, lr, decays);
                let mut offset = 0;
                for (name, len) in &members {
                    updated.insert(name.clone(), param.clone().narrow(0, offset, *len));
                    offset += len;
                }
                (m, v)
            }
        };
        let moments = FusedMoments {
            members,
            m,
            v,
            steps,
        };
        if moments.members.len() > 1 && self.fused.is_none() {
            self.fused = Some(moments);
        } else {
            self.state.extend(moments.split());
        }
    }

    /// The whole update in `crate::compute::fused_adamw`'s kernels, when the backend is CUDA and
    /// the parameters form one f32 group whose moments are fused, per name (restored
    /// from a checkpoint) or not yet created;
    /// hands the entries back otherwise. Returns the new values by name and, with
    /// `clip`, the gradients' norm.
    #[allow(clippy::type_complexity)]
    fn device_update(
        &mut self,
        entries: Vec<Entry<B>>,
        scale: f64,
        clip: Option<f64>,
    ) -> Result<
        (
            std::collections::HashMap<String, Tensor<B, 1>>,
            Option<Tensor<B, 1>>,
        ),
        Vec<Entry<B>>,
    > {
        let Some(first) = entries.first() else {
            return Err(entries);
        };
        let f32 = burn::tensor::DType::F32;
        let one_group = first.param.dtype() == f32
            && first.grad.dtype() == f32
            && entries.iter().all(|e| first.shares_update_with(e));
        let members: Vec<(String, usize)> = entries
            .iter()
            .map(|e| (e.name.clone(), e.param.dims()[0]))
            .collect();
        let fused_matches = self.fused.as_ref().is_some_and(|f| f.members == members);
        // Per-name moments (fresh, or as a restored checkpoint leaves them) are joined
        // into the flat ones below, so that the first update after a resume runs the same
        // kernels as the uninterrupted run's update at that step: the op-by-op path rounds
        // differently, and a resumed run would leave the uninterrupted one's checkpoints.
        let per_name = self.fused.is_none()
            && members.iter().all(|(name, len)| {
                self.state.get(name).is_none_or(|m| {
                    m.m.dtype() == f32
                        && m.v.dtype() == f32
                        && m.m.dims()[0] == *len
                        && m.v.dims()[0] == *len
                })
            });
        if entries.len() < 2
            || !one_group
            || !(fused_matches || per_name)
            || clip.is_some_and(|c| c <= 0.0)
            || !B::fused_adamw()
        {
            return Err(entries);
        }
        let (lr, decays, steps) = (first.lr, first.decays, first.steps + 1);
        let config = &self.config;
        let (beta1, beta2) = (config.beta1, config.beta2);
        let scalars = config.step_scalars(steps, lr, decays);
        let hyper = Hyper {
            scale: scale as f32,
            lr: lr as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: config.eps as f32,
            decay: scalars.decay.unwrap_or(1.0) as f32,
            correction1: scalars.correction1 as f32,
            correction2: scalars.correction2 as f32,
        };
        let (m, v) = match self.fused.take() {
            Some(fused) => (fused.m, fused.v),
            None => {
                // Every member has restored moments or none has: a member with
                // none has taken no step, and differing step counts never share a
                // group (`shares_update_with`).
                let device = first.param.device();
                let (ms, vs): (Vec<_>, Vec<_>) = members
                    .iter()
                    .map(|(name, len)| match self.state.remove(name) {
                        Some(moments) => (moments.m, moments.v),
                        None => {
                            let zeros = || Tensor::<B, 1>::zeros([*len], (&device, f32));
                            (zeros(), zeros())
                        }
                    })
                    .unzip();
                (concat(ms), concat(vs))
            }
        };
        let (params, grads): (Vec<_>, Vec<_>) =
            entries.into_iter().map(|e| (e.param, e.grad)).unzip();
        let (params, m, v, norm) = B::adamw(params, grads, m, v, hyper, clip.unwrap_or(0.0) as f32)
            .unwrap_or_else(|_| unreachable!("B::fused_adamw() was checked above"));
        let updated = members
            .iter()
            .map(|(name, _)| name.clone())
            .zip(params)
            .collect();
        self.fused = Some(FusedMoments {
            members,
            m,
            v,
            steps,
        });
        Ok((updated, clip.map(|_| norm)))
    }

    /// [`AdamW::adamw`]'s scalars as its ops round them, for [`Kernels::host_adamw`].
    fn host_scalars(&self, steps: u64, lr: f64, decays: bool) -> cpu_adamw::Scalars {
        let AdamWConfig {
            beta1, beta2, eps, ..
        } = self.config;
        let scalars = self.config.step_scalars(steps, lr, decays);
        cpu_adamw::Scalars {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            correction1: scalars.correction1 as f32,
            correction2: scalars.correction2 as f32,
            eps: eps as f32,
            lr: lr as f32,
            decay: scalars.decay.map(|factor| factor as f32),
            clip: None,
        }
    }

    /// The AdamW arithmetic on one (possibly flat) parameter; returns the new
    /// parameter and moments. `steps` counts this update. [`AdamW::host_scalars`] and
    /// `compute::cpu_adamw` repeat it element by element: a change here goes there too.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        m: Tensor<B, 1>,
        v: Tensor<B, 1>,
        steps: u64,
        lr: f64,
        decays: bool,
    ) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
        let AdamWConfig {
            beta1, beta2, eps, ..
        } = self.config;
        let StepScalars {
            correction1,
            correction2,
            decay,
        } = self.config.step_scalars(steps, lr, decays);
        let m = m * beta1 + grad.clone() * (1.0 - beta1);
        let v = v * beta2 + grad.powi_scalar(2) * (1.0 - beta2);
        let update = (m.clone() / correction1) / ((v.clone() / correction2).sqrt() + eps);
        // Decoupled weight decay, on matrices only (not norms or biases).
        let decayed = match decay {
            Some(factor) => param * factor,
            None => param,
        };
        (decayed - update * lr, m, v)
    }

    /// Drop state of parameters that no longer train.
    pub fn retain(&mut self, trainable: &[String]) {
        self.unfuse();
        self.state.retain(|name, _| trainable.contains(name));
    }

    /// Moments as plain data, for a checkpoint, by name.
    pub fn export(&self) -> Vec<(String, TensorData, TensorData, u64)> {
        let fused = self.fused.as_ref().map(|f| f.split()).unwrap_or_default();
        let mut out: Vec<_> = self
            .state
            .iter()
            .map(|(name, m)| (name.clone(), m.m.to_data(), m.v.to_data(), m.steps))
            .chain(
                fused
                    .iter()
                    .map(|(name, m)| (name.clone(), m.m.to_data(), m.v.to_data(), m.steps)),
            )
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restore moments from a checkpoint.
    pub fn import(
        &mut self,
        entries: Vec<(String, TensorData, TensorData, u64)>,
        device: &B::Device,
    ) {
        self.unfuse();
        // In the dtype they were saved in (f32), not the backend's float type: on a
        // bf16 GPU the moments of f32 LoRA matrices stay f32.
        let restore = |data: TensorData| {
            let dtype = data.dtype;
            Tensor::from_data(data, (device, dtype))
        };
        for (name, m, v, steps) in entries {
            self.state.insert(
                name,
                Moments {
                    m: restore(m),
                    v: restore(v),
                    steps,
                },
            );
        }
    }
}

/// A flat gradient and the entries it holds.
type FlatGroup<B> = (Tensor<B, 1>, Vec<Entry<B>>);

/// The gradients scaled by `scale`, then grouped into runs that can share one flat
/// update (same step count, learning rate, decay and dtypes), in order of first
/// appearance; each group's gradients as one flat tensor (singles stay as they are).
fn flat_groups<B: Backend>(entries: Vec<Entry<B>>, scale: f64) -> Vec<FlatGroup<B>> {
    let mut groups: Vec<Vec<Entry<B>>> = Vec::new();
    for mut entry in entries {
        // (x * 1.0 is x: skipping it saves an op per parameter.)
        if scale != 1.0 {
            entry.grad = entry.grad * scale;
        }
        match groups
            .iter_mut()
            .find(|group| group[0].shares_update_with(&entry))
        {
            Some(group) => group.push(entry),
            None => groups.push(vec![entry]),
        }
    }
    groups
        .into_iter()
        .map(|group| {
            (
                concat(group.iter().map(|e| e.grad.clone()).collect()),
                group,
            )
        })
        .collect()
}

/// The global norm of every group's gradient before clipping (`[1]`, f32) and the
/// factor `min(1, clip / (norm + 1e-6))` to multiply them by (torch's
/// `clip_grad_norm_`), on the device; `None` when there is nothing to clip.
fn global_norm_clip<B: Backend>(
    flat_groups: &[FlatGroup<B>],
    clip: f64,
) -> Option<(Tensor<B, 1>, Tensor<B, 1>)> {
    let squares: Vec<Tensor<B, 1>> = flat_groups
        .iter()
        .map(|(grad, _)| ordered_sum(grad.clone().cast(FloatDType::F32).powi_scalar(2)))
        .collect();
    if squares.is_empty() {
        return None;
    }
    let norm = Tensor::cat(squares, 0).sum().sqrt();
    let factor = (norm.clone() + 1e-6)
        .recip()
        .mul_scalar(clip)
        .clamp_max(1.0);
    Some((norm, factor))
}

/// The tensors end to end (one tensor as it is, without a copy).
fn concat<B: Backend>(mut tensors: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
    if tensors.len() == 1 {
        tensors.remove(0)
    } else {
        Tensor::cat(tensors, 0)
    }
}

/// Embedding-side blocks take `embedding_lr` when one is set.
pub fn is_embedding_block(info: &ParamInfo) -> bool {
    !info.is_lora && matches!(info.block, Block::Embeddings | Block::LmHead)
}

/// Each parameter's learning rate at a step: `lr`, or `embedding_lr` (already on the
/// same schedule) for the embedding blocks where one is set.
pub fn learning_rate_of(lr: f64, embedding_lr: Option<f64>) -> impl Fn(&ParamInfo) -> f64 + Copy {
    move |info| match embedding_lr {
        Some(e) if is_embedding_block(info) => e,
        _ => lr,
    }
}

/// `model` with the parameters in `updated` (flat, by name) put back in their shapes.
fn with_updates<A: AutodiffBackend>(
    model: CausalLm<A>,
    mut updated: std::collections::HashMap<String, Tensor<A::InnerBackend, 1>>,
) -> CausalLm<A> {
    model.map_params(|info, value| {
        let updated = updated.remove(&info.name)?;
        let shape = value.dims();
        let value = match shape.len() {
            1 => AnyTensor::D1(Tensor::from_inner(updated)),
            _ => AnyTensor::D2(Tensor::from_inner(updated.reshape([shape[0], shape[1]]))),
        };
        Some((value, true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::flex_values::bits;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    /// `Kernels::host_adamw` (all cores on the CPU) gives `AdamW::adamw`'s bits, with
    /// and without clipping and decay, with moments the caller still holds (left as
    /// they were) or that the update holds alone (written in place).
    #[test]
    fn the_host_update_has_the_op_by_op_bits() {
        let device = Default::default();
        let random =
            |n: usize| Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let sizes = [70_000, 5, 40_000];
        let params: Vec<_> = sizes.iter().map(|&n| random(n)).collect();
        let total = sizes.iter().sum();
        let grad = random(total);
        let (m, v) = (random(total) * 0.1, random(total).abs() * 0.01);
        let optimizer = AdamW::<Flex>::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        });
        let alone = |t: &Tensor<Flex, 1>| Tensor::<Flex, 1>::from_data(t.to_data(), &device);
        for (clip, decays, steps) in [(None, false, 1), (Some(0.37), true, 7)] {
            let factor = clip.map(|c: f32| Tensor::<Flex, 1>::from_floats([c], &device));
            let clipped = match &factor {
                Some(factor) => grad.clone() * factor.clone(),
                None => grad.clone(),
            };
            let params_flat = Tensor::cat(params.clone(), 0);
            let expected = optimizer.adamw(
                params_flat,
                clipped,
                m.clone(),
                v.clone(),
                steps,
                3e-4,
                decays,
            );
            let expected = [expected.0, expected.1, expected.2].map(bits);
            let scalars = optimizer.host_scalars(steps, 3e-4, decays);
            let (m_before, v_before) = (bits(m.clone()), bits(v.clone()));
            for (m_in, v_in) in [(m.clone(), v.clone()), (alone(&m), alone(&v))] {
                let (new_params, m_out, v_out) = Flex::host_adamw(
                    params.clone(),
                    grad.clone(),
                    m_in,
                    v_in,
                    scalars,
                    factor.clone(),
                )
                .unwrap_or_else(|_| panic!("f32 inputs"));
                let got = [Tensor::cat(new_params, 0), m_out, v_out].map(bits);
                assert_eq!(got, expected, "clip {clip:?}, decay {decays}");
            }
            assert_eq!((bits(m.clone()), bits(v.clone())), (m_before, v_before));
        }
    }
}
