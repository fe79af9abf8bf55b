//! The Lua scripts that keep the shared state consistent: each runs atomically inside
//! Redis, so two nodes can never both take the last thread slot or the last bytes.
//!
//! Keys (all under `key_prefix`):
//! - `nodes`: hash, node incarnation → liveness deadline (Redis clock, ms).
//! - `threads:<account>`: hash, node incarnation → slots it holds.
//! - `closing:<account>`: hash, node incarnation → of those, slots whose tunnels are
//!   closing (one side has closed): admissions elsewhere wait for them before a 453.
//! - `bw:<account>`: hash, `used` (bytes billed, besides the nodes' own counters),
//!   `credit` (operator top-ups), `used:<incarnation>` (bytes a node billed since it
//!   started) and `out:<incarnation>` (bytes granted to a node, not yet spent or returned).
//!   With a plan `period`, `period_start` is the start (Unix seconds) of the period the
//!   totals belong to.
//! - `periods:<account>`: hash, start of an ended period → bytes used in it.
//! - `session:<key>`: string, the exit of a sticky session, expiring with its TTL.
//!
//! A node's entries count only while its `nodes` deadline is in the future: a node that
//! dies stops renewing it, and the next script touching its entries drops them.

use redis::Script;

/// Shared helpers prepended to every script.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(nodes, n, now)
  local e = redis.call('HGET', nodes, n)
  return e and tonumber(e) > now
end
-- Start period `start` (Unix seconds; 0: the plan has none) if the totals in `bw` belong
-- to an earlier one: their usage goes to `hist`, credit the period needed is gone, and
-- usage counts from 0 again (`used` set to minus the nodes' own counters, which only
-- grow). Whichever node (or operator) sees the boundary first rolls it, once.
local function roll(bw, hist, start, plan)
  if start == 0 then return end
  local cur = tonumber(redis.call('HGET', bw, 'period_start') or '0')
  if cur >= start then return end
  if cur == 0 then
    redis.call('HSET', bw, 'period_start', start)
    return
  end
  local all = redis.call('HGETALL', bw)
  local base, nodes, credit = 0, 0, 0
  for i = 1, #all, 2 do
    local f, v = all[i], tonumber(all[i + 1])
    if f == 'used' then base = v
    elseif f == 'credit' then credit = v
    elseif string.sub(f, 1, 5) == 'used:' then nodes = nodes + v end
  end
  local total = base + nodes
  if total > 0 then redis.call('HINCRBY', hist, cur, total) end
  credit = math.max(0, credit - math.max(0, total - plan))
  redis.call('HSET', bw, 'used', -nodes, 'credit', credit, 'period_start', start)
end
"#;

/// KEYS: threads hash, nodes hash, closing hash. ARGV: plan threads, me. Returns 1
/// (taken), 0 (full) or 2 (full, and a live node holds a slot that is closing).
const ACQUIRE: &str = r#"
local now = now_ms()
local function live_sum(key)
  local all = redis.call('HGETALL', key)
  local total = 0
  for i = 1, #all, 2 do
    if all[i] == ARGV[2] or alive(KEYS[2], all[i], now) then
      total = total + tonumber(all[i + 1])
    else
      redis.call('HDEL', key, all[i])
    end
  end
  return total
end
if live_sum(KEYS[1]) >= tonumber(ARGV[1]) then
  if live_sum(KEYS[3]) > 0 then return 2 end
  return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return 1
"#;

/// KEYS: bw hash, nodes hash, periods hash. ARGV: plan bandwidth, me, smallest grant,
/// largest grant, the plan's current period start (0: none).
/// Grants what keeps `used + Σ out <= plan + credit`, shared out over the nodes known to Redis;
/// returns the grant (0 = the plan is used up). A dead node's unspent grant is dropped
/// and its spending folded into `used`. A period boundary rolls the totals first.
const GRANT: &str = r#"
local now = now_ms()
roll(KEYS[1], KEYS[3], tonumber(ARGV[5]), tonumber(ARGV[1]))
local all = redis.call('HGETALL', KEYS[1])
local used, credit, out = 0, 0, 0
for i = 1, #all, 2 do
  local f, v = all[i], tonumber(all[i + 1])
  if f == 'used' then used = used + v
  elseif f == 'credit' then credit = v
  elseif f == 'period_start' then
  else
    local spent = string.sub(f, 1, 5) == 'used:'
    local n = spent and string.sub(f, 6) or string.sub(f, 5)
    if spent then used = used + v end
    if n ~= ARGV[2] and not alive(KEYS[2], n, now) then
      if spent then redis.call('HINCRBY', KEYS[1], 'used', v) end
      redis.call('HDEL', KEYS[1], f)
    elseif not spent then
      out = out + v
    end
  end
end
local left = tonumber(ARGV[1]) + credit - used - out
if left <= 0 then return 0 end
local nodes = math.max(redis.call('HLEN', KEYS[2]), 1)
local chunk = math.floor(left / (4 * nodes))
chunk = math.min(math.max(chunk, tonumber(ARGV[3])), tonumber(ARGV[4]), left)
redis.call('HINCRBY', KEYS[1], 'out:' .. ARGV[2], chunk)
return chunk
"#;

/// KEYS: bw hash. ARGV: me, bytes this node spent since it started, its unspent grant.
/// Both absolute, so a call repeated after a lost reply changes nothing.
const SETTLE: &str = r#"
redis.call('HSET', KEYS[1], 'used:' .. ARGV[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[1], 'out:' .. ARGV[1], ARGV[3])
else redis.call('HDEL', KEYS[1], 'out:' .. ARGV[1]) end
return 1
"#;

/// KEYS: bw hash, periods hash. ARGV: what to do (`reset`, `top-up` or `show`), bytes,
/// the plan's current period start (0: none), plan bandwidth. Returns {used, credit,
/// period start} after it. Usage totals `used` plus every node's `used:<incarnation>`; a
/// reset makes that total 0 without touching the nodes' own (ever-growing) counters.
const ADJUST: &str = r#"
roll(KEYS[1], KEYS[2], tonumber(ARGV[3] or '0'), tonumber(ARGV[4] or '0'))
local all = redis.call('HGETALL', KEYS[1])
local nodes, credit, base = 0, 0, 0
for i = 1, #all, 2 do
  local f, v = all[i], tonumber(all[i + 1])
  if f == 'used' then base = v
  elseif f == 'credit' then credit = v
  elseif string.sub(f, 1, 5) == 'used:' then nodes = nodes + v end
end
if ARGV[1] == 'reset' then
  base, credit = -nodes, 0
  redis.call('HSET', KEYS[1], 'used', base, 'credit', 0)
elseif ARGV[1] == 'top-up' then
  credit = redis.call('HINCRBY', KEYS[1], 'credit', ARGV[2])
end
return {base + nodes, credit, tonumber(redis.call('HGET', KEYS[1], 'period_start') or '0')}
"#;

/// KEYS: nodes hash. ARGV: me, ttl (ms). Renews this node; returns {lapsed, live}: lapsed
/// is 1 when its entry had lapsed or was missing (the node must write its counts again),
/// live the nodes alive now (this one included). Forgets nodes dead for over an hour.
const HEARTBEAT: &str = r#"
local now = now_ms()
local lapsed = not alive(KEYS[1], ARGV[1], now)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local all = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #all, 2 do
  local e = tonumber(all[i + 1])
  if e < now - 3600000 then redis.call('HDEL', KEYS[1], all[i])
  elseif e > now then live = live + 1 end
end
return {lapsed and 1 or 0, live}
"#;

/// KEYS: session key. ARGV: exit, ttl (ms). Binds unless bound; returns {exit, ttl left}.
const BIND: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return {v, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], tonumber(ARGV[2])}
"#;

/// KEYS: session key. ARGV: failed exit, new exit, ttl (ms). Moves the session off the
/// failed exit (keeping its expiry) unless another node moved it already.
const REPLACE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return {v, redis.call('PTTL', KEYS[1])} end
if v then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return {ARGV[2], redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {ARGV[2], tonumber(ARGV[3])}
"#;

/// The scripts, hashed once.
pub struct Scripts {
    pub acquire: Script,
    pub grant: Script,
    pub settle: Script,
    pub heartbeat: Script,
    pub bind: Script,
    pub replace: Script,
    pub adjust: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    pub fn new() -> Scripts {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            acquire: s(ACQUIRE),
            grant: s(GRANT),
            settle: s(SETTLE),
            heartbeat: s(HEARTBEAT),
            bind: s(BIND),
            replace: s(REPLACE),
            adjust: s(ADJUST),
        }
    }

    pub fn all(&self) -> [&Script; 7] {
        [
            &self.acquire,
            &self.grant,
            &self.settle,
            &self.heartbeat,
            &self.bind,
            &self.replace,
            &self.adjust,
        ]
    }
}

/// `EVALSHA` of `script` with `keys`, for a pipeline; the caller adds the arguments.
pub fn evalsha(script: &Script, keys: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

/// Key names under the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    pub fn threads(&self, account: &str) -> String {
        format!("{}threads:{account}", self.prefix)
    }

    pub fn closing(&self, account: &str) -> String {
        format!("{}closing:{account}", self.prefix)
    }

    pub fn bw(&self, account: &str) -> String {
        format!("{}bw:{account}", self.prefix)
    }
    pub fn periods(&self, account: &str) -> String {
        format!("{}periods:{account}", self.prefix)
    }
    pub fn session(&self, key: &str) -> String {
        format!("{}session:{key}", self.prefix)
    }
}
