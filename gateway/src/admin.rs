//! The admin listener: `POST /v1/publish` (standalone mode), `/healthz`, `/readyz`, `/metrics`.

use crate::journal::Journal;
use crate::source::Source;
use crate::worker::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Largest publish body.
pub const MAX_PUBLISH_BODY: usize = 1024 * 1024;
/// Largest integer a JSON number may carry here (PROTOCOL.md: above it, decimal strings).
const MAX_JSON_INT: u64 = 1 << 53;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// Where publishes go (standalone mode only).
    pub journal: Option<Journal>,
    /// Latest SJIDs (for readiness of the upstream).
    pub source: Source,
    /// Readiness and counts.
    pub shared: Arc<Shared>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The connection cap (exported for alerts).
    pub max_connections: usize,
    /// Required bearer token for publish, if any.
    pub token: Option<Arc<str>>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/publish", post(publish))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(MAX_PUBLISH_BODY))
        .with_state(state)
}

fn error(status: StatusCode, name: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": name, "message": message.into()})),
    )
        .into_response()
}

async fn publish(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(expected) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(expected) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
        }
    }
    let Some(journal) = &state.journal else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this gateway follows relays over NATS; publish to the JetStream journal (herald-relay publish)",
        );
    };
    let changes = match parse_publish(&body) {
        Ok(c) => c,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "bad_request", msg),
    };
    let accepted = changes.len();
    match journal.append(changes).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "accepted": accepted })),
        )
            .into_response(),
        Err(msg) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg),
    }
}

/// Parses `{"changes": [{"ns": …, "sjid": …}, …]}`; any malformed entry rejects the batch.
pub fn parse_publish(body: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let list = v
        .get("changes")
        .and_then(Value::as_array)
        .ok_or("body must be an object with a \"changes\" array")?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = |name: &str| -> Result<u64, String> {
                let value = entry
                    .get(name)
                    .ok_or_else(|| format!("changes[{i}] has no \"{name}\""))?;
                json_u64(value).ok_or_else(|| {
                    format!("changes[{i}].{name} must be an integer up to 2^53 or a decimal string")
                })
            };
            let (ns, sjid) = (field("ns")?, field("sjid")?);
            if sjid == 0 {
                return Err(format!("changes[{i}].sjid must be at least 1"));
            }
            Ok((ns, sjid))
        })
        .collect()
}

fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().filter(|&n| n <= MAX_JSON_INT),
        Value::String(s) => herald_proto::claims::parse_decimal(s),
        _ => None,
    }
}

fn is_ready(state: &AdminState) -> bool {
    state.shared.ready.load(Ordering::Relaxed)
        && !state.shared.draining.load(Ordering::Relaxed)
        && state.source.ready()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if is_ready(&state) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    metrics::gauge!("herald_connections", "transport" => "websocket")
        .set(state.shared.connections.load(Ordering::Relaxed) as f64);
    metrics::gauge!("herald_ready").set(f64::from(u8::from(is_ready(&state))));
    metrics::gauge!("herald_draining").set(f64::from(u8::from(
        state.shared.draining.load(Ordering::Relaxed),
    )));
    metrics::gauge!("herald_max_connections").set(state.max_connections as f64);
    if let Some((allocated, resident)) = crate::stats::heap() {
        metrics::gauge!("herald_heap_allocated_bytes").set(allocated as f64);
        metrics::gauge!("herald_heap_resident_bytes").set(resident as f64);
    }
    if let Some(rss) = crate::stats::rss_bytes() {
        metrics::gauge!("herald_process_resident_bytes").set(rss as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies() {
        assert_eq!(
            parse_publish(
                br#"{"changes":[{"ns":7,"sjid":42},{"ns":"18446744073709551615","sjid":"9"}]}"#
            ),
            Ok(vec![(7, 42), (u64::MAX, 9)])
        );
        assert_eq!(parse_publish(br#"{"changes":[]}"#), Ok(vec![]));
        for bad in [
            &br#"{"changes":[{"ns":7,"sjid":0}]}"#[..],
            br#"{"changes":[{"ns":7}]}"#,
            br#"{"changes":[{"ns":-1,"sjid":1}]}"#,
            br#"{"changes":[{"ns":1.5,"sjid":1}]}"#,
            br#"{"changes":[{"ns":9007199254740993,"sjid":1}]}"#,
            br#"{"changes":[{"ns":"x","sjid":1}]}"#,
            br#"{"changes":{}}"#,
            b"nope",
        ] {
            assert!(
                parse_publish(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
