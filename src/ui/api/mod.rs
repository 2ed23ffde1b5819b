//! `/api/...`: the JSON the page is drawn from, which scripts can read too.
//! Where a CLI command has a `--json` form, the endpoint serves the same
//! document (`/api/runs` is `graft runs --json`, `/api/diff` is `graft diff
//! --json`, `/api/runs/REF` is `graft show RUN --json`, `/api/runs/REF/metrics`
//! is `graft metrics RUN --json`). Every answer comes from the in-memory
//! snapshot; none opens the index.

mod compare;
mod lineage;
mod run_page;
mod table;

use super::snapshot::ResolveError;
use super::watch::Shared;
use crate::lineage::SelectError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// What every handler gets.
#[derive(Clone)]
pub struct Api {
    pub shared: Arc<Shared>,
    /// The `--store` a copyable command must name, when it is not the default.
    pub store_flag: Option<String>,
}

pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/api/runs", get(table::runs))
        .route("/api/table", get(table::table))
        .route("/api/keys", get(table::keys))
        .route("/api/lineage", get(lineage::lineage))
        .route("/api/runs/{reference}", get(run_page::run))
        .route("/api/runs/{reference}/metrics", get(compare::metrics))
        .route("/api/compare", get(compare::compare))
        .route("/api/diff", get(compare::diff))
        .route("/api/version", get(version))
        .with_state(api)
}

/// A refusal with a JSON body: `{"error": ..., and for a query the column}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::json!({ "error": message.into() }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ResolveError> for ApiError {
    fn from(error: ResolveError) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            body: serde_json::json!({ "error": error.to_string() }),
        }
    }
}

/// A `where`/`sort` error keeps its column so the page can point at it.
pub fn select_error(parameter: &str, error: SelectError) -> ApiError {
    let body = match error {
        SelectError::Query(error) => serde_json::json!({
            "error": error.message,
            "parameter": parameter,
            "column": error.column,
            "source": error.source_text,
        }),
        SelectError::UnknownSortKey(key) => serde_json::json!({
            "error": format!("unknown sort key `{key}`"),
            "parameter": "sort",
        }),
    };
    ApiError {
        status: StatusCode::BAD_REQUEST,
        body,
    }
}

pub type ApiResult<T = Json<serde_json::Value>> = Result<T, ApiError>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// Answer once the version differs from this one (long poll).
    after: Option<u64>,
}

/// The snapshot's version; with `?after=N`, held open (up to 20 s) until it
/// changes, so the page learns of a new metric point as soon as it is read.
async fn version(
    State(api): State<Api>,
    axum::extract::Query(query): axum::extract::Query<VersionQuery>,
) -> ApiResult {
    let mut receiver = api.shared.version();
    if let Some(after) = query.after {
        let changed = receiver.wait_for(|v| *v != after);
        let _ = tokio::time::timeout(Duration::from_secs(20), changed).await;
    }
    let version = *receiver.borrow();
    Ok(Json(serde_json::json!({ "version": version })))
}

/// A comma-separated list parameter, empty parts dropped.
pub fn list(parameter: &Option<String>) -> Vec<String> {
    parameter
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
