//! `[cluster]`: several gateway nodes sharing plans, usage and sticky sessions through
//! Redis. Absent: a single node with the embedded store.

use super::units::{Dur, Size};
use serde::Deserialize;
use std::time::Duration;

/// What new admissions do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownPolicy {
    /// Refuse them with 503 (SOCKS5 `0x01`).
    FailClosed,
    /// Admit them within this node's local allowance: the plan's threads counted on this
    /// node alone, and `down_allowance` bytes per account.
    FailOpen,
}

/// `[cluster]`, as written and after validation. `Debug` leaves the Redis password out.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[user:password@]host:port/db` or `unix:///path/to/redis.sock`.
    pub redis: String,
    /// This node's name in Redis and in logs; default: the host name.
    #[serde(default)]
    pub node: String,
    /// Prefix of every key tollgate writes, so several deployments can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// A node that has not renewed its heartbeat for this long is dead: its thread slots
    /// and unspent leases go back to the other nodes.
    #[serde(default = "default_node_ttl")]
    pub node_ttl: Dur,
    /// Per Redis call (connect, and each batch of commands).
    #[serde(default = "default_timeout")]
    pub redis_timeout: Dur,
    #[serde(default = "default_policy")]
    pub on_redis_down: DownPolicy,
    /// Bytes per account this node may relay while Redis is down (live tunnels under either
    /// policy, new ones too under `fail-open`); billed to Redis when it returns.
    #[serde(default = "default_allowance")]
    pub down_allowance: Size,
}

fn default_prefix() -> String {
    "tollgate:".into()
}
fn default_node_ttl() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_policy() -> DownPolicy {
    DownPolicy::FailClosed
}
fn default_allowance() -> Size {
    Size(64 << 20)
}

impl std::fmt::Debug for ClusterSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSection")
            .field("redis", &self.redis_for_logs())
            .field("node", &self.node)
            .field("key_prefix", &self.key_prefix)
            .field("node_ttl", &self.node_ttl)
            .field("redis_timeout", &self.redis_timeout)
            .field("on_redis_down", &self.on_redis_down)
            .field("down_allowance", &self.down_allowance)
            .finish()
    }
}

impl ClusterSection {
    /// The Redis URL without its password, for logs and error messages.
    pub fn redis_for_logs(&self) -> String {
        let url = &self.redis;
        match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
            _ => url.clone(),
        }
    }

    /// Check every key; fill in the node name.
    pub fn validate(mut self) -> Result<ClusterSection, String> {
        if let Err(e) = redis::Client::open(self.redis.as_str()) {
            return Err(format!(
                "[cluster] redis = {:?}: {e} (e.g. \"redis://127.0.0.1:6379/0\")",
                self.redis_for_logs()
            ));
        }
        if self.node.is_empty() {
            self.node = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
        }
        if self.node.is_empty()
            || self.node.len() > 64
            || !self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "[cluster] node = {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.node
            ));
        }
        if self.key_prefix.len() > 64 || self.key_prefix.chars().any(char::is_whitespace) {
            return Err(format!(
                "[cluster] key_prefix = {:?}: at most 64 characters, no spaces",
                self.key_prefix
            ));
        }
        if self.node_ttl.0 < Duration::from_secs(1) {
            return Err("[cluster] node_ttl: must be at least 1s".into());
        }
        if self.redis_timeout.0.is_zero() || self.redis_timeout.0 > self.node_ttl.0 {
            return Err("[cluster] redis_timeout: must be above 0s and at most node_ttl".into());
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str) -> Result<ClusterSection, String> {
        let text = format!("redis = \"redis://127.0.0.1:6379/0\"\nnode = \"gw1\"\n{extra}");
        toml::from_str::<ClusterSection>(&text)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn the_redis_password_stays_out_of_logs_and_errors() {
        let c = section("").unwrap();
        assert_eq!(c.redis_for_logs(), "redis://127.0.0.1:6379/0");
        let mut c = c;
        c.redis = "redis://user:s3cret@10.0.0.1:6379/0".into();
        assert_eq!(c.redis_for_logs(), "redis://***@10.0.0.1:6379/0");
        assert!(!format!("{c:?}").contains("s3cret"));
        let bad =
            toml::from_str::<ClusterSection>("redis = \"redis://u:s3cret@[x/0\"\nnode = \"a\"")
                .unwrap()
                .validate()
                .unwrap_err();
        assert!(!bad.contains("s3cret"), "{bad}");
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = section("").unwrap();
        assert_eq!(c.key_prefix, "tollgate:");
        assert_eq!(c.on_redis_down, DownPolicy::FailClosed);
        assert_eq!(c.node_ttl.0, Duration::from_secs(10));
        assert_eq!(
            section("on_redis_down = \"fail-open\"")
                .unwrap()
                .on_redis_down,
            DownPolicy::FailOpen
        );
        assert!(section("on_redis_down = \"maybe\"").is_err());
        assert!(section("node_ttl = \"500ms\"")
            .unwrap_err()
            .contains("node_ttl"));
        let bad = toml::from_str::<ClusterSection>("redis = \"http://x\"\nnode = \"a\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(bad.contains("[cluster] redis"), "{bad}");
        let bad = toml::from_str::<ClusterSection>("redis = \"redis://x\"\nnode = \"a b\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(bad.contains("[cluster] node"), "{bad}");
    }
}
