//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use crate::metrics::{NAMESPACES, READY};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_core::latest::LatestTable;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use tokio::sync::watch;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// True once loaded and answering; false again while stopping.
    pub ready: watch::Receiver<bool>,
    /// For the namespaces gauge.
    pub table: Arc<LatestTable>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if *state.ready.borrow() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    metrics::gauge!(NAMESPACES).set(state.table.len() as f64);
    metrics::gauge!(READY).set(if *state.ready.borrow() { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
