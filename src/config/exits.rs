//! `[[exit]]` validation: kinds, upstream URLs and geo tags.

use super::model::{Exit, ExitKind, Source, Upstream};
use super::{find, names, ExitSection, File};
use crate::geo;
use std::net::IpAddr;

pub(super) fn build_exits(f: &File, net_names: &[&str]) -> Result<Vec<Exit>, String> {
    let mut out: Vec<Exit> = Vec::with_capacity(f.exits.len());
    for (i, e) in f.exits.iter().enumerate() {
        let name = e.name.clone().unwrap_or_else(|| format!("exit-{}", i + 1));
        let at = format!("[[exit]] #{} ({name})", i + 1);
        if out.iter().any(|x| x.name == name) {
            return Err(format!("{at}: name: duplicate exit name"));
        }
        let network = find(net_names, &e.network).ok_or_else(|| {
            format!(
                "{at}: network = {:?} is not defined; defined networks: {}",
                e.network,
                names(net_names.iter().copied())
            )
        })?;
        let kind = exit_kind(&at, e)?;
        let (country, state, city) = exit_tags(&at, e)?;
        out.push(Exit {
            name,
            network,
            kind,
            country,
            state,
            city,
        });
    }
    Ok(out)
}

/// `kind`, with the keys each kind takes (`source_ip`, `url`).
fn exit_kind(at: &str, e: &ExitSection) -> Result<ExitKind, String> {
    let kind = match e.kind.as_str() {
        "direct" => {
            if e.url.is_some() {
                return Err(format!("{at}: url: only socks5 and http exits take a url"));
            }
            ExitKind::Direct {
                source: direct_source(at, e)?,
            }
        }
        "socks5" | "http" => {
            for (key, set) in [
                ("source_ip", e.source_ip.is_some()),
                ("source_cidr", e.source_cidr.is_some()),
            ] {
                if set {
                    return Err(format!("{at}: {key}: only direct exits take a {key}"));
                }
            }
            let url = e
                .url
                .as_deref()
                .ok_or_else(|| format!("{at}: url: required for kind = {:?}", e.kind))?;
            let up = parse_upstream_url(url, &e.kind).map_err(|m| format!("{at}: url: {m}"))?;
            if e.kind == "socks5" {
                ExitKind::Socks5(up)
            } else {
                ExitKind::Http(up)
            }
        }
        other => {
            return Err(format!(
                "{at}: kind = {other:?}: must be \"direct\", \"socks5\" or \"http\""
            ))
        }
    };
    Ok(kind)
}

/// A direct exit's `source_ip` or `source_cidr` (at most one of them).
fn direct_source(at: &str, e: &ExitSection) -> Result<Source, String> {
    match (&e.source_ip, &e.source_cidr) {
        (Some(_), Some(_)) => Err(format!(
            "{at}: set either source_ip or source_cidr, not both"
        )),
        (None, None) => Ok(Source::Host),
        (Some(s), None) => s
            .parse::<IpAddr>()
            .map(Source::Ip)
            .map_err(|_| format!("{at}: source_ip = {s:?}: not an IP address")),
        (None, Some(c)) => {
            let net: ipnet::IpNet = c.parse().map_err(|_| {
                format!("{at}: source_cidr = {c:?}: not a CIDR prefix (e.g. \"2001:db8:1::/48\" or \"203.0.113.0/24\")")
            })?;
            if net.trunc() != net {
                return Err(format!(
                    "{at}: source_cidr = {c:?}: host bits are set; the prefix is {}",
                    net.trunc()
                ));
            }
            if net.prefix_len() == 0 {
                return Err(format!("{at}: source_cidr = {c:?}: a /0 is every address"));
            }
            Ok(Source::Prefix(net))
        }
    }
}

type Tags = (Option<String>, Option<String>, Option<String>);

/// `country`, `state` and `city`: ISO codes, each level needing the one above.
fn exit_tags(at: &str, e: &ExitSection) -> Result<Tags, String> {
    let country = tag(at, "country", &e.country)?;
    let state = tag(at, "state", &e.state)?;
    let city = tag(at, "city", &e.city)?;
    if let Some(c) = &country {
        if !geo::is_country(c) {
            return Err(format!(
                "{at}: country = {c:?}: not an ISO 3166-1 alpha-2 code (e.g. \"us\")"
            ));
        }
    }
    if let Some(st) = &state {
        let Some(c) = &country else {
            return Err(format!("{at}: state: needs a country tag too"));
        };
        if !geo::is_state(c, st) {
            return Err(format!(
                "{at}: state = {st:?}: not an ISO 3166-2 subdivision of {c:?} (e.g. \"ca\" for US-CA)"
            ));
        }
    }
    if city.as_deref() == Some("ran") {
        return Err(format!(
            "{at}: city: \"ran\" is reserved (it means a random city)"
        ));
    }
    if city.is_some() && country.is_none() {
        return Err(format!("{at}: city: needs a country tag too"));
    }
    Ok((country, state, city))
}

fn tag(at: &str, key: &str, v: &Option<String>) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(s) if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Err(format!(
                "{at}: {key} = {s:?}: use letters, digits or '_' only (e.g. \"losangeles\")"
            ))
        }
        Some(s) => Ok(Some(s.to_ascii_lowercase())),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".to_string())
}

/// `scheme://[user[:pass]@]host:port` with `scheme` matching the exit kind.
pub fn parse_upstream_url(url: &str, kind: &str) -> Result<Upstream, String> {
    let rest = url
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("must start with \"{kind}://\""))?;
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or("expected [ipv6]:port")?;
        (h.to_string(), p)
    } else {
        let (h, p) = hostport.rsplit_once(':').ok_or("expected host:port")?;
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err("host is empty".into());
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("port must be 1-65535")?;
    let (username, password) = match creds {
        None => (None, None),
        Some(c) => {
            let (u, p) = match c.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (c, None),
            };
            (Some(percent_decode(u)?), p.map(percent_decode).transpose()?)
        }
    };
    if kind == "socks5" {
        for v in [&username, &password].into_iter().flatten() {
            if v.len() > 255 {
                return Err("SOCKS5 credentials are at most 255 bytes each".into());
            }
        }
    }
    Ok(Upstream {
        host,
        port,
        username,
        password,
    })
}
