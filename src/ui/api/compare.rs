//! Curves and differences of several runs: `/api/compare`, `/api/diff` and
//! one run's `/api/runs/REF/metrics`.

use super::{list, Api, ApiError, ApiResult};
use crate::lineage::{diff_report, recipes_diff};
use crate::store::Canon;
use crate::ui::snapshot::{RunView, Snapshot};
use axum::extract::{Path, Query, State};
use axum::Json;
use std::collections::BTreeSet;

/// The most runs one compare view overlays.
const MAX_COMPARE: usize = 50;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// Comma-separated series; all when absent.
    series: Option<String>,
}

/// The points of the named series (all when none are named), as
/// `[[step, value], ...]` per series; a name the run lacks is an error.
fn series_json(
    view: &RunView,
    names: &[String],
    strict: bool,
) -> Result<serde_json::Value, ApiError> {
    let mut out = serde_json::Map::new();
    for (name, points) in view.series.iter() {
        if names.is_empty() || names.contains(name) {
            out.insert(
                name.clone(),
                points
                    .iter()
                    .map(|(s, v)| serde_json::json!([s, v]))
                    .collect(),
            );
        }
    }
    if strict {
        if let Some(missing) = names.iter().find(|n| !view.series.contains_key(*n)) {
            return Err(ApiError::bad_request(format!(
                "run {} has no series `{missing}`",
                view.summary.run.id.short()
            )));
        }
    }
    Ok(serde_json::Value::Object(out))
}

/// `/api/runs/REF/metrics?series=a,b`: what `graft metrics RUN --json` prints.
pub async fn metrics(
    State(api): State<Api>,
    Path(reference): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> ApiResult {
    let snapshot = api.shared.snapshot();
    let view = snapshot.resolve(&reference)?;
    let series = series_json(view, &list(&query.series), true)?;
    Ok(Json(
        serde_json::json!({ "run": view.summary.run.id.to_hex(), "series": series }),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareQuery {
    /// Comma-separated runs (tags or id prefixes).
    runs: Option<String>,
    series: Option<String>,
    /// Also the runs they descend from, marked `context`, each with the
    /// step up to which its curve belongs to the story (`until`).
    #[serde(default)]
    ancestors: bool,
}

/// `/api/compare?runs=a,b&series=...`: each run's curves with the offset that
/// puts a fork's steps after its parent's fork step, its checkpoint,
/// evaluation and unfreezing steps, and the recipe keys on which the runs
/// differ (as `graft diff` lists them).
pub async fn compare(State(api): State<Api>, Query(query): Query<CompareQuery>) -> ApiResult {
    let snapshot = api.shared.snapshot();
    let references = list(&query.runs);
    if references.is_empty() || references.len() > MAX_COMPARE {
        return Err(ApiError::bad_request(format!(
            "runs: name 1 to {MAX_COMPARE} runs, comma-separated"
        )));
    }
    let mut views: Vec<&RunView> = Vec::new();
    for reference in &references {
        let view = snapshot.resolve(reference)?;
        if !views
            .iter()
            .any(|v| v.summary.run.id == view.summary.run.id)
        {
            views.push(view);
        }
    }
    let names = list(&query.series);
    let mut runs = Vec::new();
    let mut all_series = BTreeSet::new();
    for view in &views {
        all_series.extend(view.series.keys().cloned());
        runs.push(curve(&snapshot, view, &names)?);
    }
    if query.ancestors {
        for (id, until) in ancestors_of(&snapshot, &views) {
            if let Some(view) = snapshot.run(&id) {
                let mut context = curve(&snapshot, view, &names)?;
                context["context"] = true.into();
                context["until"] = until.into();
                runs.push(context);
            }
        }
    }
    let recipes: Vec<_> = views.iter().map(|v| &v.summary.run.recipe).collect();
    let diff: Vec<serde_json::Value> = recipes_diff(&recipes)
        .into_iter()
        .map(|(key, values)| serde_json::json!({ "key": key, "values": values }))
        .collect();
    Ok(Json(serde_json::json!({
        "runs": runs,
        "series_names": all_series,
        "diff": diff,
    })))
}

/// The runs the selected ones descend from (not selected themselves), each
/// with the last step any selected descendant forked from, nearest first.
fn ancestors_of(snapshot: &Snapshot, views: &[&RunView]) -> Vec<(crate::store::Id, u64)> {
    let selected: BTreeSet<_> = views.iter().map(|v| v.summary.run.id).collect();
    let mut until: Vec<(crate::store::Id, u64)> = Vec::new();
    for view in views {
        let chain = snapshot.ancestry(&view.summary.run.id);
        for pair in chain.windows(2) {
            let (child, parent) = (pair[0], pair[1]);
            let step = snapshot
                .run(&child)
                .and_then(|c| c.summary.start_step)
                .unwrap_or(0);
            if selected.contains(&parent) {
                continue;
            }
            match until.iter_mut().find(|(id, _)| *id == parent) {
                Some((_, last)) => *last = (*last).max(step),
                None => until.push((parent, step)),
            }
        }
    }
    until
}

fn curve(
    snapshot: &Snapshot,
    view: &RunView,
    names: &[String],
) -> Result<serde_json::Value, ApiError> {
    let summary = &view.summary;
    let id = summary.run.id;
    let evaluations: Vec<u64> = view
        .series
        .get("eval_loss")
        .map(|points| points.iter().map(|(s, _)| *s).collect())
        .unwrap_or_default();
    let checkpoints: Vec<serde_json::Value> = view
        .checkpoints
        .iter()
        .map(|c| serde_json::json!({ "step": c.step, "id": c.id.to_hex(), "retired": c.retired }))
        .collect();
    Ok(serde_json::json!({
        "id": id.to_hex(),
        "label": super::table::label(snapshot, &id),
        "status": summary.status(),
        "parent": summary.run.parent_run.map(|p| serde_json::json!({
            "id": p.to_hex(),
            "label": super::table::label(snapshot, &p),
            "step": summary.start_step,
        })),
        "offset": snapshot.step_offset(&id) ,
        "series": series_json(view, names, false)?,
        "checkpoints": checkpoints,
        "evaluations": evaluations,
        "unfreeze": unfreeze_steps(&summary.run.recipe.config),
    }))
}

/// The steps at which `[unfreeze] schedule` changes what trains (after 0).
fn unfreeze_steps(config: &Canon) -> Vec<serde_json::Value> {
    let Some(Canon::List(schedule)) = config.get_path("unfreeze.schedule") else {
        return Vec::new();
    };
    schedule
        .iter()
        .filter_map(|entry| {
            let at = entry.get("at")?.as_f64()?;
            let layers = entry.get("layers").and_then(Canon::as_str).unwrap_or("");
            (at > 0.0).then(|| serde_json::json!({ "step": at as u64, "layers": layers }))
        })
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    left: String,
    right: String,
}

/// `/api/diff?left=&right=`: what `graft diff LEFT RIGHT --json` prints.
pub async fn diff(State(api): State<Api>, Query(query): Query<DiffQuery>) -> ApiResult {
    let snapshot = api.shared.snapshot();
    let left = snapshot.resolve(&query.left)?;
    let right = snapshot.resolve(&query.right)?;
    let common = snapshot.common_ancestor(&left.summary.run.id, &right.summary.run.id);
    Ok(Json(diff_report(&left.summary, &right.summary, common)))
}
