//! The runs table: `graft runs --where --sort` over the snapshot, paged.

use super::{list, select_error, Api, ApiError, ApiResult};
use crate::lineage::query::Value;
use crate::lineage::Selection;
use crate::ui::snapshot::{RunView, Snapshot};
use axum::extract::{Query, State};
use axum::Json;

/// The most rows one page may ask for.
const MAX_PAGE: usize = 1000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    r#where: Option<String>,
    sort: Option<String>,
}

fn select<'a>(
    snapshot: &'a Snapshot,
    filter: &Option<String>,
    sort: &Option<String>,
) -> Result<Vec<&'a RunView>, ApiError> {
    let selection = Selection::new(filter.as_deref(), sort.as_deref(), &snapshot.known_keys)
        .map_err(|e| select_error("where", e))?;
    Ok(selection.apply(&snapshot.runs))
}

/// `/api/runs?where=&sort=`: exactly the list `graft runs --json` prints.
pub async fn runs(State(api): State<Api>, Query(query): Query<RunsQuery>) -> ApiResult {
    let snapshot = api.shared.snapshot();
    let matches = select(&snapshot, &query.r#where, &query.sort)?;
    Ok(Json(serde_json::Value::Array(
        matches.iter().map(|view| view.summary.to_json()).collect(),
    )))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableQuery {
    r#where: Option<String>,
    sort: Option<String>,
    /// Extra columns: any key `--where` takes.
    columns: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// `/api/table`: one page of the runs table, with the requested columns'
/// values per row and the number of matching runs.
pub async fn table(State(api): State<Api>, Query(query): Query<TableQuery>) -> ApiResult {
    let snapshot = api.shared.snapshot();
    let columns = list(&query.columns);
    if let Some(unknown) = columns.iter().find(|c| !snapshot.known_keys.contains(*c)) {
        return Err(ApiError::bad_request(format!(
            "unknown column `{unknown}`: columns take the keys --where takes"
        )));
    }
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let matches = select(&snapshot, &query.r#where, &query.sort)?;
    let rows: Vec<serde_json::Value> = matches
        .iter()
        .skip(query.offset)
        .take(limit)
        .map(|view| row(&snapshot, view, &columns))
        .collect();
    Ok(Json(serde_json::json!({
        "total": matches.len(),
        "runs_in_store": snapshot.runs.len(),
        "offset": query.offset,
        "columns": columns,
        "rows": rows,
    })))
}

fn row(snapshot: &Snapshot, view: &RunView, columns: &[String]) -> serde_json::Value {
    let summary = &view.summary;
    let values: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .map(|key| {
            let value = match summary.lookup(key) {
                Some(Value::Number(n)) => serde_json::json!(n),
                Some(Value::Text(t)) => serde_json::json!(t),
                None => serde_json::Value::Null,
            };
            (key.clone(), value)
        })
        .collect();
    let parent = summary.run.parent_run.map(|parent| {
        serde_json::json!({
            "id": parent.to_hex(),
            "label": label(snapshot, &parent),
            "step": summary.start_step,
        })
    });
    serde_json::json!({
        "id": summary.run.id.to_hex(),
        "label": label(snapshot, &summary.run.id),
        "tags": summary.tags,
        "status": summary.status(),
        "steps": summary.steps(),
        "created_at": summary.run.created_at.to_rfc3339(),
        "parent": parent,
        "values": values,
    })
}

/// A run's name for people: its first tag, else its short id.
pub fn label(snapshot: &Snapshot, id: &crate::store::Id) -> String {
    snapshot
        .tags
        .get(id)
        .and_then(|tags| tags.first().cloned())
        .unwrap_or_else(|| id.short())
}

/// `/api/keys`: every key `where`, `sort` and `columns` accept here.
pub async fn keys(State(api): State<Api>) -> ApiResult {
    let snapshot = api.shared.snapshot();
    Ok(Json(serde_json::json!(*snapshot.known_keys)))
}
