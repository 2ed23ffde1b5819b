//! `/api/lineage`: the fork tree as nodes and edges, for the graph.

use super::{Api, ApiResult};
use axum::extract::State;
use axum::Json;

/// Every run as a node (its parent run and fork step make the edge), and the
/// base models the roots start from. The page lays them out.
pub async fn lineage(State(api): State<Api>) -> ApiResult {
    let snapshot = api.shared.snapshot();
    let runs: Vec<serde_json::Value> = snapshot
        .runs
        .iter()
        .map(|view| {
            let summary = &view.summary;
            serde_json::json!({
                "id": summary.run.id.to_hex(),
                "label": super::table::label(&snapshot, &summary.run.id),
                "tags": summary.tags,
                "status": summary.status(),
                "steps": summary.steps(),
                "seq": summary.run.seq,
                "parent_run": summary.run.parent_run.map(|p| p.to_hex()),
                "start_step": summary.start_step,
                "start_adapter": summary.start_adapter().map(|(id, _)| id.to_hex()),
                "base_model": summary.run.recipe.base_model.to_hex(),
                "best_eval_loss": summary.best("eval_loss"),
            })
        })
        .collect();
    let models: Vec<serde_json::Value> = snapshot
        .models
        .values()
        .map(|model| {
            let name = snapshot
                .tags
                .get(&model.id)
                .and_then(|t| t.first().cloned())
                .unwrap_or_else(|| model.path.clone());
            serde_json::json!({ "id": model.id.to_hex(), "name": name })
        })
        .collect();
    Ok(Json(serde_json::json!({ "models": models, "runs": runs })))
}
