//! An account's usage, top-up and reset, disconnect, and sticky-session release.

use super::{audit, ok, parse, store, Answer, Authorized, Body};
use crate::accounts::store::Change;
use crate::admin::ops::OpError;
use crate::admin::ops::SizeValue;
use crate::admin::state::AppState;
use crate::plan::ledger::Adjustment;
use crate::world::World;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

fn rfc3339(secs: i64) -> Value {
    match jiff::Timestamp::from_second(secs) {
        Ok(t) if secs != 0 => json!(t.to_string()),
        _ => Value::Null,
    }
}

/// An account's usage now, as the API reports it.
pub(crate) fn usage_json(world: &World, name: &str) -> Result<Value, OpError> {
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

pub(super) async fn usage(
    State(state): State<AppState>,
    _: Authorized,
    Path(name): Path<String>,
) -> Answer {
    let world = state.world.load();
    usage_json(&world, &name).and_then(|v| ok(StatusCode::OK, v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopUp {
    bytes: SizeValue,
}

pub(super) async fn top_up(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    let body: TopUp = parse(&body)?;
    let n = body.bytes.bytes("bytes")?;
    adjust(state, who, name, Adjustment::TopUp(n))
}

pub(super) async fn reset(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
) -> Answer {
    adjust(state, who, name, Adjustment::Reset)
}

/// Apply an adjustment and make it durable before answering (a crash right after a 200
/// never loses a paid top-up).
fn adjust(state: AppState, who: Authorized, name: String, adj: Adjustment) -> Answer {
    let world = state.world.load();
    apply_adjustment(&world, &who, &name, adj)?;
    usage_json(&world, &name).and_then(|v| ok(StatusCode::OK, v))
}

/// Top up or reset an account, durably, and audit it (the API and the dashboard).
pub(crate) fn apply_adjustment(
    world: &World,
    who: &Authorized,
    name: &str,
    adj: Adjustment,
) -> Result<(), OpError> {
    let name = name.to_owned();
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
    audit(who, action, &name, &fields);
    Ok(())
}

/// Cut the account's live connections on every core (each acts at its next tick, within
/// a second). 202: the cut is under way; `threads_active` is the count before it.
pub(super) async fn disconnect(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
) -> Answer {
    let active = disconnect_account(&state, &who, &name)?;
    ok(
        StatusCode::ACCEPTED,
        json!({ "account": name, "threads_active": active }),
    )
}

/// Cut an account's live connections on every core and node (the API and the dashboard);
/// returns its connections on this node before the cut.
pub(crate) fn disconnect_account(
    state: &AppState,
    who: &Authorized,
    name: &str,
) -> Result<u32, OpError> {
    let world = state.world.load();
    let active = world.ledger.disconnect(name);
    if active.is_none() && world.plan_of(name).is_none() {
        return Err(OpError::not_found("account", name));
    }
    if world.config.cluster.is_some() {
        // The other nodes cut theirs when they read it from the change log.
        store(state)?
            .note(&Change::Disconnect(name.to_owned()))
            .map_err(OpError::store)?;
    }
    audit(who, "account.disconnect", name, "");
    Ok(active.unwrap_or(0))
}

/// Forget a sticky session: the account's next connection with that session id gets a
/// fresh exit.
pub(super) async fn release(
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
