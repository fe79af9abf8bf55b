//! The operator's actions (forms on an account's page, each through the API's own code
//! path: the same checks, the same store writes, the same audit lines) and the
//! customer's proxy-string builder.

use super::{csrf, error_page, login_page, operator, redirect};
use crate::admin::api::{apply_adjustment, disconnect_account, save_account, Authorized, Peer};
use crate::admin::ops::{AccountBody, OpError, Write};
use crate::admin::state::AppState;
use crate::plan::ledger::Adjustment;
use crate::world::World;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    #[serde(default)]
    bytes: String,
    #[serde(default)]
    enabled: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    password: String,
}

/// `POST /accounts/{name}/{action}`: top-up, reset, disconnect, enabled, plan, password.
pub(super) async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let Some(session) = operator(&state, &headers) else {
        return login_page("", StatusCode::UNAUTHORIZED);
    };
    {
        use subtle::ConstantTimeEq;
        if !bool::from(f.csrf.as_bytes().ct_eq(csrf(&session).as_bytes())) {
            let e = OpError {
                status: 403,
                message: "the form's CSRF token does not match: reload the page".into(),
                field: None,
            };
            return error_page(&e, true);
        }
    }
    let who =
        Authorized::dashboard(&peer.map_or_else(|| "-".into(), |Extension(p)| p.0.to_string()));
    let world = state.world.load();
    let patch = |body: AccountBody| async {
        save_account(&state, &who, &name, body, Write::Patch)
            .await
            .map(|_| ())
    };
    let done = match action.as_str() {
        "top-up" => match crate::config::parse_size(f.bytes.trim()) {
            Ok(n) => apply_adjustment(&world, &who, &name, Adjustment::TopUp(n))
                .map(|()| format!("topped up by {n} bytes")),
            Err(e) => Err(OpError::bad("bytes", e)),
        },
        "reset" => {
            apply_adjustment(&world, &who, &name, Adjustment::Reset).map(|()| "usage reset".into())
        }
        "disconnect" => disconnect_account(&state, &who, &name)
            .map(|n| format!("disconnecting {n} connection(s)")),
        "enabled" => {
            let enabled = f.enabled == "true";
            patch(AccountBody {
                enabled: Some(enabled),
                ..AccountBody::default()
            })
            .await
            .map(|()| {
                if enabled {
                    "enabled".into()
                } else {
                    "disabled".into()
                }
            })
        }
        "plan" => patch(AccountBody {
            plan: Some(f.plan.clone()),
            ..AccountBody::default()
        })
        .await
        .map(|()| format!("plan changed to {}", f.plan)),
        "password" => patch(AccountBody {
            password: Some(f.password.clone()),
            ..AccountBody::default()
        })
        .await
        .map(|()| "password changed".into()),
        _ => Err(OpError::not_found("action", &action)),
    };
    match done {
        Ok(flash) => {
            let to = format!("/accounts/{}?flash={}", urlencode(&name), urlencode(&flash));
            redirect(&to, None)
        }
        Err(e) => error_page(&e, true),
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the builder shows: the choices (from the exits of the account's networks, named
/// from the ISO lists), the username they compose, and the lines to copy.
pub(super) struct Built {
    pub targeting: bool,
    pub countries: Vec<(String, String)>,
    pub states: Vec<String>,
    pub cities: Vec<String>,
    pub ttl_range: (u32, u32),
    pub problem: String,
    pub username: String,
    pub curl: String,
    pub requests: String,
    pub socks: String,
}

/// Compose a username for `account` from the chosen modifiers, checked the way a login
/// checks it (the grammar, the network's TTL range, the exits that exist).
#[allow(clippy::too_many_arguments)]
pub(super) fn builder(
    world: &World,
    account: &str,
    country: &str,
    state: &str,
    city: &str,
    session: &str,
    ttl: &str,
    proxy: Option<&str>,
) -> Built {
    let snap = &world.config;
    // The first network of the account that a listener serves.
    let nets: Vec<usize> = match snap.accounts.get(account) {
        Some(a) => a.networks.clone(),
        None => world
            .accounts
            .get(account)
            .map(|r| {
                r.networks
                    .iter()
                    .filter_map(|n| snap.network_index(n))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let net = nets.first().copied();
    let network = net.and_then(|i| snap.networks.get(i));
    let targeting = network.is_some_and(|n| n.targeting);
    let exits: Vec<&crate::config::Exit> = snap
        .exits
        .iter()
        .filter(|e| Some(e.network) == net)
        .collect();
    let mut countries: Vec<(String, String)> = exits
        .iter()
        .filter_map(|e| e.country.clone())
        .map(|c| {
            let label = rust_iso3166::from_alpha2(&c.to_uppercase())
                .map_or_else(|| c.clone(), |i| format!("{c} — {}", i.name));
            (c, label)
        })
        .collect();
    countries.sort();
    countries.dedup();
    let mut states: Vec<String> = exits
        .iter()
        .filter(|e| e.country.as_deref() == Some(country))
        .filter_map(|e| e.state.clone())
        .collect();
    states.sort();
    states.dedup();
    let mut cities: Vec<String> = exits
        .iter()
        .filter(|e| e.country.as_deref() == Some(country) && e.state.as_deref() == Some(state))
        .filter_map(|e| e.city.clone())
        .collect();
    cities.sort();
    cities.dedup();
    let ttl_range = network.map_or((1, 1440), |n| (n.ttl_min, n.ttl_max));
    let mut username = account.to_owned();
    let mut problem = String::new();
    let mut add = |key: &str, v: &str| {
        if !v.is_empty() {
            username.push_str(&format!("-{key}-{v}"));
        }
    };
    if targeting {
        add("country", country);
        if !country.is_empty() {
            add("state", state);
            if !state.is_empty() {
                add("city", city);
            }
        }
    }
    add("session", session.trim());
    add("ttl", ttl.trim());
    match crate::auth::username::parse(&username) {
        Err(e) => problem = format!("not a valid username: {e:?}"),
        Ok(p) if p.account != account => {
            problem = "the account name contains a modifier key".into();
        }
        Ok(_) => {}
    }
    if let Ok(t) = ttl.trim().parse::<u32>() {
        if !(ttl_range.0..=ttl_range.1).contains(&t) {
            problem = format!("ttl must be {}–{} minutes", ttl_range.0, ttl_range.1);
        }
    } else if !ttl.trim().is_empty() {
        problem = "ttl is a number of minutes".into();
    }
    let proxy = proxy.unwrap_or("GATEWAY:PORT");
    Built {
        targeting,
        countries,
        states,
        cities,
        ttl_range,
        curl: format!("curl -x http://{username}:PASSWORD@{proxy} https://example.com/"),
        requests: format!(
            "requests.get(\"https://example.com/\", proxies={{\"https\": \"http://{username}:PASSWORD@{proxy}\"}})"
        ),
        socks: format!("curl -x socks5h://{username}:PASSWORD@{proxy} https://example.com/"),
        username,
        problem,
    }
}
