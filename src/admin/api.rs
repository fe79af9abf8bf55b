//! The accounts API (`/v1/…`): JSON over HTTP on the admin listener, authenticated by the
//! bearer token of `[admin] api_token_file` (compared in constant time). Every change is
//! written to the store first, then applied to the running gateway at once (the change log
//! brings it to other processes' views too), and logged as one audit line: who, what, the
//! fields changed — never a password or a hash.
//!
//! Errors are JSON `{"error": "...", "field": "..."}`: 400 names the field, 401 without
//! the token, 404 for an unknown account or plan, 409 for one of the file (read-only),
//! 413 for a body over [`BODY_LIMIT`].

use super::ops::{self, AccountBody, OpError, PlanBody, SizeValue, Write};
use super::AppState;
use crate::accounts::store::{AccountRow, AccountSource, Change};
use crate::plan::ledger::Adjustment;
use crate::world::World;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// Largest request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Largest page of `GET /v1/accounts`.
const MAX_PAGE: usize = 1000;

/// The client's address, set per admin connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

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

fn error(e: &OpError) -> Response {
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

type Answer = Result<Response, OpError>;

fn ok(status: StatusCode, v: Value) -> Answer {
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

fn audit(who: &Authorized, action: &str, target: &str, fields: &str) {
    tracing::info!(target: "tollgate::audit", who = %who.who, action, target, fields, "api change");
}

/// Parse a JSON body; the error names the field at fault.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, OpError> {
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

fn store(state: &AppState) -> Result<parking_lot::MutexGuard<'_, Box<dyn AccountSource>>, OpError> {
    match &state.store {
        Some(s) => Ok(s.lock()),
        None => Err(OpError::store("no account store".into())),
    }
}

// ---------------------------------------------------------------- plans

fn plan_json(p: &crate::config::Plan, source: &str) -> Value {
    json!({
        "name": p.name,
        "bandwidth": p.bandwidth,
        "threads": p.threads,
        "speed": p.speed,
        "period": p.period.as_str(),
        "source": source,
        "read_only": source == "config",
    })
}

async fn list_plans(State(state): State<AppState>, _: Authorized) -> Answer {
    let world = state.world.load();
    let mut plans: Vec<Value> = world
        .config
        .plans
        .iter()
        .map(|p| plan_json(p, "config"))
        .collect();
    plans.extend(world.accounts.plans().iter().map(|p| plan_json(p, "api")));
    ok(StatusCode::OK, json!({ "plans": plans }))
}

async fn get_plan(
    State(state): State<AppState>,
    _: Authorized,
    Path(name): Path<String>,
) -> Answer {
    let world = state.world.load();
    if let Some(p) = world.config.plan_named(&name) {
        return ok(StatusCode::OK, plan_json(p, "config"));
    }
    match world.accounts.plan(&name) {
        Some(p) => ok(StatusCode::OK, plan_json(&p, "api")),
        None => Err(OpError::not_found("plan", &name)),
    }
}

async fn put_plan(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_plan(state, who, name, body, Write::Put).await
}

async fn patch_plan(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_plan(state, who, name, body, Write::Patch).await
}

async fn write_plan(
    state: AppState,
    who: Authorized,
    name: String,
    body: Bytes,
    how: Write,
) -> Answer {
    let body: PlanBody = parse(&body)?;
    let world = state.world.load();
    let created = {
        let mut st = store(&state)?;
        let (row, created) = ops::plan_row(&world.config, &mut **st, &name, &body, how)?;
        st.put_plan(&row).map_err(OpError::store)?;
        world
            .apply(&mut **st, &state.sessions, &Change::Plan(name.clone()))
            .map_err(OpError::store)?;
        created
    };
    audit(
        &who,
        if created {
            "plan.create"
        } else {
            "plan.update"
        },
        &name,
        &body.fields(),
    );
    let plan = world
        .accounts
        .plan(&name)
        .ok_or_else(|| OpError::not_found("plan", &name))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, plan_json(&plan, "api"))
}

async fn delete_plan(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
) -> Answer {
    let world = state.world.load();
    {
        let mut st = store(&state)?;
        ops::plan_deletable(&world.config, &mut **st, &name)?;
        if !st.delete_plan(&name).map_err(OpError::store)? {
            return Err(OpError::not_found("plan", &name));
        }
        world
            .apply(&mut **st, &state.sessions, &Change::Plan(name.clone()))
            .map_err(OpError::store)?;
    }
    audit(&who, "plan.delete", &name, "");
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- accounts

fn file_account_json(world: &World, a: &crate::config::Account) -> Value {
    let c = &world.config;
    let allow: Vec<String> = c
        .ip_rules
        .iter()
        .filter(|(_, n)| *n == a.name)
        .map(|(net, _)| net.to_string())
        .collect();
    json!({
        "name": a.name,
        "plan": c.plans.get(a.plan).map(|p| p.name.as_str()),
        "networks": a.networks.iter().filter_map(|i| c.networks.get(*i)).map(|n| n.name.as_str()).collect::<Vec<_>>(),
        "allow_ips": allow,
        "enabled": true,
        "expires": a.expires.map(|t| t.to_string()),
        "source": "config",
        "read_only": true,
    })
}

fn row_json(r: &AccountRow) -> Value {
    json!({
        "name": r.name,
        "plan": r.plan,
        "networks": r.networks,
        "allow_ips": r.allow_ips,
        "enabled": r.enabled,
        "expires": r.expires,
        "source": "api",
        "read_only": false,
    })
}

fn record_json(r: &crate::accounts::Record) -> Value {
    json!({
        "name": &*r.name,
        "plan": &*r.plan,
        "networks": r.networks.iter().map(|n| &**n).collect::<Vec<_>>(),
        "allow_ips": r.allow_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "enabled": r.enabled,
        "expires": r.expires.map(|t| t.to_string()),
        "source": "api",
        "read_only": false,
    })
}

async fn get_account(
    State(state): State<AppState>,
    _: Authorized,
    Path(name): Path<String>,
) -> Answer {
    let world = state.world.load();
    if let Some(a) = world.config.accounts.get(&name) {
        return ok(StatusCode::OK, file_account_json(&world, a));
    }
    match world.accounts.get(&name) {
        Some(r) => ok(StatusCode::OK, record_json(&r)),
        None => Err(OpError::not_found("account", &name)),
    }
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

/// Accounts by name, the file's and the store's together: `after` the last name of the
/// previous page, at most `limit` (100 by default, 1000 at most); `next` is the `after`
/// of the next page (`null` on the last).
async fn list_accounts(
    State(state): State<AppState>,
    _: Authorized,
    Query(page): Query<Page>,
) -> Answer {
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let after = page.after.unwrap_or_default();
    let world = state.world.load();
    let mut file: Vec<&crate::config::Account> = world
        .config
        .accounts
        .values()
        .filter(|a| a.name.as_str() > after.as_str())
        .collect();
    file.sort_by(|a, b| a.name.cmp(&b.name));
    file.truncate(limit + 1);
    let stored = store(&state)?
        .list(&after, limit + 1)
        .map_err(OpError::store)?;
    // Merge the two sorted lists.
    let mut out: Vec<(String, Value)> = Vec::with_capacity(limit + 1);
    let (mut i, mut j) = (0, 0);
    while out.len() <= limit && (i < file.len() || j < stored.len()) {
        let take_file = match (file.get(i), stored.get(j)) {
            (Some(f), Some(s)) => f.name <= s.name,
            (Some(_), None) => true,
            _ => false,
        };
        if take_file {
            out.push((file[i].name.clone(), file_account_json(&world, file[i])));
            i += 1;
        } else {
            // A store account shadowed by the file's is listed once, as the file's.
            if !world.config.accounts.contains_key(&stored[j].name) {
                out.push((stored[j].name.clone(), row_json(&stored[j])));
            }
            j += 1;
        }
    }
    let more = out.len() > limit;
    out.truncate(limit);
    let next = if more {
        out.last().map(|(n, _)| n.clone())
    } else {
        None
    };
    let accounts: Vec<Value> = out.into_iter().map(|(_, v)| v).collect();
    ok(
        StatusCode::OK,
        json!({ "accounts": accounts, "next": next }),
    )
}

async fn put_account(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_account(state, who, name, body, Write::Put).await
}

async fn patch_account(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_account(state, who, name, body, Write::Patch).await
}

async fn write_account(
    state: AppState,
    who: Authorized,
    name: String,
    body: Bytes,
    how: Write,
) -> Answer {
    let mut body: AccountBody = parse(&body)?;
    {
        // Cheap refusals before the password is hashed.
        let world = state.world.load();
        crate::config::check_account_name(&name).map_err(|e| OpError::bad("name", e))?;
        ops::account_writable(&world.config, &name)?;
    }
    let hashed = match (body.password.take(), body.password_hash.take()) {
        (Some(_), Some(_)) => {
            return Err(OpError::bad(
                "password_hash",
                "give either password or password_hash, not both",
            ))
        }
        (None, Some(h)) => {
            crate::config::check_password_hash(&h).map_err(|e| OpError::bad("password_hash", e))?;
            Some(h)
        }
        (None, None) => None,
        // argon2id costs tens of milliseconds: off the admin's event loop.
        (Some(p), None) => Some(
            tokio::task::spawn_blocking(move || ops::hash_password(&p))
                .await
                .map_err(|_| OpError::store("hashing failed".into()))??,
        ),
    };
    let fields = {
        let mut f = body.fields();
        if hashed.is_some() {
            f = if f.is_empty() {
                "password".into()
            } else {
                format!("password,{f}")
            };
        }
        f
    };
    let world = state.world.load();
    let (row, created) = {
        let mut st = store(&state)?;
        let (row, created) = ops::account_row(&world.config, &mut **st, &name, &body, hashed, how)?;
        st.put(&row).map_err(OpError::store)?;
        world
            .apply(&mut **st, &state.sessions, &Change::Account(name.clone()))
            .map_err(OpError::store)?;
        (row, created)
    };
    audit(
        &who,
        if created {
            "account.create"
        } else {
            "account.update"
        },
        &name,
        &fields,
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, row_json(&row))
}

#[derive(Deserialize)]
struct DeleteOptions {
    /// Also cut the account's live connections.
    #[serde(default)]
    disconnect: bool,
}

async fn delete_account(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Query(opts): Query<DeleteOptions>,
) -> Answer {
    let world = state.world.load();
    ops::account_writable(&world.config, &name)?;
    {
        let mut st = store(&state)?;
        if !st.delete(&name).map_err(OpError::store)? {
            return Err(OpError::not_found("account", &name));
        }
        world
            .apply(&mut **st, &state.sessions, &Change::Account(name.clone()))
            .map_err(OpError::store)?;
    }
    if opts.disconnect {
        world.ledger.disconnect(&name);
    }
    audit(
        &who,
        "account.delete",
        &name,
        if opts.disconnect { "disconnect" } else { "" },
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- usage

fn rfc3339(secs: i64) -> Value {
    match jiff::Timestamp::from_second(secs) {
        Ok(t) if secs != 0 => json!(t.to_string()),
        _ => Value::Null,
    }
}

/// An account's usage now, as the API reports it.
fn usage_json(world: &World, name: &str) -> Result<Value, OpError> {
    let plan = world
        .plan_of(name)
        .ok_or_else(|| OpError::not_found("account", name))?;
    use crate::cluster::usage::Roll;
    let (used, credit, active, start, past) = match &world.config.cluster {
        Some(c) => {
            let all = crate::cluster::usage::read(c, &[(name, Roll::of(&plan))])
                .map_err(OpError::store)?;
            let s = all.get(name).copied().unwrap_or_default();
            let past = crate::cluster::usage::history(c, name).map_err(OpError::store)?;
            (s.used, s.credit, s.active, s.period_start, past)
        }
        None => {
            let state = world
                .ledger
                .attach(name, &plan)
                .map_err(|e| OpError::store(e.to_string()))?;
            let past = world.ledger.history(name).map_err(OpError::store)?;
            (
                state.used(),
                state.credit(),
                state.active(),
                state.period_start(),
                past,
            )
        }
    };
    let limit = plan.bandwidth.saturating_add(credit);
    let history: Vec<Value> = past
        .into_iter()
        .map(|(s, used)| {
            json!({
                "start": rfc3339(s),
                "end": rfc3339(plan.period.next_start(s)),
                "used": used,
            })
        })
        .collect();
    Ok(json!({
        "account": name,
        "plan": plan.name,
        "used": used,
        "credit": credit,
        "limit": limit,
        "remaining": limit.saturating_sub(used),
        "threads_active": active,
        "threads_limit": plan.threads,
        "speed": plan.speed,
        "period": {
            "kind": plan.period.as_str(),
            "start": rfc3339(start),
            "end": rfc3339(plan.period.next_start(start)),
        },
        "history": history,
    }))
}

async fn usage(State(state): State<AppState>, _: Authorized, Path(name): Path<String>) -> Answer {
    let world = state.world.load();
    usage_json(&world, &name).and_then(|v| ok(StatusCode::OK, v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUp {
    bytes: SizeValue,
}

async fn top_up(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    let body: TopUp = parse(&body)?;
    let n = body.bytes.bytes("bytes")?;
    adjust(state, who, name, Adjustment::TopUp(n))
}

async fn reset(State(state): State<AppState>, who: Authorized, Path(name): Path<String>) -> Answer {
    adjust(state, who, name, Adjustment::Reset)
}

/// Apply an adjustment and make it durable before answering (a crash right after a 200
/// never loses a paid top-up).
fn adjust(state: AppState, who: Authorized, name: String, adj: Adjustment) -> Answer {
    let world = state.world.load();
    let plan = world
        .plan_of(&name)
        .ok_or_else(|| OpError::not_found("account", &name))?;
    match &world.config.cluster {
        Some(c) => {
            let roll = crate::cluster::usage::Roll::of(&plan);
            crate::cluster::usage::adjust(c, &name, adj, roll).map_err(OpError::store)?;
        }
        None => {
            let s = world
                .ledger
                .attach(&name, &plan)
                .map_err(|e| OpError::store(e.to_string()))?;
            s.adjust(adj);
            world.ledger.flush().map_err(OpError::store)?;
        }
    }
    let (action, fields) = match adj {
        Adjustment::TopUp(n) => ("usage.top-up", format!("bytes={n}")),
        Adjustment::Reset => ("usage.reset", String::new()),
    };
    audit(&who, action, &name, &fields);
    usage_json(&world, &name).and_then(|v| ok(StatusCode::OK, v))
}

/// Cut the account's live connections on every core (each acts at its next tick, within
/// a second). 202: the cut is under way; `threads_active` is the count before it.
async fn disconnect(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
) -> Answer {
    let world = state.world.load();
    let active = world.ledger.disconnect(&name);
    if active.is_none() && world.plan_of(&name).is_none() {
        return Err(OpError::not_found("account", &name));
    }
    if world.config.cluster.is_some() {
        // The other nodes cut theirs when they read it from the change log.
        store(&state)?
            .note(&Change::Disconnect(name.clone()))
            .map_err(OpError::store)?;
    }
    let active = active.unwrap_or(0);
    audit(&who, "account.disconnect", &name, "");
    ok(
        StatusCode::ACCEPTED,
        json!({ "account": name, "threads_active": active }),
    )
}

/// Forget a sticky session: the account's next connection with that session id gets a
/// fresh exit.
async fn release(
    State(state): State<AppState>,
    who: Authorized,
    Path((name, id)): Path<(String, String)>,
) -> Answer {
    let world = state.world.load();
    if world.plan_of(&name).is_none() {
        return Err(OpError::not_found("account", &name));
    }
    let mut removed = state.sessions.release(&name, &id);
    if world.config.cluster.is_some() {
        let mut st = store(&state)?;
        removed += st.release_sessions(&name, &id).map_err(OpError::store)?;
        st.note(&Change::Release {
            account: name.clone(),
            session: id.clone(),
        })
        .map_err(OpError::store)?;
    }
    if removed == 0 {
        return Err(OpError {
            status: 404,
            message: format!("account {name:?} has no live session {id:?}"),
            field: None,
        });
    }
    audit(&who, "session.release", &name, &format!("session={id}"));
    Ok(StatusCode::NO_CONTENT.into_response())
}
