//! `ip-allow`: allow or deny clients by address range. See `README.md`.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use wasmgate_plugin_sdk::prelude::*;

/// `config = { allow = ["127.0.0.0/8", "::1/128"], deny = [] }`
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ranges (CIDR) or single addresses let in; empty: everyone not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Ranges or single addresses refused; deny wins over allow.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The status for refused clients (default 403).
    pub status: Option<u16>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    Empty,
    BadRange { at: String, value: String },
    BadStatus(u16),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Empty => f.write_str("configure `allow` and/or `deny` (with neither, every client is let in)"),
            ConfigError::BadRange { at, value } => write!(f, "{at}: `{value}` is neither an IP address nor a CIDR range like `10.0.0.0/8` or `fd00::/8`"),
            ConfigError::BadStatus(s) => write!(f, "`status` must be between 400 and 599, got {s}"),
        }
    }
}

impl std::error::Error for ConfigError {}

pub struct IpAllow {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    status: u16,
}

impl Plugin for IpAllow {
    type Config = Config;

    fn new(c: Config) -> Result<Self, InitError> {
        if c.allow.is_empty() && c.deny.is_empty() {
            return Err(ConfigError::Empty.into());
        }
        let status = c.status.unwrap_or(403);
        if !(400..=599).contains(&status) {
            return Err(ConfigError::BadStatus(status).into());
        }
        Ok(IpAllow {
            allow: ranges("allow", c.allow)?,
            deny: ranges("deny", c.deny)?,
            status,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    /// The client address comes from the request's facts (the host resolved trusted proxies).
    fn request_headers(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    /// The verdict is a function of the client address alone.
    fn decision_cache(&self) -> Option<DecisionCache> {
        Some(DecisionCache {
            key: vec![RequestPart::ClientAddr],
            ttl: std::time::Duration::from_secs(60),
        })
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        let Some(ip) = req.client_ip() else {
            // Fail closed: an address we cannot read matches no rule we could vouch for.
            log(
                Level::Warn,
                format!("ip-allow: unreadable client address `{}`", req.client_addr),
            );
            return Decision::respond(self.status);
        };
        if self.is_allowed(canonical(ip)) {
            Decision::allow()
        } else {
            Decision::respond(self.status)
        }
    }
}

impl IpAllow {
    fn is_allowed(&self, ip: IpAddr) -> bool {
        let hit = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip));
        !hit(&self.deny) && (self.allow.is_empty() || hit(&self.allow))
    }
}

fn ranges(field: &str, values: Vec<String>) -> Result<Vec<IpNet>, ConfigError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            parse_range(v.trim()).ok_or_else(|| ConfigError::BadRange {
                at: format!("{field}[{i}]"),
                value: v,
            })
        })
        .collect()
}

/// A CIDR range or a single address; host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`) and
/// IPv4-mapped IPv6 ranges become IPv4 ranges, matching how client addresses are compared.
fn parse_range(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    Some(match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?.trunc())
            }
            _ => IpNet::V6(Ipv6Net::new(v6.addr(), v6.prefix_len()).ok()?.trunc()),
        },
        IpNet::V4(v4) => IpNet::V4(v4.trunc()),
    })
}

/// `::ffff:10.0.0.1` (an IPv4 client on a dual-stack socket) is the IPv4 client `10.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

wasmgate_plugin_sdk::export_plugin!(IpAllow);

#[cfg(test)]
mod tests;
