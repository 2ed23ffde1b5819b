//! `/api/runs/REF`: one run in full, as `graft show RUN --json` prints it,
//! with what the run page adds: its data sets' records, its ancestry, and the
//! commands that fork, export or reproduce it.

use super::{Api, ApiResult};
use crate::ui::snapshot::{RunView, Snapshot};
use axum::extract::{Path, State};
use axum::Json;

pub async fn run(State(api): State<Api>, Path(reference): Path<String>) -> ApiResult {
    let snapshot = api.shared.snapshot();
    let view = snapshot.resolve(&reference)?;
    let mut value = view.summary.to_record_json(&view.checkpoints);
    value["label"] = super::table::label(&snapshot, &view.summary.run.id).into();
    value["datasets"] = datasets(&snapshot, view);
    value["ancestry"] = snapshot
        .ancestry(&view.summary.run.id)
        .iter()
        .map(|id| {
            serde_json::json!({
                "id": id.to_hex(),
                "label": super::table::label(&snapshot, id),
                "start_step": snapshot.run(id).and_then(|v| v.summary.start_step),
            })
        })
        .collect();
    value["commands"] = commands(&snapshot, view, api.store_flag.as_deref());
    Ok(Json(value))
}

/// Each data set the recipe uses, with its record (path, spec, stats).
fn datasets(snapshot: &Snapshot, view: &RunView) -> serde_json::Value {
    view.summary
        .run
        .recipe
        .datasets
        .iter()
        .map(|used| {
            let record = snapshot.datasets.get(&used.dataset);
            serde_json::json!({
                "id": used.dataset.to_hex(),
                "role": used.role,
                "name": used.name,
                "weight": used.weight,
                "path": record.map(|r| r.path.clone()),
                "spec": record.map(|r| serde_json::to_value(&r.spec).unwrap_or_default()),
                "stats": record.map(|r| serde_json::to_value(&r.stats).unwrap_or_default()),
                "replay_of": record.and_then(|r| r.replay_of).map(|id| id.to_hex()),
            })
        })
        .collect()
}

/// Whether a word can go into a shell command as it is.
fn plain(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/@+=".contains(c))
}

/// A word quoted for a POSIX shell where it needs it.
fn shell_word(word: &str) -> String {
    if plain(word) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The commands to continue from this run, export it or run it again,
/// naming it by its first tag (or short id) and this server's store.
fn commands(snapshot: &Snapshot, view: &RunView, store_flag: Option<&str>) -> serde_json::Value {
    let name = super::table::label(snapshot, &view.summary.run.id);
    let graft = match store_flag {
        Some(store) => format!("graft --store {}", shell_word(store)),
        None => "graft".to_string(),
    };
    let best = shell_word(&format!("{name}@best"));
    let folder = shell_word(&format!("exports/{name}"));
    serde_json::json!({
        "fork": format!("{graft} fork {best} EXPERIMENT.toml --tag {}", shell_word(&format!("{name}-fork"))),
        "export_peft": format!("{graft} export {best} --peft {folder}-peft"),
        "export_merged": format!("{graft} export {best} --merged {folder}-merged"),
        "reproduce": format!("{graft} reproduce {}", shell_word(&name)),
        "lineage": format!("{graft} lineage {}", shell_word(&name)),
    })
}
