//! The username grammar (DESIGN.md, "Username grammar"), socket-free:
//!
//! ```text
//! username  = account *( "-" key "-" value )
//! key       = "country" / "state" / "city" / "session" / "ttl"
//! ```
//!
//! The account is everything before the first `-<key>-` with a known key; after it come only
//! key/value pairs. What the values mean is decided later (targeting, TTL ranges); this
//! module only says whether the shape is right.

/// The modifier keys, in the order DESIGN.md lists them.
pub const KEYS: [&str; 5] = ["country", "state", "city", "session", "ttl"];

/// Modifiers as written in the username (borrowed, not yet validated against data).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Modifiers<'a> {
    pub country: Option<&'a str>,
    pub state: Option<&'a str>,
    pub city: Option<&'a str>,
    pub session: Option<&'a str>,
    pub ttl: Option<&'a str>,
}

impl Modifiers<'_> {
    /// Whether any geo-targeting modifier is present.
    pub fn targets(&self) -> bool {
        self.country.is_some() || self.state.is_some() || self.city.is_some()
    }
}

/// A username split into account and modifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub account: &'a str,
    pub mods: Modifiers<'a>,
}

/// Why a username's modifiers are not well-formed. All of these answer 407.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("unknown modifier key")]
    UnknownKey,
    #[error("repeated modifier key")]
    RepeatedKey,
    #[error("modifier key without a value")]
    DanglingKey,
    #[error("empty modifier value")]
    EmptyValue,
    #[error("session id must be 1-64 of [A-Za-z0-9_]")]
    BadSession,
}

/// Position of the first `-<key>-` with a known key.
fn account_end(username: &str) -> Option<usize> {
    let b = username.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'-') {
        let at = i + off;
        let rest = &username[at + 1..];
        if KEYS.iter().any(|k| {
            rest.len() > k.len() && rest.starts_with(k) && rest.as_bytes()[k.len()] == b'-'
        }) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// Split a username into account and modifiers.
pub fn parse(username: &str) -> Result<Parsed<'_>, GrammarError> {
    let Some(end) = account_end(username) else {
        return Ok(Parsed {
            account: username,
            mods: Modifiers::default(),
        });
    };
    let mut mods = Modifiers::default();
    let mut tokens = username[end + 1..].split('-');
    while let Some(key) = tokens.next() {
        let slot = match key {
            "country" => &mut mods.country,
            "state" => &mut mods.state,
            "city" => &mut mods.city,
            "session" => &mut mods.session,
            "ttl" => &mut mods.ttl,
            _ => return Err(GrammarError::UnknownKey),
        };
        let value = tokens.next().ok_or(GrammarError::DanglingKey)?;
        if value.is_empty() {
            return Err(GrammarError::EmptyValue);
        }
        if slot.replace(value).is_some() {
            return Err(GrammarError::RepeatedKey);
        }
    }
    if let Some(s) = mods.session {
        if s.len() > 64 || !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            return Err(GrammarError::BadSession);
        }
    }
    Ok(Parsed {
        account: &username[..end],
        mods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use GrammarError::*;

    fn m<'a>(
        country: Option<&'a str>,
        state: Option<&'a str>,
        city: Option<&'a str>,
        session: Option<&'a str>,
        ttl: Option<&'a str>,
    ) -> Modifiers<'a> {
        Modifiers {
            country,
            state,
            city,
            session,
            ttl,
        }
    }

    #[test]
    fn valid_usernames() {
        let rows: &[(&str, &str, Modifiers)] = &[
            ("alice", "alice", m(None, None, None, None, None)),
            (
                "alice-country-us",
                "alice",
                m(Some("us"), None, None, None, None),
            ),
            (
                "alice-country-us-state-ca-city-losangeles-session-abc-ttl-30",
                "alice",
                m(
                    Some("us"),
                    Some("ca"),
                    Some("losangeles"),
                    Some("abc"),
                    Some("30"),
                ),
            ),
            // Order of pairs is free.
            (
                "alice-ttl-5-session-x_1",
                "alice",
                m(None, None, None, Some("x_1"), Some("5")),
            ),
            // Dashes in the account are fine when they do not start a known key.
            (
                "my-team-country-DE",
                "my-team",
                m(Some("DE"), None, None, None, None),
            ),
            (
                "a-countryx-y",
                "a-countryx-y",
                m(None, None, None, None, None),
            ),
            // A trailing key without "-value" is not a modifier: the account is the whole name
            // (which then fails lookup).
            (
                "alice-country",
                "alice-country",
                m(None, None, None, None, None),
            ),
            ("", "", m(None, None, None, None, None)),
        ];
        for (input, account, mods) in rows {
            let p = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.account, *account, "{input}");
            assert_eq!(&p.mods, mods, "{input}");
        }
    }

    #[test]
    fn invalid_usernames() {
        let rows: &[(&str, GrammarError)] = &[
            ("alice-country-us-color-red", UnknownKey),
            ("alice-country-us-country-de", RepeatedKey),
            ("alice-session-a-session-b", RepeatedKey),
            ("alice-country-us-state", DanglingKey),
            ("alice-country-us-", UnknownKey),
            ("alice-country--state-ca", EmptyValue),
            ("alice-session-bad.id", BadSession),
            ("alice-session-", EmptyValue),
        ];
        for (input, want) in rows {
            assert_eq!(parse(input), Err(*want), "{input}");
        }
        let long = format!("alice-session-{}", "a".repeat(65));
        assert_eq!(parse(&long), Err(BadSession));
        let ok = format!("alice-session-{}", "a".repeat(64));
        assert!(parse(&ok).is_ok());
    }
}
