//! The page's files, compiled into the binary: the server reads nothing from
//! disk but the store, so no request path can reach another file.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use include_dir::{include_dir, Dir};

static ASSETS: Dir = include_dir!("$CARGO_MANIFEST_DIR/src/ui/assets");

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    }
}

/// An embedded file by exact name (`index.html`, `vendor/uPlot.iife.min.js`);
/// names with `..`, backslashes or empty parts are never embedded names.
pub fn file(path: &str) -> Option<(&'static [u8], &'static str)> {
    let clean = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !path.contains('\\');
    if !clean {
        return None;
    }
    let file = ASSETS.get_file(path)?;
    Some((file.contents(), content_type(path)))
}

fn serve(path: &str) -> Response {
    match file(path) {
        Some((bytes, kind)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `/`: the page.
pub async fn index() -> Response {
    serve("index.html")
}

/// `/assets/...`: its scripts, styles and the vendored chart library; any
/// other path is not found.
pub async fn fallback(uri: Uri) -> Response {
    match uri.path().strip_prefix("/assets/") {
        Some(path) => serve(path),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
