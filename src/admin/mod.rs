//! The admin listener: `/metrics` (OpenMetrics text) and `/healthz`, served by axum on
//! hyper with a current-thread tokio runtime on the admin's own thread: a scrape never
//! competes with an executor, connections are served concurrently (a client trickling
//! bytes holds only its own connection), and every request has deadlines.

pub mod scrape;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use scrape::{render, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What `/healthz` consults.
pub trait Health: Send + Sync {
    /// `Ok` while every executor serves; `Err(reason)` while draining or when one stalls.
    fn check(&self) -> Result<(), String>;
}

/// A request head must arrive within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (keep-alive included) lasts at most this long.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;

#[derive(Clone)]
struct State {
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
}

/// Bind the admin address and serve it on a thread. Returns the bound address.
pub fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("[admin] listen = \"{addr}\": {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("[admin] listen = \"{addr}\": {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the admin runtime: {e}"))?;
    let state = State { metrics, health };
    std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || runtime.block_on(serve(listener, state)))
        .map_err(|e| format!("cannot start admin thread: {e}"))?;
    Ok(bound)
}

fn router(state: State) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

async fn metrics(axum::extract::State(s): axum::extract::State<State>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(s.metrics.clone()),
    )
}

async fn healthz(axum::extract::State(s): axum::extract::State<State>) -> impl IntoResponse {
    match s.health.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn serve(listener: std::net::TcpListener, state: State) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!("admin listener unusable");
        return;
    };
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: closed at once
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(permit);
        });
    }
}
