//! The admin listener: `POST /v1/publish` (standalone mode), `POST /v1/disconnect`
//! (revocation), `/healthz`, `/readyz`, `/metrics`.

use crate::auth::Verifier;
use crate::journal::Journal;
use crate::lookup::Lookup;
use crate::revocation::{self, Revocation};
use crate::worker::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// Where publishes go (standalone mode only).
    pub journal: Option<Journal>,
    /// Latest SJIDs (for readiness of the upstream).
    pub lookup: Lookup,
    /// Readiness and counts.
    pub shared: Arc<Shared>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The connection cap (exported for alerts).
    pub max_connections: usize,
    /// Required bearer token for publish and disconnect, if any.
    pub token: Option<Arc<str>>,
    /// Token checks, with the revoked subjects.
    pub verifier: Arc<Verifier>,
    /// Distributed mode: the NATS connection revocations are published on, so every gateway
    /// acts on them.
    pub nats: Option<async_nats::Client>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(herald_proto::publish::PATH, post(publish))
        .route(DISCONNECT_PATH, post(disconnect))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(herald_proto::publish::MAX_BODY))
        .with_state(state)
}

fn error(status: StatusCode, name: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": name, "message": message.into()})),
    )
        .into_response()
}

/// The path of revocation (PROTOCOL.md C18).
pub const DISCONNECT_PATH: &str = "/v1/disconnect";

/// `None` if the request carries the admin bearer token (or none is configured), else the 401.
fn unauthorized(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let expected = state.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (given != Some(expected)).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    })
}

/// `POST /v1/disconnect {"sub": "...", "issued_before": unix_s?}`: refuses that subject's tokens
/// issued before the time (default: now) and closes its live sessions with ERROR(unauthorized),
/// on this gateway and, in distributed mode, on every gateway (over NATS).
async fn disconnect(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    let mut revocation = match Revocation::parse(&body) {
        Ok(r) => r,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "bad_request", msg),
    };
    // The time is fixed here, so every gateway refuses the same tokens.
    let before = state
        .verifier
        .revocations()
        .add(&revocation, crate::keys::unix_now());
    revocation.issued_before = Some(before);
    tracing::info!(sub = %revocation.sub, issued_before = before, "tokens revoked");
    let body = json!({ "sub": revocation.sub, "issued_before": before });
    if let Some(nats) = &state.nats {
        let payload = serde_json::to_vec(&revocation).unwrap_or_default();
        let sent = match nats.publish(revocation::SUBJECT, payload.into()).await {
            Ok(()) => nats.flush().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            let message = format!("revoked on this gateway only: NATS did not take it ({e})");
            return error(StatusCode::BAD_GATEWAY, "unavailable", message);
        }
    }
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

async fn publish(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    let Some(journal) = &state.journal else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this gateway follows relays over NATS; publish to the JetStream journal (herald-relay publish)",
        );
    };
    let changes = match herald_proto::publish::parse(&body) {
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

fn is_ready(state: &AdminState) -> bool {
    state.shared.ready.load(Ordering::Relaxed)
        && !state.shared.draining.load(Ordering::Relaxed)
        && state.lookup.ready()
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
