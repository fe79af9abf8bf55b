//! The dashboard's pages: what each one reads and renders.

use super::{
    chart, customer, error_page, html, login_page, me_cookie, operator, pages, redirect, render,
};
use crate::admin::api::{usage_json, Peer};
use crate::admin::ops::{self, OpError};
use crate::admin::state::AppState;
use crate::world::World;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::Value;

/// Accounts per page of the list.
const PAGE: usize = 50;

fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn period_text(u: &Value) -> String {
    let p = &u["period"];
    match p["kind"].as_str() {
        Some("none") | None => "none".into(),
        Some(k) => format!(
            "{k}: {} to {}",
            p["start"].as_str().unwrap_or("?"),
            p["end"].as_str().unwrap_or("?")
        ),
    }
}

/// An account's recent refusals, newest first.
fn recent_errors(state: &AppState, name: &str) -> Vec<pages::ErrorRow> {
    let Some(trail) = &state.trail else {
        return Vec::new();
    };
    let now = crate::util::wall_now().as_millisecond();
    trail
        .lock()
        .by_account(name, now - 7 * 86_400_000, now, 20)
        .unwrap_or_default()
        .into_iter()
        .map(|r| pages::ErrorRow {
            at: when(r.at_ms),
            id: r.id,
            code: r.code,
            error: r.error,
            target: r.target.unwrap_or_default(),
        })
        .collect()
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: String,
}

/// `/`: the operator's account list (searchable by name prefix, paged by name), or the
/// login form.
pub(super) async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if operator(&state, &headers).is_none() {
        return login_page("", StatusCode::OK);
    }
    let world = state.world.load();
    let page = match &state.store {
        Some(store) => {
            let mut st = store.lock();
            ops::list_page(&world.config, &mut **st, q.q.trim(), &q.after, PAGE).map(|(l, next)| {
                (
                    l.iter().map(|x| x.name().to_owned()).collect::<Vec<_>>(),
                    next,
                )
            })
        }
        None => Err(OpError::store("no account store".into())),
    };
    let (names, next) = match page {
        Ok(p) => p,
        Err(e) => return error_page(&e, true),
    };
    let rows = names.into_iter().map(|name| row(&world, name)).collect();
    let body = pages::Accounts { q: q.q, rows, next };
    html(
        StatusCode::OK,
        pages::page("Accounts", true, false, &render(&body)),
    )
}

/// One line of the list, without attaching the account (its stored row when idle).
fn row(world: &World, name: String) -> pages::AccountRow {
    let plan = world.plan_of(&name);
    let (used, credit, active) = match &world.config.cluster {
        None => world
            .ledger
            .peek(&name)
            .map(|(u, c, a, _)| (u, c, a))
            .unwrap_or_default(),
        // A cluster's figures are in Redis: one read per listed account.
        Some(c) => plan
            .as_ref()
            .and_then(|p| {
                crate::cluster::usage::read(c, &[(&name, crate::cluster::usage::Roll::of(p))]).ok()
            })
            .and_then(|m| m.get(&name).copied())
            .map(|s| (s.used, s.credit, s.active))
            .unwrap_or_default(),
    };
    let limit = plan
        .as_ref()
        .map_or(0, |p| p.bandwidth.saturating_add(credit));
    pages::AccountRow {
        plan: plan
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_else(|| "(undefined)".into()),
        used: chart::human(used),
        used_bytes: used,
        remaining: chart::human(limit.saturating_sub(used)),
        threads: format!("{active} / {}", plan.as_ref().map_or(0, |p| p.threads)),
        period: plan
            .as_ref()
            .map_or("none", |p| p.period.as_str())
            .to_owned(),
        source: if world.config.accounts.contains_key(&name) {
            "config"
        } else {
            "api"
        },
        name,
    }
}

#[derive(Deserialize)]
pub(super) struct Flash {
    #[serde(default)]
    flash: String,
}

/// `/accounts/{name}`: usage, its chart, sessions, recent errors and the actions.
pub(super) async fn account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(f): Query<Flash>,
) -> Response {
    let Some(session) = operator(&state, &headers) else {
        return login_page("", StatusCode::UNAUTHORIZED);
    };
    let world = state.world.load();
    let u = match usage_json(&world, &name) {
        Ok(u) => u,
        Err(e) => return error_page(&e, true),
    };
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let now_hour = crate::util::wall_now().as_second().div_euclid(3600) * 3600;
    let buckets = world
        .ledger
        .hourly(&name, now_hour - 47 * 3600)
        .unwrap_or_default();
    let (enabled, read_only) = match world.config.accounts.get(&name) {
        Some(_) => (true, true),
        None => (world.accounts.get(&name).is_none_or(|r| r.enabled), false),
    };
    let mut plans: Vec<String> = world.config.plans.iter().map(|p| p.name.clone()).collect();
    plans.extend(world.accounts.plans().iter().map(|p| p.name.clone()));
    let body = pages::Account {
        flash: f.flash,
        plan: u["plan"].as_str().unwrap_or("").to_owned(),
        plans,
        used: chart::human(n("used")),
        used_bytes: n("used"),
        credit: chart::human(n("credit")),
        credit_bytes: n("credit"),
        remaining: chart::human(n("remaining")),
        active: n("threads_active") as u32,
        threads: n("threads_limit") as u32,
        sessions: state.sessions.count_for(&name),
        period: period_text(&u),
        enabled,
        read_only,
        chart: chart::hourly_bars(&buckets, now_hour, 48),
        csrf: super::csrf(&session),
        errors: recent_errors(&state, &name),
        name,
    };
    html(
        StatusCode::OK,
        pages::page("Account", true, false, &render(&body)),
    )
}

/// `/exits`: health of every exit (benched until when, failures, connects per second)
/// and, on a cluster, the nodes and their heartbeat.
pub(super) async fn exits(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if operator(&state, &headers).is_none() {
        return login_page("", StatusCode::UNAUTHORIZED);
    }
    let world = state.world.load();
    let counts = state.metrics.exit_connects();
    let now = std::time::Instant::now();
    // Connects per second since the last look at this page.
    let mut last = state.exit_rates.lock();
    let dt = last.0.map(|t| now.duration_since(t).as_secs_f64());
    let mut rows = Vec::new();
    for (i, e) in world.config.exits.iter().enumerate() {
        let h = world.exits.health(i);
        let (attempts, failed) = counts.get(&e.name).copied().unwrap_or_default();
        let per_second = match (dt, last.1.get(&e.name)) {
            (Some(dt), Some(prev)) if dt > 0.0 => {
                format!("{:.1}", (attempts.saturating_sub(*prev)) as f64 / dt)
            }
            _ => "—".into(),
        };
        let state_text = match h.benched_for(now) {
            None => "usable".to_string(),
            Some(d) if d == std::time::Duration::MAX => "left out: its source is not local".into(),
            Some(d) => format!("benched for {} s more", d.as_secs() + 1),
        };
        let geo: Vec<&str> = [&e.country, &e.state, &e.city]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        rows.push(pages::ExitRow {
            name: e.name.clone(),
            network: world
                .config
                .networks
                .get(e.network)
                .map(|n| n.name.clone())
                .unwrap_or_default(),
            geo: if geo.is_empty() {
                "—".into()
            } else {
                geo.join(" / ")
            },
            state: state_text,
            failures: h.failures(),
            attempts,
            failed,
            per_second,
        });
    }
    *last = (
        Some(now),
        counts.into_iter().map(|(k, (a, _))| (k, a)).collect(),
    );
    drop(last);
    let nodes = match &world.config.cluster {
        Some(c) => crate::cluster::usage::nodes(c)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, until_ms)| pages::NodeRow {
                name,
                heartbeat: when(until_ms),
            })
            .collect(),
        None => Vec::new(),
    };
    let body = pages::Exits {
        exits: rows,
        cluster: world.config.cluster.is_some(),
        nodes,
    };
    html(
        StatusCode::OK,
        pages::page("Exits", true, false, &render(&body)),
    )
}

#[derive(Deserialize, Default)]
pub(super) struct Builder {
    #[serde(default)]
    country: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    ttl: String,
}

/// `/me`: the customer's own usage, threads, errors and the proxy-string builder.
pub(super) async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(b): Query<Builder>,
) -> Response {
    if state.world.load().config.api_token.is_none() {
        return me_login_page(
            "the dashboard is off: set [admin] api_token_file",
            StatusCode::NOT_FOUND,
        );
    }
    let Some(name) = customer(&state, &headers) else {
        return me_login_page("", StatusCode::OK);
    };
    let world = state.world.load();
    let u = match usage_json(&world, &name) {
        Ok(u) => u,
        Err(e) => return error_page(&e, false),
    };
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let page = super::actions::builder(
        &world,
        &name,
        &b.country,
        &b.state,
        &b.city,
        &b.session,
        &b.ttl,
        state.proxy_addr.as_deref(),
    );
    let body = pages::Me {
        plan: u["plan"].as_str().unwrap_or("").to_owned(),
        used: chart::human(n("used")),
        used_bytes: n("used"),
        remaining: chart::human(n("remaining")),
        remaining_bytes: n("remaining"),
        active: n("threads_active") as u32,
        threads: n("threads_limit") as u32,
        period: period_text(&u),
        targeting: page.targeting,
        countries: page.countries,
        states: page.states,
        cities: page.cities,
        country: b.country,
        state: b.state,
        city: b.city,
        session: b.session,
        ttl: b.ttl,
        ttl_min: page.ttl_range.0,
        ttl_max: page.ttl_range.1,
        problem: page.problem,
        username: page.username,
        curl: page.curl,
        requests: page.requests,
        socks: page.socks,
        errors: recent_errors(&state, &name),
        name,
    };
    html(
        StatusCode::OK,
        pages::page("Your account", false, true, &render(&body)),
    )
}

fn me_login_page(error: &str, status: StatusCode) -> Response {
    let body = pages::Login {
        heading: "Customer login",
        action: "/me/login",
        token: false,
        error,
    };
    html(status, pages::page("Log in", false, false, &render(&body)))
}

#[derive(Deserialize)]
pub(super) struct Credentials {
    username: String,
    password: String,
}

/// The customer logs in with the account's proxy credentials (the account name, no
/// modifiers), through the same guard as proxy logins: repeated failures from an address
/// slow it and a failed credential is refused unchecked.
pub(super) async fn me_login(
    State(state): State<AppState>,
    peer: Option<Extension<Peer>>,
    Form(c): Form<Credentials>,
) -> Response {
    let world = state.world.load();
    if world.config.api_token.is_none() {
        return me_login_page(
            "the dashboard is off: set [admin] api_token_file",
            StatusCode::NOT_FOUND,
        );
    }
    let sec = &world.config.security;
    let policy = crate::auth::guard::Policy {
        failures: sec.auth_failures,
        window: sec.auth_window.0,
        block: sec.auth_block.0,
        delay: sec.auth_delay.0,
    };
    let ip = peer.map(|Extension(p)| p.0.ip());
    let fp = state.guard.fingerprint(
        c.username.as_bytes(),
        c.password.as_bytes(),
        usize::MAX,
        world.accounts.generation() as usize,
    );
    if let Some(ip) = ip {
        if !matches!(
            state
                .guard
                .admit(ip, fp, &policy, std::time::Instant::now()),
            crate::auth::guard::Admit::Check
        ) {
            return me_login_page(
                "too many failed logins: try again later",
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
    }
    let stored = match world.config.accounts.get(&c.username) {
        Some(a) => Some((a.password.clone(), true)),
        None => world
            .accounts
            .get(&c.username)
            .map(|r| (r.password.clone(), r.enabled)),
    };
    let ok = match stored {
        Some((pw, enabled)) => {
            let given = c.password.clone().into_bytes();
            let matches =
                tokio::task::spawn_blocking(move || crate::auth::password_matches(&pw, &given))
                    .await
                    .unwrap_or(false);
            matches && enabled
        }
        None => false,
    };
    if !ok {
        if let Some(ip) = ip {
            state
                .guard
                .failure(ip, fp, &policy, std::time::Instant::now());
        }
        return me_login_page("Incorrect username or password", StatusCode::UNAUTHORIZED);
    }
    redirect("/me", Some(me_cookie(&state, &c.username)))
}
