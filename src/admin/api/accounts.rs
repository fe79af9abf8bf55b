//! `/v1/accounts` and `/v1/accounts/{name}`.

use super::{audit, ok, parse, store, Answer, Authorized, Body, MAX_PAGE};
use crate::accounts::store::{AccountRow, Change};
use crate::admin::ops::{self, OpError};
use crate::admin::ops::{AccountBody, Write};
use crate::admin::state::AppState;
use crate::world::World;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

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

pub(super) async fn get_account(
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
pub(super) struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

/// Accounts by name, the file's and the store's together: `after` the last name of the
/// previous page, at most `limit` (100 by default, 1000 at most); `next` is the `after`
/// of the next page (`null` on the last).
pub(super) async fn list_accounts(
    State(state): State<AppState>,
    _: Authorized,
    Query(page): Query<Page>,
) -> Answer {
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let after = page.after.unwrap_or_default();
    let world = state.world.load();
    let (page, next) = ops::list_page(&world.config, &mut **store(&state)?, "", &after, limit)?;
    let accounts: Vec<Value> = page
        .iter()
        .map(|l| match l {
            ops::Listed::File(a) => file_account_json(&world, a),
            ops::Listed::Store(r) => row_json(r),
        })
        .collect();
    ok(
        StatusCode::OK,
        json!({ "accounts": accounts, "next": next }),
    )
}

pub(super) async fn put_account(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_account(state, who, name, body, Write::Put).await
}

pub(super) async fn patch_account(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    write_account(state, who, name, body, Write::Patch).await
}

pub(super) async fn write_account(
    state: AppState,
    who: Authorized,
    name: String,
    body: Bytes,
    how: Write,
) -> Answer {
    let body: AccountBody = parse(&body)?;
    let (row, created) = save_account(&state, &who, &name, body, how).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, row_json(&row))
}

/// Create, replace or change an account from `body` (the API's PUT/PATCH and the
/// dashboard's forms): checked, the password hashed off the event loop, written to the
/// store, applied to the running gateway, audited. Returns the row and whether it is new.
pub(crate) async fn save_account(
    state: &AppState,
    who: &Authorized,
    name: &str,
    mut body: AccountBody,
    how: Write,
) -> Result<(AccountRow, bool), OpError> {
    {
        // Cheap refusals before the password is hashed.
        let world = state.world.load();
        crate::config::check_account_name(name).map_err(|e| OpError::bad("name", e))?;
        ops::account_writable(&world.config, name)?;
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
        let mut st = store(state)?;
        let (row, created) = ops::account_row(&world.config, &mut **st, name, &body, hashed, how)?;
        st.put(&row).map_err(OpError::store)?;
        world
            .apply(
                &mut **st,
                &state.sessions,
                &Change::Account(name.to_owned()),
            )
            .map_err(OpError::store)?;
        (row, created)
    };
    audit(
        who,
        if created {
            "account.create"
        } else {
            "account.update"
        },
        name,
        &fields,
    );
    Ok((row, created))
}

#[derive(Deserialize)]
pub(super) struct DeleteOptions {
    /// Also cut the account's live connections.
    #[serde(default)]
    disconnect: bool,
}

pub(super) async fn delete_account(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Query(opts): Query<DeleteOptions>,
) -> Answer {
    let world = state.world.load();
    ops::account_writable(&world.config, &name)?;
    let plan = world.plan_of(&name);
    {
        let mut st = store(&state)?;
        if !st.delete(&name).map_err(OpError::store)? {
            return Err(OpError::not_found("account", &name));
        }
        world
            .apply(&mut **st, &state.sessions, &Change::Account(name.clone()))
            .map_err(OpError::store)?;
    }
    // On one node the stored usage goes with the account (the ledger forgets it); on a
    // cluster it lives in Redis by name, and goes there.
    if let (Some(c), Some(plan)) = (&world.config.cluster, plan) {
        let roll = crate::cluster::usage::Roll::of(&plan);
        crate::cluster::usage::forget(c, &name, roll).map_err(OpError::store)?;
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
