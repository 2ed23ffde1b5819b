//! `graft export REF --peft DIR | --merged DIR | --gguf FILE`: a PEFT adapter
//! folder, merged weights in Hugging Face layout, or a merged model as one GGUF
//! file for llama.cpp and Ollama.
//!
//! An export never loses a trained weight and never overwrites a base model:
//! the PEFT folder carries every base tensor the checkpoint changed (in PEFT's
//! `modules_to_save`) or the export refuses and names them; the target folder
//! must be new or empty (or `--force`), and never a registered model's folder.

use super::{output, CliError, CliResult, Context};
use crate::model::adapter::{savable_module, SAVABLE_MODULES};
use crate::model::gguf::{export_gguf, Quantization};
use crate::model::{save_merged, write_peft_adapter};
use crate::store::Index;
use crate::train::restore::RestoreError;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["peft", "merged", "gguf"])))]
pub struct Args {
    /// A checkpoint (RUN@STEP, RUN@best, a tag, or a run = its last checkpoint).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Write a PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    /// Trained embeddings and lm_head go in PEFT's `modules_to_save`; a checkpoint
    /// that changed other base tensors (norms, layer weights) needs --merged.
    #[arg(long, value_name = "DIR")]
    pub peft: Option<PathBuf>,
    /// Write a full Hugging Face folder with the adapter folded into the weights.
    #[arg(long, value_name = "DIR")]
    pub merged: Option<PathBuf>,
    /// Write one GGUF file (version 3) for llama.cpp, Ollama and LM Studio: the
    /// adapter merged into the weights, the tokenizer and chat template in its
    /// metadata. Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2 and Gemma 3. The
    /// file is written under a temporary name and renamed when complete; an
    /// existing FILE is refused (--force replaces it).
    #[arg(long, value_name = "FILE")]
    pub gguf: Option<PathBuf>,
    /// How --gguf stores the weights: f16 (the default), q8_0 (8-bit blocks),
    /// or q4_k_m (llama.cpp's 4-bit k-quant mix: Q4_K, with Q6_K for the head
    /// and some attn_v / ffn_down layers). Norms stay f32; a matrix whose rows
    /// do not split into the type's blocks falls back as llama-quantize does.
    #[arg(long, value_name = "TYPE")]
    pub quant: Option<String>,
    /// Write into a folder that is not empty, replacing the files the export
    /// writes (and stale weight files beside them); with --gguf, replace an
    /// existing file. A registered model's folder is refused even so.
    #[arg(long)]
    pub force: bool,
}

impl From<RestoreError> for CliError {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::Store(e) => e.into(),
            other => CliError::user(other.to_string()),
        }
    }
}

/// How many tensor names an error lists before it counts the rest.
const NAMES_SHOWN: usize = 8;

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    if let Some(file) = &args.gguf {
        return run_gguf(&args, file, &store);
    }
    if let Some(quant) = &args.quant {
        return Err(
            CliError::user(format!("--quant {quant} applies to a GGUF export only"))
                .with_hint("add --gguf FILE, or leave --quant out"),
        );
    }
    let (dir, kind) = match (&args.peft, &args.merged) {
        (Some(dir), _) => (dir.as_path(), "PEFT adapter"),
        (None, Some(dir)) => (dir.as_path(), "merged model"),
        (None, None) => return Err(CliError::user("give --peft DIR or --merged DIR")),
    };
    let trained_base = {
        let index = store.index()?;
        check_target(&index, dir, args.force)?;
        match index.resolve_checkpoint(&args.reference) {
            Ok(id) => Some(base_tensors_changed(&index.checkpoint(&id)?)),
            Err(_) => None,
        }
    };
    let restored = super::progress::restore_with_bar(&store, &args.reference)?;
    let (Some(checkpoint), Some(trained_base)) = (restored.checkpoint, trained_base) else {
        return Err(CliError::user(format!(
            "`{}` is a base model: export takes a checkpoint",
            args.reference
        )));
    };
    let base_name = restored.folder.display().to_string();
    if args.peft.is_some() {
        let adapter = restored.adapter.as_ref().ok_or_else(|| {
            CliError::user("this checkpoint comes from full fine-tuning and has no adapter")
                .with_hint("use --merged DIR for a full model folder")
        })?;
        let uncarried: Vec<&String> = trained_base
            .iter()
            .filter(|name| savable_module(name).is_none())
            .collect();
        if !uncarried.is_empty() {
            return Err(CliError::user(format!(
                "checkpoint {} changed {} that a PEFT adapter cannot carry: {}",
                checkpoint.short(),
                output::count(uncarried.len(), "base tensor", "base tensors"),
                name_list(&uncarried)
            ))
            .with_hint(format!(
                "PEFT holds LoRA matrices and whole {} modules (modules_to_save); export the whole model with --merged DIR instead",
                SAVABLE_MODULES.map(|(_, module)| module).join(" / ")
            )));
        }
        let mut saved = restored
            .model
            .named_tensors(|p| trained_base.contains(&p.name));
        // A tied head is the embedding: PEFT's lm_head copy must get the trained
        // values too, or the HF model would read logits through the old head.
        if restored.model.config.tie_word_embeddings {
            if let Some((_, embedding)) = saved
                .iter()
                .find(|(name, _)| name == "model.embed_tokens.weight")
            {
                saved.push(("lm_head.weight".into(), embedding.clone()));
            }
        }
        let lora = restored.model.named_tensors(|p| p.is_lora);
        prepare_target(dir, args.force)?;
        write_peft_adapter(dir, adapter, &lora, &saved, Some(&base_name))?;
        let carried = if saved.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = saved.iter().map(|(name, _)| name.as_str()).collect();
            format!(" (with {} in modules_to_save)", names.join(", "))
        };
        output::println_safe(&format!("wrote {kind} to {}{carried}", dir.display()));
    } else {
        prepare_target(dir, args.force)?;
        if let Some(scheme) = restored.model.base_quantization() {
            eprintln!(
                "note: the run trained over a {} base: the adapter is merged into its dequantized weights, written in f32 (the file's metadata says so)",
                scheme.as_str()
            );
        }
        save_merged(restored.model, dir, Some(&restored.folder))?;
        output::println_safe(&format!("wrote {kind} to {}", dir.display()));
    }
    Ok(())
}

/// `--gguf FILE`: checks the target and the quantization before anything is
/// computed, then writes the merged model with a bar over its tensors.
fn run_gguf(args: &Args, file: &Path, store: &crate::store::Store) -> CliResult {
    let quant = Quantization::parse(args.quant.as_deref().unwrap_or("f16"))
        .map_err(|e| CliError::user(e.to_string()))?;
    if file.is_dir() {
        return Err(CliError::user(format!("{} is a folder", file.display()))
            .with_hint("give the path of the .gguf file to write"));
    }
    if file.exists() && !args.force {
        return Err(CliError::user(format!(
            "{} exists: an export never overwrites a file",
            file.display()
        ))
        .with_hint("give a new file name, or pass --force to replace it"));
    }
    let restored = super::progress::restore_with_bar(store, &args.reference)?;
    let Some(checkpoint) = restored.checkpoint else {
        return Err(CliError::user(format!(
            "`{}` is a base model: export takes a checkpoint",
            args.reference
        )));
    };
    let name = format!("graft checkpoint {}", checkpoint.short());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("gguf [{bar:30}] {pos}/{len} tensors {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = |done: usize, total: usize, tensor: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(tensor.to_string());
    };
    let summary = export_gguf(
        restored.model,
        &restored.folder,
        file,
        quant,
        &name,
        args.force,
        &mut progress,
    )
    .map_err(|e| CliError::user(e.to_string()))?;
    bar.finish_and_clear();
    for caveat in &summary.caveats {
        eprintln!("note: {caveat}");
    }
    output::println_safe(&format!(
        "wrote GGUF ({}, {}, {} tensors, {}) to {}",
        summary.architecture,
        quant.as_str(),
        summary.tensors.len(),
        output::bytes(summary.bytes),
        file.display()
    ));
    Ok(())
}

/// Base tensors (not LoRA matrices) a checkpoint holds: exactly the ones that
/// differ from the base model, its own and those inherited from its fork point.
fn base_tensors_changed(checkpoint: &crate::store::CheckpointRecord) -> Vec<String> {
    checkpoint
        .tensors
        .keys()
        .filter(|name| !name.contains(".lora_A.") && !name.contains(".lora_B."))
        .cloned()
        .collect()
}

fn name_list(names: &[&String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(|n| n.as_str()).collect();
    let rest = names.len().saturating_sub(NAMES_SHOWN);
    let more = format!("and {rest} more");
    if rest > 0 {
        shown.push(&more);
    }
    shown.join(", ")
}

/// The same folder, whether or not it exists yet (a model record's path is
/// canonical; a new export folder is compared by its absolute path).
fn same_folder(a: &Path, b: &Path) -> bool {
    let normal = |p: &Path| {
        p.canonicalize()
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    normal(a) == normal(b)
}

/// Refuses a target folder that is a registered model's, and a non-empty one
/// unless `force`: before anything is computed or written.
fn check_target(index: &Index, dir: &Path, force: bool) -> CliResult {
    for model in index.models()? {
        if same_folder(Path::new(&model.path), dir) {
            return Err(CliError::user(format!(
                "{} is the folder of registered model {}: an export there would change the base that its runs load",
                dir.display(),
                model.id.short()
            ))
            .with_hint("export to another folder (even --force does not write into a registered model's folder)"));
        }
    }
    if dir.exists() && !dir.is_dir() {
        return Err(
            CliError::user(format!("{} exists and is not a folder", dir.display()))
                .with_hint("give a new or empty folder"),
        );
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(CliError::user(format!("{}: {e}", dir.display()))),
    };
    if entries > 0 && !force {
        return Err(CliError::user(format!(
            "{} is not empty ({}): an export would overwrite files in it",
            dir.display(),
            output::count(entries, "entry", "entries")
        ))
        .with_hint(
            "give a new or empty folder, or pass --force to replace the files the export writes",
        ));
    }
    Ok(())
}

/// With `--force`, weight files an export does not write itself would be read
/// beside (or instead of) the new ones: a sharded index, shards, torch pickles.
fn prepare_target(dir: &Path, force: bool) -> CliResult {
    if !force {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let stale = name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json")
            || name.ends_with(".bin");
        if stale && entry.path().is_file() {
            std::fs::remove_file(entry.path())
                .map_err(|e| CliError::user(format!("{}: {e}", entry.path().display())))?;
            eprintln!("removed {} (--force)", entry.path().display());
        }
    }
    Ok(())
}
