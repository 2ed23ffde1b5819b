//! Parameters by name: listing, reading and replacing tensors, and which blocks train.
//!
//! Every parameter is named by its Hugging Face / PEFT checkpoint key
//! (`model.layers.0.self_attn.q_proj.weight`, `...q_proj.lora_A.weight`), which is the
//! module path with LoRA fields renamed. Tensors cross this API in **HF layout**
//! (`[out, in]` for projections, `[rank, in]` / `[out, rank]` for LoRA A / B), so a
//! checkpoint written from it is directly a PEFT / HF tensor. Gradients and optimizer
//! state, which never leave the process in HF form, use burn layout through
//! [`CausalLm::map_params`].

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::error::ModelError;
use super::llama::CausalLm;

/// The units that can be frozen or opened for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Block {
    Embeddings,
    Layer(usize),
    FinalNorm,
    LmHead,
}

impl Block {
    /// The block a parameter name belongs to.
    pub fn of(name: &str) -> Block {
        if let Some(rest) = name.strip_prefix("model.layers.") {
            if let Some(index) = rest.split('.').next().and_then(|i| i.parse().ok()) {
                return Block::Layer(index);
            }
        }
        if name.starts_with("model.embed_tokens") {
            Block::Embeddings
        } else if name.starts_with("lm_head") {
            Block::LmHead
        } else {
            Block::FinalNorm
        }
    }
}

/// One parameter as the trainer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// HF / PEFT checkpoint key.
    pub name: String,
    /// burn's id: the key of `GradientsParams` and of burn optimizer state.
    pub id: ParamId,
    /// Shape in HF layout.
    pub shape: Vec<usize>,
    /// Whether gradients are recorded for it.
    pub trainable: bool,
    pub block: Block,
    /// True for LoRA A and B.
    pub is_lora: bool,
}

/// A parameter tensor of either rank this model uses (norms and biases are 1-D,
/// everything else 2-D), in burn layout.
#[derive(Debug, Clone)]
pub enum AnyTensor<B: Backend> {
    D1(Tensor<B, 1>),
    D2(Tensor<B, 2>),
}

impl<B: Backend> AnyTensor<B> {
    fn from_generic<const D: usize>(tensor: Tensor<B, D>) -> Self {
        match D {
            1 => AnyTensor::D1(Tensor::from_primitive(tensor.into_primitive())),
            _ => AnyTensor::D2(Tensor::from_primitive(tensor.into_primitive())),
        }
    }

    fn into_generic<const D: usize>(self) -> Tensor<B, D> {
        match self {
            AnyTensor::D1(t) => Tensor::from_primitive(t.into_primitive()),
            AnyTensor::D2(t) => Tensor::from_primitive(t.into_primitive()),
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            AnyTensor::D1(t) => t.dims().to_vec(),
            AnyTensor::D2(t) => t.dims().to_vec(),
        }
    }
}

/// The checkpoint key of a module path (LoRA fields renamed to PEFT's keys).
pub fn name_of_path(path: &[String]) -> String {
    let joined = path.join(".");
    joined
        .replace(".lora.lora_a", ".lora_A.weight")
        .replace(".lora.lora_b", ".lora_B.weight")
}

/// Whether HF stores this parameter transposed relative to burn: projections
/// (`[out, in]` vs `[in, out]`) and LoRA matrices.
pub fn is_transposed(name: &str) -> bool {
    name.ends_with("_proj.weight")
        || name == "lm_head.weight"
        || name.ends_with("lora_A.weight")
        || name.ends_with("lora_B.weight")
}

fn info_of<B: Backend, const D: usize>(name: String, param: &Param<Tensor<B, D>>) -> ParamInfo {
    let mut shape = param.dims().to_vec();
    if D == 2 && is_transposed(&name) {
        shape.reverse();
    }
    ParamInfo {
        block: Block::of(&name),
        is_lora: name.contains("lora_A") || name.contains("lora_B"),
        id: param.id,
        shape,
        trainable: param.is_require_grad(),
        name,
    }
}

struct Lister<'a, B: Backend> {
    path: Vec<String>,
    out: &'a mut Vec<(ParamInfo, AnyTensor<B>)>,
    with_values: bool,
}

impl<B: Backend> ModuleVisitor<B> for Lister<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let info = info_of(name_of_path(&self.path), param);
        // Listing names must not copy weights; an empty placeholder stands in.
        let value = if self.with_values {
            AnyTensor::from_generic(param.val())
        } else {
            AnyTensor::D1(Tensor::empty([0], &param.device()))
        };
        self.out.push((info, value));
    }
}

struct FnMapper<'a, B: Backend> {
    path: Vec<String>,
    #[allow(clippy::type_complexity)]
    f: &'a mut dyn FnMut(&ParamInfo, AnyTensor<B>) -> Option<(AnyTensor<B>, bool)>,
}

impl<B: Backend> ModuleMapper<B> for FnMapper<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let info = info_of(name_of_path(&self.path), &param);
        let (id, tensor, mapper) = param.consume();
        match (self.f)(&info, AnyTensor::from_generic(tensor.clone())) {
            None => Param::from_mapped_value(id, tensor, mapper),
            Some((new_value, trainable)) => {
                let value: Tensor<B, D> = new_value.into_generic();
                let value = value.detach().set_require_grad(trainable);
                Param::from_mapped_value(id, value, mapper)
            }
        }
    }
}

pub(crate) fn hf_data_of(info: &ParamInfo, tensor: AnyTensor<impl Backend>) -> TensorData {
    match tensor {
        AnyTensor::D1(t) => t.into_data(),
        AnyTensor::D2(t) if is_transposed(&info.name) => t.transpose().into_data(),
        AnyTensor::D2(t) => t.into_data(),
    }
}

impl<B: Backend> CausalLm<B> {
    /// The model with its LoRA matrices in f32, as training keeps them over a bf16
    /// base (the others, and matrices already in f32, unchanged).
    pub fn with_lora_in_f32(self) -> Self {
        use burn::tensor::{DType, FloatDType};
        self.map_params(|info, value| {
            if !info.is_lora {
                return None;
            }
            let value = match value {
                AnyTensor::D1(t) if t.dtype() != DType::F32 => {
                    AnyTensor::D1(t.cast(FloatDType::F32))
                }
                AnyTensor::D2(t) if t.dtype() != DType::F32 => {
                    AnyTensor::D2(t.cast(FloatDType::F32))
                }
                _ => return None,
            };
            Some((value, true))
        })
    }

    /// Every parameter, in module order, without copying values.
    pub fn params(&self) -> Vec<ParamInfo> {
        let mut out = Vec::new();
        self.visit(&mut Lister {
            path: Vec::new(),
            out: &mut out,
            with_values: false,
        });
        out.into_iter().map(|(info, _)| info).collect()
    }

    /// Names of the parameters that currently record gradients.
    pub fn trainable_param_names(&self) -> Vec<String> {
        self.params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| p.name)
            .collect()
    }

    /// Parameters with their values in burn layout (for an optimizer step that needs
    /// the current value and `tensor.grad(&grads)` of each trainable parameter).
    pub fn params_with_values(&self) -> Vec<(ParamInfo, AnyTensor<B>)> {
        let mut out = Vec::new();
        self.visit(&mut Lister {
            path: Vec::new(),
            out: &mut out,
            with_values: true,
        });
        out
    }

    /// Values in HF layout of the parameters `select` accepts, keyed by name (what a
    /// checkpoint, a PEFT file or a merged export stores).
    pub fn named_tensors(&self, select: impl Fn(&ParamInfo) -> bool) -> Vec<(String, TensorData)> {
        self.params_with_values()
            .into_iter()
            .filter(|(info, _)| select(info))
            .map(|(info, value)| {
                let data = hf_data_of(&info, value);
                (info.name, data)
            })
            .collect()
    }

    /// Values of the trainable parameters, HF layout.
    pub fn trainable_tensors(&self) -> Vec<(String, TensorData)> {
        self.named_tensors(|p| p.trainable)
    }

    /// Rewrites parameters: `f` gets each parameter (burn layout) and returns a new
    /// value and trainable flag, or `None` to leave it as is. Parameter ids are kept, so
    /// burn optimizer state keyed by `ParamId` stays attached.
    pub fn map_params(
        self,
        mut f: impl FnMut(&ParamInfo, AnyTensor<B>) -> Option<(AnyTensor<B>, bool)>,
    ) -> Self {
        let mut mapper = FnMapper {
            path: Vec::new(),
            f: &mut f,
        };
        self.map(&mut mapper)
    }

    /// Replaces parameters by name from HF-layout data (a checkpoint being restored).
    /// Every name must exist and every shape match; trainable flags are kept.
    pub fn load_named_tensors(
        self,
        tensors: HashMap<String, TensorData>,
    ) -> Result<Self, ModelError> {
        let known: HashMap<String, ParamInfo> = self
            .params()
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        for (name, data) in &tensors {
            let info = known
                .get(name)
                .ok_or_else(|| ModelError::UnknownParam { name: name.clone() })?;
            let actual = data.shape.to_vec();
            if actual != info.shape {
                return Err(ModelError::Shape {
                    name: name.clone(),
                    expected: info.shape.clone(),
                    actual,
                });
            }
        }
        let device = self.device();
        Ok(self.map_params(|info, old| {
            let data = tensors.get(&info.name)?.clone().convert::<f32>();
            // Each tensor keeps the dtype its parameter has (an f32 adapter over a
            // bf16 base stays f32, so a resumed run continues from exact values).
            let dtype = match &old {
                AnyTensor::D1(t) => t.dtype(),
                AnyTensor::D2(t) => t.dtype(),
            };
            let options =
                || burn::tensor::TensorCreationOptions::new(device.clone()).with_dtype(dtype);
            let value = match info.shape.len() {
                1 => AnyTensor::D1(Tensor::from_data(data, options())),
                _ if is_transposed(&info.name) => {
                    AnyTensor::D2(Tensor::<B, 2>::from_data(data, options()).transpose())
                }
                _ => AnyTensor::D2(Tensor::from_data(data, options())),
            };
            Some((value, info.trainable))
        }))
    }

    /// Sets the trainable flag of every parameter from `decide(info)`.
    pub fn set_trainable(self, decide: impl Fn(&ParamInfo) -> bool) -> Self {
        self.map_params(|info, value| {
            let want = decide(info);
            (want != info.trainable).then_some((value, want))
        })
    }

    /// Freezes everything except the LoRA tensors (the default when an adapter is on).
    pub fn freeze_base(self) -> Self {
        self.set_trainable(|p| p.is_lora)
    }

    /// Opens the base weights of `blocks` for training, leaving everything else as is.
    pub fn unfreeze_blocks(self, blocks: &[Block]) -> Self {
        self.set_trainable(|p| p.trainable || blocks.contains(&p.block))
    }

    /// Opens the top `k` decoder layers (the ones nearest the output).
    pub fn unfreeze_top_layers(self, k: usize) -> Self {
        let n = self.model.layers.len();
        let blocks: Vec<Block> = (n.saturating_sub(k)..n).map(Block::Layer).collect();
        self.unfreeze_blocks(&blocks)
    }
}
