//! `/v1/plans`.

use super::{audit, ok, parse, store, Answer, Authorized, Body};
use crate::accounts::store::Change;
use crate::admin::ops::{self, OpError};
use crate::admin::ops::{PlanBody, Write};
use crate::admin::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};

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

pub(super) async fn list_plans(State(state): State<AppState>, _: Authorized) -> Answer {
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

pub(super) async fn get_plan(
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

pub(super) async fn put_plan(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_plan(state, who, name, body, Write::Put).await
}

pub(super) async fn patch_plan(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_plan(state, who, name, body, Write::Patch).await
}

pub(super) async fn write_plan(
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

pub(super) async fn delete_plan(
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
