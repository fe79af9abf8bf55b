//! The support trail: `GET /v1/requests/{id}` and `GET /v1/accounts/{name}/errors`.

use super::{ok, Answer, Authorized};
use crate::admin::ops::OpError;
use crate::admin::state::AppState;
use crate::support::{ErrorRecord, TrailStore};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

fn trail(state: &AppState) -> Result<parking_lot::MutexGuard<'_, Box<dyn TrailStore>>, OpError> {
    match &state.trail {
        Some(t) => Ok(t.lock()),
        None => Err(OpError::store("no error records kept".into())),
    }
}

fn record_json(r: &ErrorRecord) -> Value {
    let at =
        jiff::Timestamp::from_millisecond(r.at_ms).map_or(Value::Null, |t| json!(t.to_string()));
    json!({
        "request_id": r.id,
        "at": at,
        "account": r.account,
        "proto": r.proto,
        "code": r.code,
        "error": r.error,
        "body": r.body,
        "target": r.target,
        "peer": r.peer,
        "exit": r.exit,
        "network": r.network,
    })
}

/// One refusal by the request id the client saw (`X-Request-Id`, or the access line's).
pub(super) async fn get_request(
    State(state): State<AppState>,
    _: Authorized,
    Path(id): Path<String>,
) -> Answer {
    let found = trail(&state)?.get(&id).map_err(OpError::store)?;
    match found {
        Some(r) => ok(StatusCode::OK, record_json(&r)),
        None => Err(OpError::not_found("request", &id)),
    }
}

#[derive(Deserialize)]
pub(super) struct Range {
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

fn millis(field: &str, v: &Option<String>, default: i64) -> Result<i64, OpError> {
    match v {
        None => Ok(default),
        Some(t) => crate::config::parse_expires(t)
            .map(|ts| ts.as_millisecond())
            .map_err(|e| OpError::bad(field, e)),
    }
}

/// An account's refusals from `since` to `until` (RFC 3339; the last day by default),
/// newest first, at most `limit` (100 by default, 1000 at most).
pub(super) async fn account_errors(
    State(state): State<AppState>,
    _: Authorized,
    Path(name): Path<String>,
    Query(range): Query<Range>,
) -> Answer {
    let world = state.world.load();
    if world.plan_of(&name).is_none() {
        return Err(OpError::not_found("account", &name));
    }
    let now = crate::util::wall_now().as_millisecond();
    let since = millis("since", &range.since, now - 86_400_000)?;
    let until = millis("until", &range.until, now)?;
    let limit = range.limit.unwrap_or(100).clamp(1, super::MAX_PAGE);
    let rows = trail(&state)?
        .by_account(&name, since, until, limit)
        .map_err(OpError::store)?;
    let errors: Vec<Value> = rows.iter().map(record_json).collect();
    ok(StatusCode::OK, json!({ "account": name, "errors": errors }))
}
