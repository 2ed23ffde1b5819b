//! What the server refuses before any handler runs.
//!
//! The UI binds to the loopback address, but a page on any web site the user
//! visits can still send requests to `127.0.0.1`, and a DNS name that
//! rebinds to it makes such a page same-origin. So every request must name
//! this server in its `Host` header, a request from a page must come from
//! this server's own origin, and only reads (GET, HEAD) are served: the UI
//! changes nothing in the store.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The `host:port` names this server answers to.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    names: Arc<Vec<String>>,
    /// Listening on every address (`--host 0.0.0.0`): the names other
    /// machines reach it by are not known, so any Host is answered; a page's
    /// requests must still come from the origin the Host names.
    any: bool,
}

impl AllowedHosts {
    /// The loopback names for `port`, and `host` itself when it is another
    /// address the user chose with `--host`.
    pub fn for_address(host: &std::net::IpAddr, port: u16) -> AllowedHosts {
        let mut names = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        let own = match host {
            std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        if !names.contains(&own) {
            names.push(own);
        }
        AllowedHosts {
            names: Arc::new(names),
            any: host.is_unspecified(),
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        self.any
            || self
                .names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(host))
    }

    /// Same origin: `http://` and the host the request itself names.
    fn allows_origin(&self, origin: &str, host: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host))
    }
}

/// Why a request was refused, in the body of the 4xx.
fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub async fn check(State(allowed): State<AllowedHosts>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "graft ui is read-only: only GET and HEAD are served",
        );
    }
    let headers = request.headers();
    let host = match header_text(headers, header::HOST) {
        Some(host) if allowed.allows_host(host) => host,
        _ => {
            return refuse(
                StatusCode::FORBIDDEN,
                "the Host header does not name this server",
            )
        }
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .is_ok_and(|o| allowed.allows_origin(o, host));
        if !same {
            return refuse(
                StatusCode::FORBIDDEN,
                "requests from other origins are refused",
            );
        }
    }
    if header_text(headers, header::HeaderName::from_static("sec-fetch-site"))
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "requests from other sites are refused",
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
