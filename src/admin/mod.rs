//! The admin listener: `/metrics` (OpenMetrics text), `/healthz` and the accounts API
//! (`/v1/…`, [`api`]), served by axum on hyper with a current-thread tokio runtime on the
//! admin's own thread: a scrape or an API call never competes with an executor,
//! connections are served concurrently (a client trickling bytes holds only its own
//! connection), and every request has deadlines.

pub mod api;
pub mod cli;
mod dashboard;
pub mod ops;
pub mod scrape;
mod state;

pub use state::{AppState, Health};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use scrape::render;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A request head must arrive within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (keep-alive included) lasts at most this long.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;

/// Bind the admin address and serve it on a thread. Returns the bound address.
pub fn start(addr: SocketAddr, state: AppState) -> Result<SocketAddr, String> {
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
    std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || runtime.block_on(serve(listener, state)))
        .map_err(|e| format!("cannot start admin thread: {e}"))?;
    Ok(bound)
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .merge(api::routes())
        .merge(dashboard::routes())
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(api::BODY_LIMIT))
        .with_state(state)
}

/// `[admin] protect_metrics`: the token is asked for here too.
fn guarded(s: &AppState, headers: &HeaderMap) -> Result<(), ops::OpError> {
    let world = s.world.load();
    if !world.config.protect_metrics {
        return Ok(());
    }
    api::check_token(&world, headers)
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = guarded(&s, &headers) {
        return e.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(s.metrics.clone()),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = guarded(&s, &headers) {
        return e.into_response();
    }
    match s.health.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn serve(listener: std::net::TcpListener, state: AppState) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!("admin listener unusable");
        return;
    };
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: closed at once
        };
        let service = TowerToHyperService::new(app.clone().layer(Extension(api::Peer(peer))));
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
