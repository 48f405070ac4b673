//! The operator's per-tenant egress allowances, `[tenant_limits.X] backends = [...]`:
//!
//! - an address or range, optionally with a port: `10.1.0.0/16`, `127.0.0.1:3000`, `[::1]:8080`,
//!   `fd00::/8`; it allows every address it contains (loopback and link-local included);
//! - a host name or `*.` pattern, optionally with a port: `api.internal:8443`, `*.svc.cluster.local`;
//!   it allows that backend name to resolve to private addresses (RFC 1918, CGNAT, ULA) — never to
//!   loopback or link-local, since whoever controls the name's DNS could point it there.
//!
//! wasmgate's own listeners and its admin endpoint stay forbidden whatever is allowed.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// One entry of `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Allow {
    Net {
        net: IpNet,
        port: Option<u16>,
    },
    /// Lower-case host name, or `*.suffix` for any name below `suffix`.
    Name {
        pattern: String,
        port: Option<u16>,
    },
}

impl Allow {
    /// Parse one entry; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Allow, String> {
        let t = text.trim();
        let bad = |why: &str| {
            Err(format!(
                "`{t}` {why} (write an address or range such as \"10.1.0.0/16\" or \"127.0.0.1:3000\", or a host such as \"api.internal:8443\")"
            ))
        };
        if t.is_empty() {
            return bad("is empty");
        }
        if let Ok(a) = t.parse::<SocketAddr>() {
            return Ok(Allow::Net {
                net: IpNet::from(a.ip()),
                port: nonzero(a.port())?,
            });
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Allow::Net {
                net: IpNet::from(ip),
                port: None,
            });
        }
        if let Ok(net) = t.parse::<IpNet>() {
            if net.trunc() != net {
                return bad(&format!(
                    "has host bits set (did you mean `{}`?)",
                    net.trunc()
                ));
            }
            return Ok(Allow::Net { net, port: None });
        }
        if t.contains("://") {
            return bad("is a URL; write only the host and, optionally, the port");
        }
        if t.contains('/') || t.contains('[') {
            return bad("is not an address range");
        }
        let (host, port) = match t.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, nonzero(p)?),
                Err(_) => return bad("has a port that is not a number from 1 to 65535"),
            },
            None => (t, None),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        let name_ok = !bare.is_empty()
            && bare
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !name_ok {
            return bad("is neither an address nor a host name");
        }
        Ok(Allow::Name {
            pattern: host,
            port,
        })
    }

    /// Does this entry allow address `ip` on `port`? (Only address entries can.)
    pub fn covers_addr(&self, ip: IpAddr, port: u16) -> bool {
        match self {
            Allow::Net { net, port: p } => net.contains(&ip) && p.is_none_or(|p| p == port),
            Allow::Name { .. } => false,
        }
    }

    /// Does this entry allow backend name `host` (lower-case, no trailing dot) on `port`?
    pub fn covers_name(&self, host: &str, port: u16) -> bool {
        match self {
            Allow::Name { pattern, port: p } => {
                let name = match pattern.strip_prefix("*.") {
                    Some(suffix) => host
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                    None => host == pattern,
                };
                name && p.is_none_or(|p| p == port)
            }
            Allow::Net { .. } => false,
        }
    }
}

fn nonzero(port: u16) -> Result<Option<u16>, String> {
    if port == 0 {
        Err("port 0 cannot be connected to".into())
    } else {
        Ok(Some(port))
    }
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allow::Net { net, port: None } => write!(f, "{net}"),
            Allow::Net { net, port: Some(p) } => write!(f, "{}", SocketAddr::new(net.addr(), *p)),
            Allow::Name {
                pattern,
                port: None,
            } => write!(f, "{pattern}"),
            Allow::Name {
                pattern,
                port: Some(p),
            } => write!(f, "{pattern}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Allow {
        Allow::parse(s).unwrap()
    }

    #[test]
    fn entries_parse_and_match_by_address_name_and_port() {
        let lo = a("127.0.0.1:3000");
        assert!(lo.covers_addr("127.0.0.1".parse().unwrap(), 3000));
        assert!(!lo.covers_addr("127.0.0.1".parse().unwrap(), 3001));
        assert!(!lo.covers_addr("127.0.0.2".parse().unwrap(), 3000));
        let net = a("10.1.0.0/16");
        assert!(net.covers_addr("10.1.200.3".parse().unwrap(), 1));
        assert!(!net.covers_addr("10.2.0.1".parse().unwrap(), 1));
        assert!(a("[::1]:8080").covers_addr("::1".parse().unwrap(), 8080));
        let api = a("API.internal.:8443");
        assert!(api.covers_name("api.internal", 8443));
        assert!(!api.covers_name("api.internal", 443));
        assert!(!api.covers_addr("10.0.0.1".parse().unwrap(), 8443));
        let wild = a("*.svc.cluster.local");
        assert!(wild.covers_name("db.ns.svc.cluster.local", 5432));
        assert!(!wild.covers_name("svc.cluster.local", 5432));
        assert!(!wild.covers_name("evilsvc.cluster.local", 5432));
        assert_eq!(a("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(lo.to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn bad_entries_say_why() {
        for (text, why) in [
            ("", "is empty"),
            ("10.1.0.1/16", "host bits"),
            ("127.0.0.1:0", "port 0"),
            ("api.internal:http", "port"),
            ("http://api.internal", "is a URL"),
            ("api..internal", "neither"),
            ("10.0.0.0/33", "not an address range"),
        ] {
            let e = Allow::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
