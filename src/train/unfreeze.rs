//! Progressive unfreezing: which base blocks train from which step.

use crate::model::Block;

/// What a schedule entry opens.
#[derive(Clone, Debug, PartialEq)]
pub enum Layers {
    None,
    All,
    /// The top K decoder layers.
    Top(usize),
    Blocks(Vec<Block>),
}

pub fn parse_layers(text: &str) -> Result<Layers, String> {
    let text = text.trim();
    match text {
        "none" => return Ok(Layers::None),
        "all" => return Ok(Layers::All),
        _ => {}
    }
    if let Some(k) = text.strip_prefix("top:") {
        return k
            .parse()
            .map(Layers::Top)
            .map_err(|_| format!("`{text}`: expected top:K with K a number"));
    }
    text.split(',')
        .map(|part| match part.trim() {
            "embed" | "embeddings" => Ok(Block::Embeddings),
            "norm" => Ok(Block::FinalNorm),
            "lm_head" => Ok(Block::LmHead),
            other => other
                .strip_prefix("layer.")
                .and_then(|n| n.parse().ok())
                .map(Block::Layer)
                .ok_or_else(|| format!("`{other}`: expected none, all, top:K, or a list of embed, layer.N, norm, lm_head")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Layers::Blocks)
}

/// The base blocks open at `step` under `schedule` (sorted by `at`): the
/// latest entry whose `at` has been reached wins.
pub fn open_blocks(
    schedule: &[super::config::UnfreezeStep],
    step: u64,
    layers: usize,
) -> Vec<Block> {
    let mut current = Layers::None;
    let mut entries: Vec<_> = schedule.iter().collect();
    entries.sort_by_key(|e| e.at);
    for entry in entries {
        if entry.at <= step {
            current = parse_layers(&entry.layers).unwrap_or(Layers::None);
        }
    }
    match current {
        Layers::None => Vec::new(),
        Layers::All => {
            let mut all: Vec<Block> = (0..layers).map(Block::Layer).collect();
            all.extend([Block::Embeddings, Block::FinalNorm, Block::LmHead]);
            all
        }
        Layers::Top(k) => (layers.saturating_sub(k)..layers)
            .map(Block::Layer)
            .collect(),
        Layers::Blocks(blocks) => blocks,
    }
}

/// Refuses a schedule entry that names decoder layers the model does not have
/// (`top:K` beyond its layer count, or `layer.N` past the last), which would
/// otherwise open fewer blocks than written, silently.
pub fn check_schedule(
    schedule: &[super::config::UnfreezeStep],
    layers: usize,
    config_path: &std::path::Path,
) -> Result<(), String> {
    for (position, entry) in schedule.iter().enumerate() {
        let beyond = match parse_layers(&entry.layers)? {
            Layers::Top(k) if k > layers => Some(format!("top:{k}")),
            Layers::Blocks(blocks) => blocks.iter().find_map(|block| match block {
                Block::Layer(n) if *n >= layers => Some(format!("layer.{n}")),
                _ => None,
            }),
            _ => None,
        };
        if let Some(named) = beyond {
            let last = match layers {
                0 => "none".to_string(),
                n => format!("layer.0 to layer.{}", n - 1),
            };
            return Err(format!(
                "unfreeze.schedule[{position}] (at = {}): `{named}` asks for more than the model has: {layers} decoder layers (num_hidden_layers in {}), so top:{layers} or {last} at most",
                entry.at,
                config_path.display()
            ));
        }
    }
    Ok(())
}
