//! `GET /metrics`: the Prometheus scrape, the recorder's metrics and the gauges the service
//! reads now (see [`crate::metrics`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::service::Core;

pub async fn scrape(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    let Some(handle) = crate::metrics::install() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "another metrics recorder is installed"));
    };
    let now = core.scrape().await?;
    let text = crate::metrics::render(handle, &now);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
