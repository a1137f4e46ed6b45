//! Serving the API over TCP with the limits a published deployment needs: a deadline for a
//! request's headers (a slow client cannot hold a connection forever), deadlines for bodies and
//! whole requests, a cap on requests in flight, and a graceful stop. axum's own `serve` sets no
//! header deadline, so connections are served here with hyper-util directly.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use crate::service::Core;

/// The deadlines and caps of the API's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a connection's first byte (or the end of the previous request) to the end of a
    /// request's headers.
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_read: Duration::from_secs(10) }
    }
}

/// Serves the API on `listener` until `shutdown` resolves; requests under way then finish (for
/// at most 5 s) and idle connections close.
pub async fn serve_with(
    core: Arc<Core>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> anyhow::Result<()> {
    tracing::info!("HTTP API listening on http://{}", listener.local_addr()?);
    let app = super::router(core);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "could not accept an API connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                req.map(axum::body::Body::new)
            },
        );
        let conn =
            builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await.is_err() {
        tracing::debug!("API connections still open after 5 s; closing them");
    }
    Ok(())
}
