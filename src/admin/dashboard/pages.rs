//! The dashboard's pages: askama templates (checked at compile time, every value
//! HTML-escaped unless marked `safe`, which only the server-drawn chart and the layout's
//! body are). Plain HTML forms and tables: nothing needs JavaScript.

use askama::Template;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}\
header{background:#1f3b5c;color:#fff;padding:8px 16px}header a{color:#fff;margin-right:16px}\
main{padding:16px;max-width:1100px}table{border-collapse:collapse;width:100%}\
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
form.inline{display:inline-block;margin:4px 8px 4px 0}.err{color:#a00}.ok{color:#070}\
input,select,button{font:inherit}code,pre{background:#f4f4f4;padding:2px 4px}\
pre{padding:8px;overflow-x:auto}.card{border:1px solid #ddd;padding:12px;margin:12px 0}";

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ title }} · tollgate</title><style>{{ style|safe }}</style></head>
<body><header><strong>tollgate</strong> &nbsp;
{% if operator %}<a href="/">Accounts</a><a href="/exits">Exits</a>
<form class="inline" method="post" action="/logout"><button>Log out</button></form>
{% endif %}{% if customer %}<form class="inline" method="post" action="/me/logout"><button>Log out</button></form>{% endif %}
</header><main>{{ body|safe }}</main></body></html>"#
)]
struct Layout<'a> {
    title: &'a str,
    style: &'a str,
    operator: bool,
    customer: bool,
    body: &'a str,
}

/// `body` in the common page frame.
pub fn page(title: &str, operator: bool, customer: bool, body: &str) -> String {
    Layout {
        title,
        style: STYLE,
        operator,
        customer,
        body,
    }
    .render()
    .unwrap_or_else(|e| format!("template error: {e}"))
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>{{ heading }}</h1>
{% if !error.is_empty() %}<p class="err" id="error">{{ error }}</p>{% endif %}
<form method="post" action="{{ action }}">
{% if token %}<label>API token <input type="password" name="token" id="token" autocomplete="off" required></label>
{% else %}<label>Username <input name="username" id="username" required></label>
<label>Password <input type="password" name="password" id="password" required></label>{% endif %}
<button id="login">Log in</button></form>"#
)]
pub struct Login<'a> {
    pub heading: &'a str,
    pub action: &'a str,
    /// The operator's form (the API token) or the customer's (proxy credentials).
    pub token: bool,
    pub error: &'a str,
}

pub struct AccountRow {
    pub name: String,
    pub plan: String,
    pub used: String,
    pub used_bytes: u64,
    pub remaining: String,
    pub threads: String,
    pub period: String,
    pub source: &'static str,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Accounts</h1>
<form method="get" action="/"><label>Name starts with <input name="q" id="q" value="{{ q }}"></label> <button>Search</button></form>
<table id="accounts"><tr><th>Account</th><th>Plan</th><th class="n">Used</th><th class="n">Remaining</th><th class="n">Threads</th><th>Period</th><th>Source</th></tr>
{% for r in rows %}<tr><td><a href="/accounts/{{ r.name|urlencode }}">{{ r.name }}</a></td><td>{{ r.plan }}</td>
<td class="n" data-bytes="{{ r.used_bytes }}">{{ r.used }}</td><td class="n">{{ r.remaining }}</td><td class="n">{{ r.threads }}</td><td>{{ r.period }}</td><td>{{ r.source }}</td></tr>
{% endfor %}</table>
{% match next %}{% when Some with (n) %}<p><a id="next" href="/?q={{ q|urlencode }}&amp;after={{ n|urlencode }}">Next page</a></p>{% when None %}{% endmatch %}"#
)]
pub struct Accounts {
    pub q: String,
    pub rows: Vec<AccountRow>,
    pub next: Option<String>,
}

pub struct ErrorRow {
    pub at: String,
    pub id: String,
    pub code: u16,
    pub error: String,
    pub target: String,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Account <span id="name">{{ name }}</span></h1>
{% if !flash.is_empty() %}<p class="ok" id="flash">{{ flash }}</p>{% endif %}
<div class="card"><table>
<tr><th>Plan</th><td id="plan">{{ plan }}</td></tr>
<tr><th>Used this period</th><td id="used" data-bytes="{{ used_bytes }}">{{ used }}</td></tr>
<tr><th>Credit</th><td id="credit" data-bytes="{{ credit_bytes }}">{{ credit }}</td></tr>
<tr><th>Remaining</th><td id="remaining">{{ remaining }}</td></tr>
<tr><th>Threads</th><td id="threads">{{ active }} of {{ threads }}</td></tr>
<tr><th>Live connections</th><td id="live">{{ active }}</td></tr>
<tr><th>Sticky sessions</th><td id="sessions">{{ sessions }}</td></tr>
<tr><th>Period</th><td>{{ period }}</td></tr>
<tr><th>Status</th><td id="status">{% if enabled %}enabled{% else %}disabled{% endif %}{% if read_only %} (defined in the configuration file){% endif %}</td></tr>
</table></div>
<h2>Usage, last 48 hours</h2>{{ chart|safe }}
{% if !read_only %}<h2>Actions</h2>
<form class="inline" method="post" action="/accounts/{{ name|urlencode }}/top-up"><input type="hidden" name="csrf" value="{{ csrf }}">
<input name="bytes" id="topup-bytes" placeholder="5GiB" required><button id="topup">Top up</button></form>
<form class="inline" method="post" action="/accounts/{{ name|urlencode }}/reset"><input type="hidden" name="csrf" value="{{ csrf }}"><button id="reset">Reset usage</button></form>
<form class="inline" method="post" action="/accounts/{{ name|urlencode }}/disconnect"><input type="hidden" name="csrf" value="{{ csrf }}"><button id="disconnect">Disconnect now</button></form>
<form class="inline" method="post" action="/accounts/{{ name|urlencode }}/enabled"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="enabled" value="{% if enabled %}false{% else %}true{% endif %}"><button id="toggle">{% if enabled %}Disable{% else %}Enable{% endif %}</button></form>
<form class="inline" method="post" action="/accounts/{{ name|urlencode }}/plan"><input type="hidden" name="csrf" value="{{ csrf }}">
<select name="plan" id="plan-select">{% for p in plans %}<option{% if p.as_str() == plan.as_str() %} selected{% endif %}>{{ p }}</option>{% endfor %}</select><button id="change-plan">Change plan</button></form>
<form class="inline" method="post" action="/accounts/{{ name|urlencode }}/password"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="password" name="password" id="new-password" autocomplete="new-password" required><button id="change-password">Set password</button></form>
{% endif %}
<h2>Recent errors</h2>
<table id="errors"><tr><th>Time (UTC)</th><th>Request id</th><th>Code</th><th>Error</th><th>Target</th></tr>
{% for e in errors %}<tr><td>{{ e.at }}</td><td><code>{{ e.id }}</code></td><td>{{ e.code }}</td><td>{{ e.error }}</td><td>{{ e.target }}</td></tr>{% endfor %}
</table>"#
)]
pub struct Account {
    pub name: String,
    pub flash: String,
    pub plan: String,
    pub plans: Vec<String>,
    pub used: String,
    pub used_bytes: u64,
    pub credit: String,
    pub credit_bytes: u64,
    pub remaining: String,
    pub active: u32,
    pub threads: u32,
    pub sessions: usize,
    pub period: String,
    pub enabled: bool,
    pub read_only: bool,
    pub chart: String,
    pub csrf: String,
    pub errors: Vec<ErrorRow>,
}

pub struct ExitRow {
    pub name: String,
    pub network: String,
    pub geo: String,
    pub state: String,
    pub failures: u32,
    pub attempts: u64,
    pub failed: u64,
    pub per_second: String,
}

pub struct NodeRow {
    pub name: String,
    pub heartbeat: String,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Exits</h1>
<table id="exits"><tr><th>Exit</th><th>Network</th><th>Location</th><th>Health</th><th class="n">Failures in a row</th><th class="n">Connects</th><th class="n">Failed</th><th class="n">Connects/s</th></tr>
{% for e in exits %}<tr><td>{{ e.name }}</td><td>{{ e.network }}</td><td>{{ e.geo }}</td><td>{{ e.state }}</td><td class="n">{{ e.failures }}</td><td class="n">{{ e.attempts }}</td><td class="n">{{ e.failed }}</td><td class="n">{{ e.per_second }}</td></tr>
{% endfor %}</table>
{% if cluster %}<h2>Cluster nodes</h2><table id="nodes"><tr><th>Node</th><th>Heartbeat valid until</th></tr>
{% for n in nodes %}<tr><td>{{ n.name }}</td><td>{{ n.heartbeat }}</td></tr>{% endfor %}</table>{% endif %}"#
)]
pub struct Exits {
    pub exits: Vec<ExitRow>,
    pub cluster: bool,
    pub nodes: Vec<NodeRow>,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Your account: <span id="name">{{ name }}</span></h1>
<div class="card"><table>
<tr><th>Plan</th><td>{{ plan }}</td></tr>
<tr><th>Used this period</th><td id="used" data-bytes="{{ used_bytes }}">{{ used }}</td></tr>
<tr><th>Left this period</th><td id="remaining" data-bytes="{{ remaining_bytes }}">{{ remaining }}</td></tr>
<tr><th>Threads in use</th><td id="threads">{{ active }} of {{ threads }}</td></tr>
<tr><th>Period</th><td>{{ period }}</td></tr></table></div>
<h2>Proxy string builder</h2>
<form method="get" action="/me" id="builder">
{% if targeting %}<label>Country <select name="country" id="country"><option value="">any</option>{% for c in countries %}<option value="{{ c.0 }}"{% if c.0.as_str() == country.as_str() %} selected{% endif %}>{{ c.1 }}</option>{% endfor %}</select></label>
<label>State <select name="state" id="state"><option value="">any</option>{% for s in states %}<option value="{{ s }}"{% if s.as_str() == state.as_str() %} selected{% endif %}>{{ s }}</option>{% endfor %}</select></label>
<label>City <select name="city" id="city"><option value="">any</option>{% for c in cities %}<option value="{{ c }}"{% if c.as_str() == city.as_str() %} selected{% endif %}>{{ c }}</option>{% endfor %}</select></label>{% endif %}
<label>Session <input name="session" id="session" value="{{ session }}" placeholder="none: a new exit per connection"></label>
<label>TTL (minutes, {{ ttl_min }}–{{ ttl_max }}) <input name="ttl" id="ttl" value="{{ ttl }}" size="5"></label>
<button id="build">Build</button></form>
{% if !problem.is_empty() %}<p class="err" id="problem">{{ problem }}</p>{% endif %}
<p>Username: <code id="username">{{ username }}</code> (with your password)</p>
<pre id="curl">{{ curl }}</pre><pre id="requests">{{ requests }}</pre><pre id="socks">{{ socks }}</pre>
<h2>Recent errors</h2><p>Quote the request id to support.</p>
<table id="errors"><tr><th>Time (UTC)</th><th>Request id</th><th>Code</th><th>Error</th><th>Target</th></tr>
{% for e in errors %}<tr><td>{{ e.at }}</td><td><code>{{ e.id }}</code></td><td>{{ e.code }}</td><td>{{ e.error }}</td><td>{{ e.target }}</td></tr>{% endfor %}
</table>"#
)]
pub struct Me {
    pub name: String,
    pub plan: String,
    pub used: String,
    pub used_bytes: u64,
    pub remaining: String,
    pub remaining_bytes: u64,
    pub active: u32,
    pub threads: u32,
    pub period: String,
    pub targeting: bool,
    /// (code, "code — name").
    pub countries: Vec<(String, String)>,
    pub states: Vec<String>,
    pub cities: Vec<String>,
    pub country: String,
    pub state: String,
    pub city: String,
    pub session: String,
    pub ttl: String,
    pub ttl_min: u32,
    pub ttl_max: u32,
    pub problem: String,
    pub username: String,
    pub curl: String,
    pub requests: String,
    pub socks: String,
    pub errors: Vec<ErrorRow>,
}
