//! The accounts API (`/v1/…`): JSON over HTTP on the admin listener, authenticated by the
//! bearer token of `[admin] api_token_file` (compared in constant time). Every change is
//! written to the store first, then applied to the running gateway at once (the change log
//! brings it to other processes' views too), and logged as one audit line: who, what, the
//! fields changed — never a password or a hash.
//!
//! Errors are JSON `{"error": "...", "field": "..."}`: 400 names the field, 401 without
//! the token, 404 for an unknown account or plan, 409 for one of the file (read-only),
//! 413 for a body over [`BODY_LIMIT`].

use super::ops::OpError;
use super::state::AppState;
use crate::accounts::store::AccountSource;
use crate::world::World;
use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// Largest request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Largest page of `GET /v1/accounts`.
pub(super) const MAX_PAGE: usize = 1000;

/// The client's address, set per admin connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

mod accounts;
mod plans;
mod requests;
mod usage;

pub(crate) use accounts::save_account;
pub(crate) use usage::{apply_adjustment, disconnect_account, usage_json};

use accounts::{delete_account, get_account, list_accounts, patch_account, put_account};
use plans::{delete_plan, get_plan, list_plans, patch_plan, put_plan};
use requests::{account_errors, get_request};
use usage::{disconnect, release, reset, top_up, usage};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/plans", get(list_plans))
        .route(
            "/v1/plans/{name}",
            get(get_plan)
                .put(put_plan)
                .patch(patch_plan)
                .delete(delete_plan),
        )
        .route("/v1/accounts", get(list_accounts))
        .route(
            "/v1/accounts/{name}",
            get(get_account)
                .put(put_account)
                .patch(patch_account)
                .delete(delete_account),
        )
        .route("/v1/accounts/{name}/usage", get(usage))
        .route("/v1/accounts/{name}/errors", get(account_errors))
        .route("/v1/requests/{id}", get(get_request))
        .route("/v1/accounts/{name}/top-up", post(top_up))
        .route("/v1/accounts/{name}/reset", post(reset))
        .route("/v1/accounts/{name}/disconnect", post(disconnect))
        .route("/v1/accounts/{name}/sessions/{id}", delete(release))
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        error(&self)
    }
}

pub(super) fn error(e: &OpError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({ "error": e.message });
    if let Some(f) = &e.field {
        body["field"] = json!(f);
    }
    let mut resp = (status, axum::Json(body)).into_response();
    if e.status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"tollgate\""),
        );
    }
    resp
}

pub(super) type Answer = Result<Response, OpError>;

pub(super) fn ok(status: StatusCode, v: Value) -> Answer {
    Ok((status, axum::Json(v)).into_response())
}

/// A request body within [`BODY_LIMIT`]; over it, 413 as JSON like every other error.
pub struct Body(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = OpError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, OpError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|r| OpError {
                status: r.status().as_u16(),
                message: r.body_text(),
                field: None,
            })
    }
}

/// A caller that showed the token: who it is, for the audit line.
pub struct Authorized {
    /// The client address, and the `X-Actor` it names itself with (if any).
    who: String,
}

impl Authorized {
    /// An operator acting through the dashboard from `peer`.
    pub(crate) fn dashboard(peer: &str) -> Authorized {
        Authorized {
            who: format!("dashboard@{peer}"),
        }
    }
}

/// Whether `headers` carry the configured token. `Err`: 404 when the API is off (no token
/// configured), 401 otherwise.
pub fn check_token(world: &World, headers: &HeaderMap) -> Result<(), OpError> {
    let Some(token) = &world.config.api_token else {
        return Err(OpError {
            status: 404,
            message: "the accounts API is off: set [admin] api_token_file".into(),
            field: None,
        });
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Digests of equal length, compared in constant time: neither the token's bytes nor
    // its length show in the time a wrong guess takes.
    let digest = |b: &[u8]| {
        use blake2::Digest;
        blake2::Blake2s256::digest(b)
    };
    if bool::from(digest(given.as_bytes()).ct_eq(&digest(token.0.as_bytes()))) {
        Ok(())
    } else {
        Err(OpError {
            status: 401,
            message: "a valid bearer token is required (Authorization: Bearer …)".into(),
            field: None,
        })
    }
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = OpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, OpError> {
        let world = state.world.load();
        check_token(&world, &parts.headers)?;
        let peer = parts
            .extensions
            .get::<Peer>()
            .map_or_else(|| "-".to_string(), |p| p.0.to_string());
        // The caller's own name for itself (a billing system's user), printable only.
        let actor: String = parts
            .headers
            .get("x-actor")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        let who = if actor.is_empty() {
            peer
        } else {
            format!("{actor}@{peer}")
        };
        Ok(Authorized { who })
    }
}

pub(super) fn audit(who: &Authorized, action: &str, target: &str, fields: &str) {
    tracing::info!(target: "tollgate::audit", who = %who.who, action, target, fields, "api change");
}

/// Parse a JSON body; the error names the field at fault.
pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, OpError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        OpError::bad(&field, inner.to_string())
    })
}

pub(super) fn store(
    state: &AppState,
) -> Result<parking_lot::MutexGuard<'_, Box<dyn AccountSource>>, OpError> {
    match &state.store {
        Some(s) => Ok(s.lock()),
        None => Err(OpError::store("no account store".into())),
    }
}
