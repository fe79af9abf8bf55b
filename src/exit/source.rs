//! Where a direct exit's connection leaves from. For a prefix exit (`source_cidr`) the
//! address is arithmetic, never a table: a rotating connection takes a uniformly random
//! address of the prefix; a sticky session's address is a keyed hash of its key (account,
//! network, targeting, session id), so every core, every node and every restart with the
//! same file picks the same address for it. O(1) in the prefix size: nothing is enumerated.
//!
//! The hash is keyed by `[routing] session_secret` when set (the mapping is then
//! unguessable), else by a key derived from the exit's name and prefix. Changing the secret,
//! the exit's name or its prefix moves every session to a new address.

use crate::config::{Secret, Source};
use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac};
use blake2::{Blake2b, Blake2bMac, Digest};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address a connection through an exit with `source` binds to: `None` for the
/// kernel's choice; for a prefix, the sticky session's address (`session` is its key) or a
/// random one.
pub fn pick(
    source: &Source,
    exit: &str,
    session: Option<&str>,
    secret: Option<&Secret>,
) -> Option<IpAddr> {
    match source {
        Source::Host => None,
        Source::Ip(ip) => Some(*ip),
        Source::Prefix(net) => Some(match session {
            Some(key) => nth(net, session_hash(net, exit, key, secret)),
            None => nth(net, fastrand::u128(..)),
        }),
    }
}

/// 128 bits of the keyed hash of session `key` inside `net`.
fn session_hash(net: &IpNet, exit: &str, key: &str, secret: Option<&Secret>) -> u128 {
    let k: [u8; 32] = match secret {
        Some(s) => Blake2b::<blake2::digest::consts::U32>::digest(s.0.as_bytes()).into(),
        None => Blake2b::<blake2::digest::consts::U32>::new()
            .chain_update(b"tollgate source_cidr\0")
            .chain_update(exit.as_bytes())
            .chain_update(b"\0")
            .chain_update(net.to_string().as_bytes())
            .finalize()
            .into(),
    };
    // A 32-byte key is always accepted (Blake2b takes up to 64).
    let Ok(mut mac) = <Blake2bMac<U16> as KeyInit>::new_from_slice(&k) else {
        return 0;
    };
    Mac::update(&mut mac, net.to_string().as_bytes());
    Mac::update(&mut mac, b"\0");
    Mac::update(&mut mac, key.as_bytes());
    u128::from_le_bytes(mac.finalize_fixed().into())
}

/// An address of `net` from 128 bits of `r`, spread uniformly over the prefix's usable
/// addresses: an IPv4 prefix of /30 or wider skips its network and broadcast addresses, an
/// IPv6 prefix skips its all-zeros (subnet-router anycast) address.
pub fn nth(net: &IpNet, r: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host_bits = 32 - u32::from(n.prefix_len());
            let size = 1u64 << host_bits;
            let off = if host_bits >= 2 {
                1 + (r % u128::from(size - 2)) as u64
            } else {
                (r % u128::from(size)) as u64
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | off as u32))
        }
        IpNet::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix_len());
            let mask = if host_bits >= 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            let off = if mask == 0 { 0 } else { 1 + r % mask };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | off))
        }
    }
}

/// How many addresses a prefix exit draws from (for `tollgate check`): as a power of two.
pub fn size_bits(net: &IpNet) -> u32 {
    u32::from(net.max_prefix_len() - net.prefix_len())
}

/// Whether addresses of `net` are local to this host (a `local` route or assigned): a
/// listener bound (with `FREEBIND`) to one of them must take a connection from here. `Err`
/// says what to run. Blocking, at most [`PROBE_TIMEOUT`]: for the boot and reload threads
/// and `tollgate check`, never an executor.
pub fn probe_local(net: &IpNet) -> Result<(), String> {
    use socket2::{Domain, Socket, Type};
    let ip = nth(net, fastrand::u128(..));
    let addr = std::net::SocketAddr::new(ip, 0);
    let domain = Domain::for_address(addr);
    let probe = || -> std::io::Result<()> {
        let l = Socket::new(domain, Type::STREAM, None)?;
        match ip {
            IpAddr::V4(_) => l.set_freebind(true)?,
            IpAddr::V6(_) => l.set_freebind_ipv6(true)?,
        }
        l.bind(&addr.into())?;
        l.listen(1)?;
        let at = l.local_addr()?;
        let c = Socket::new(domain, Type::STREAM, None)?;
        c.connect_timeout(&at, PROBE_TIMEOUT)
    };
    probe().map_err(|e| {
        let ip_cmd = if ip.is_ipv6() { "ip -6" } else { "ip" };
        format!(
            "source_cidr {net} is not local to this host ({ip} unreachable from here: {e}); \
             run `{ip_cmd} route add local {net} dev lo` (or assign the addresses), and have \
             the upstream router route {net} to this host"
        )
    })
}

/// How long [`probe_local`] waits for its own connection.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_inside_the_prefix() {
        for cidr in [
            "127.1.0.0/16",
            "203.0.113.0/24",
            "10.0.0.4/30",
            "10.0.0.8/31",
            "10.0.0.9/32",
        ] {
            let net: IpNet = cidr.parse().unwrap();
            for r in [0, 1, 2, 3, u128::MAX, u128::MAX - 1, 0xdead_beef] {
                let ip = nth(&net, r);
                assert!(net.contains(&ip), "{ip} outside {net}");
                if net.prefix_len() <= 30 {
                    assert_ne!(ip, net.network(), "{net}");
                    assert_ne!(ip, net.broadcast(), "{net}");
                }
            }
        }
        for cidr in [
            "2001:db8:1::/48",
            "fd00:77::/64",
            "fd00::/127",
            "fd00::1/128",
            "::/1",
        ] {
            let net: IpNet = cidr.parse().unwrap();
            for r in [0, 1, u128::MAX, 0x1234_5678_9abc_def0] {
                let ip = nth(&net, r);
                assert!(net.contains(&ip), "{ip} outside {net}");
                if net.prefix_len() < 128 {
                    assert_ne!(ip, net.network(), "{net}");
                }
            }
        }
    }

    #[test]
    fn a_session_keeps_its_address_and_another_gets_another() {
        let net: IpNet = "2001:db8:1::/48".parse().unwrap();
        let src = Source::Prefix(net);
        let a = pick(&src, "v6", Some("alice|res|||||s1"), None);
        assert_eq!(a, pick(&src, "v6", Some("alice|res|||||s1"), None));
        assert_ne!(a, pick(&src, "v6", Some("alice|res|||||s2"), None));
        // The secret, the exit's name and its prefix each move every session.
        let secret = Secret("0123456789abcdef".into());
        assert_ne!(a, pick(&src, "v6", Some("alice|res|||||s1"), Some(&secret)));
        assert_ne!(a, pick(&src, "other", Some("alice|res|||||s1"), None));
        // Rotating connections spread over the prefix.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.insert(pick(&src, "v6", None, None));
        }
        assert!(seen.len() > 95);
    }
}
