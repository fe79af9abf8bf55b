//! The dashboard on the admin listener: an operator's view (`/`: accounts, an account's
//! usage, sessions, errors and actions; `/exits`: exit health and cluster nodes) behind
//! the API's token, and a customer's view (`/me`: usage, threads, errors and a
//! proxy-string builder) behind the account's own proxy credentials.
//!
//! Server-rendered HTML (`pages`), every asset inside the page (styles inline, the chart
//! an inline SVG drawn here), so it works without JavaScript and without internet access.
//!
//! Sessions: the operator's cookie holds a digest of the token (never the token), the
//! customer's an HMAC of the account and an expiry under a secret made at start (a restart
//! logs customers out). Both cookies are `HttpOnly; SameSite=Strict`, and every operator
//! form carries a CSRF token derived from the session, checked on POST. Customer logins
//! go through the same password-guessing guard as proxy logins.

mod actions;
mod chart;
mod pages;
mod views;

use super::api::check_token;
use super::ops::OpError;
use super::state::AppState;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(views::home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/accounts/{name}", get(views::account))
        .route("/accounts/{name}/{action}", post(actions::act))
        .route("/exits", get(views::exits))
        .route("/me", get(views::me))
        .route("/me/login", post(views::me_login))
        .route("/me/logout", post(me_logout))
}

const ADMIN_COOKIE: &str = "tg_admin";
const ME_COOKIE: &str = "tg_me";
/// How long a customer stays logged in.
const ME_FOR_S: i64 = 12 * 3600;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn digest(parts: &[&[u8]]) -> String {
    use blake2::Digest;
    let mut h = blake2::Blake2s256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex(&h.finalize())
}

/// A cookie's value from the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The operator's session value for the configured token (`None`: the API is off).
fn admin_session(state: &AppState) -> Option<String> {
    let world = state.world.load();
    let token = world.config.api_token.as_ref()?;
    Some(digest(&[b"tollgate dashboard session", token.0.as_bytes()]))
}

/// The operator's CSRF token: bound to the session, so another site cannot know it.
fn csrf(session: &str) -> String {
    digest(&[b"tollgate csrf", session.as_bytes()])
}

/// The operator's session, when the request carries it (the token as a bearer header, or
/// the login form's cookie).
fn operator(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let session = admin_session(state)?;
    if check_token(&state.world.load(), headers).is_ok() {
        return Some(session);
    }
    let given = cookie(headers, ADMIN_COOKIE)?;
    use subtle::ConstantTimeEq;
    bool::from(given.as_bytes().ct_eq(session.as_bytes())).then_some(session)
}

/// The customer's account, when the request carries a valid session cookie.
fn customer(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let v = cookie(headers, ME_COOKIE)?;
    let mut parts = v.splitn(3, '.');
    let (name, expires, mac) = (parts.next()?, parts.next()?, parts.next()?);
    let name = String::from_utf8(unhex(name)?).ok()?;
    let expires: i64 = expires.parse().ok()?;
    if expires < crate::util::wall_now().as_second() {
        return None;
    }
    let want = digest(&[
        &state.secret,
        name.as_bytes(),
        expires.to_string().as_bytes(),
    ]);
    use subtle::ConstantTimeEq;
    if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
        return None;
    }
    Some(name)
}

/// The bytes of [`hex`]'s output (`None`: not an even run of lowercase hex digits).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn me_cookie(state: &AppState, name: &str) -> String {
    let expires = crate::util::wall_now().as_second() + ME_FOR_S;
    let mac = digest(&[
        &state.secret,
        name.as_bytes(),
        expires.to_string().as_bytes(),
    ]);
    // The name travels hex-encoded: an account name may hold ';', ',', '"', '.' or
    // non-ASCII characters, none of which a cookie value can carry as they are.
    let name = hex(name.as_bytes());
    format!(
        "{ME_COOKIE}={name}.{expires}.{mac}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ME_FOR_S}"
    )
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"),
    );
    r
}

fn redirect(to: &str, set_cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, "").into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// The operator's login form.
fn login_page(error: &str, status: StatusCode) -> Response {
    let body = pages::Login {
        heading: "Operator login",
        action: "/login",
        token: true,
        error,
    };
    html(status, pages::page("Log in", false, false, &render(&body)))
}

fn render(t: &impl askama::Template) -> String {
    t.render()
        .unwrap_or_else(|e| format!("template error: {e}"))
}

fn error_page(e: &OpError, operator: bool) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!(
        "<h1>{}</h1><p class=\"err\">{}</p>",
        status.as_u16(),
        escape(&e.message)
    );
    html(status, pages::page("Error", operator, false, &body))
}

/// HTML-escape text put into markup outside a template.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Deserialize)]
struct TokenForm {
    token: String,
}

async fn login(State(state): State<AppState>, Form(f): Form<TokenForm>) -> Response {
    let world = state.world.load();
    let Some(expected) = &world.config.api_token else {
        return login_page(
            "the dashboard is off: set [admin] api_token_file",
            StatusCode::NOT_FOUND,
        );
    };
    let ok = {
        use blake2::Digest;
        use subtle::ConstantTimeEq;
        let a = blake2::Blake2s256::digest(f.token.trim().as_bytes());
        let b = blake2::Blake2s256::digest(expected.0.as_bytes());
        bool::from(a.ct_eq(&b))
    };
    match (ok, admin_session(&state)) {
        (true, Some(session)) => redirect(
            "/",
            Some(format!(
                "{ADMIN_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"
            )),
        ),
        _ => login_page("wrong token", StatusCode::UNAUTHORIZED),
    }
}

async fn logout() -> Response {
    redirect(
        "/",
        Some(format!(
            "{ADMIN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}

async fn me_logout() -> Response {
    redirect(
        "/me",
        Some(format!(
            "{ME_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}
