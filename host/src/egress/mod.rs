//! Tenant egress: the one way a tenant-originated connection leaves wasmgate. A tenant's backend (and,
//! later, a plugin's outbound call or an upstream's re-resolution) is reached through
//! [`Connector::connect`], which resolves the name, judges every address it resolved to against the
//! tenant's [`EgressPolicy`], and connects only to allowed ones — so a name that resolves (or is
//! re-pointed, DNS rebinding) to loopback, link-local, the metadata address, a private range the
//! operator did not allow, or wasmgate's own listeners is refused at connect time, whatever it
//! resolved to when the config was loaded. Literal addresses are refused earlier, when the tenant's
//! file is loaded ([`check_literal`]), with the file, line and reason.
//!
//! The operator's own routes go through [`Connector::Operator`], which filters nothing.

mod addr;
mod local;
mod rules;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

pub use addr::{classify, Class};
pub use local::{interface_addrs, OwnAddrs};
pub use rules::Allow;

/// What one tenant may connect to, and whom to blame.
#[derive(Debug)]
pub struct EgressPolicy {
    pub tenant: Arc<str>,
    allow: Arc<[Allow]>,
    own: Arc<OwnAddrs>,
    refused: Counter,
    scope: u64,
}

impl EgressPolicy {
    pub fn new(tenant: &str, allow: &[Allow], own: Arc<OwnAddrs>) -> EgressPolicy {
        EgressPolicy {
            tenant: tenant.into(),
            allow: allow.into(),
            own,
            refused: crate::metrics::get()
                .tenant_egress_refused
                .get_or_create(&crate::metrics::TenantOnlyLabels {
                    tenant: tenant.to_string(),
                })
                .clone(),
            scope: scope_id(tenant, allow),
        }
    }

    /// May a connection to backend `host` (as written in the config) go to `addr`? The reason when not.
    pub fn check(&self, host: &str, addr: SocketAddr) -> Result<(), String> {
        judge(&self.allow, &self.own, &[], &bare_host(host), addr)
    }
}

/// How a route reaches its backend: the operator's routes directly, a tenant's through its policy.
#[derive(Debug, Clone)]
pub enum Connector {
    Operator,
    Tenant(Arc<EgressPolicy>),
}

/// Why a connection was not made.
#[derive(Debug)]
pub enum EgressError {
    /// Every address the backend resolved to is forbidden for this tenant.
    Refused { tenant: Arc<str>, reason: String },
    /// The name did not resolve.
    Resolve(std::io::Error),
    /// Every allowed address refused the connection (the last error).
    Connect(std::io::Error),
}

impl Connector {
    /// Connections made through one connector may be shared (pooled) only with connections made
    /// through an equal one: 0 for the operator, else one id per (tenant, allowances).
    pub fn scope(&self) -> u64 {
        match self {
            Connector::Operator => 0,
            Connector::Tenant(p) => p.scope,
        }
    }

    /// Resolve `host:port` (`authority`, as in a URL) and connect to the first address that is
    /// allowed and answers.
    pub async fn connect(&self, authority: &str, host: &str) -> Result<TcpStream, EgressError> {
        let policy = match self {
            Connector::Operator => {
                return TcpStream::connect(authority)
                    .await
                    .map_err(EgressError::Connect)
            }
            Connector::Tenant(p) => p,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
            .await
            .map_err(EgressError::Resolve)?
            .collect();
        let mut last = None;
        let mut reasons = Vec::new();
        for a in addrs {
            if let Err(why) = policy.check(host, a) {
                reasons.push(format!("{a} is {why}"));
                continue;
            }
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(EgressError::Connect(e));
        }
        let reason = if reasons.is_empty() {
            format!("`{authority}` resolved to no address")
        } else {
            format!(
                "`{authority}` resolved only to forbidden addresses: {}",
                reasons.join("; ")
            )
        };
        policy.refused.inc();
        tracing::warn!(tenant = %policy.tenant, backend = %authority, "tenant backend refused by the egress policy: {reason}");
        Err(EgressError::Refused {
            tenant: policy.tenant.clone(),
            reason,
        })
    }
}

/// The load-time check of a tenant backend written as `host` (from a URL, brackets allowed) and
/// `port`: an address literal is judged now; `localhost` (and names under it) stand for loopback;
/// legacy numeric forms (`127.1`, `0x7f000001`), which resolvers read as IPv4 addresses, are refused
/// as ambiguous. Other names are judged after each resolution, at connect time. `binds` are the
/// configured listener and admin addresses (the live ones are in `own`).
pub fn check_literal(
    allow: &[Allow],
    own: &OwnAddrs,
    binds: &[(Arc<str>, SocketAddr)],
    host: &str,
    port: u16,
) -> Result<(), String> {
    let host = bare_host(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return judge(allow, own, binds, &host, SocketAddr::new(ip, port))
            .map_err(|why| format!("`{host}` is {why}"));
    }
    if host == "localhost" || host.ends_with(".localhost") {
        let loopback = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let mut why = Vec::new();
        for ip in loopback {
            match judge(allow, own, binds, &host, SocketAddr::new(ip, port)) {
                Ok(()) => return Ok(()),
                Err(w) => why.push(w),
            }
        }
        return Err(format!(
            "`{host}` resolves to loopback, which is {}",
            why[0]
        ));
    }
    let last = host.rsplit('.').next().unwrap_or_default();
    let numeric = !last.is_empty()
        && (last.chars().all(|c| c.is_ascii_digit())
            || last.len() > 2 && last[..2].eq_ignore_ascii_case("0x"));
    if numeric {
        return Err(format!(
            "`{host}` is a numeric host that resolvers read as an IPv4 address in a legacy form; write the address as a.b.c.d"
        ));
    }
    Ok(())
}

/// The verdict for one address, given the allowances. The reason reads after "… is".
fn judge(
    allow: &[Allow],
    own: &OwnAddrs,
    binds: &[(Arc<str>, SocketAddr)],
    host: &str,
    addr: SocketAddr,
) -> Result<(), String> {
    let ip = addr.ip().to_canonical();
    let port = addr.port();
    if let Some(name) = local::own_socket(own, binds, addr) {
        let what = if &*name == "admin" {
            "the admin endpoint".to_string()
        } else {
            format!("wasmgate's own listener `{name}`")
        };
        return Err(format!("{what}, which a tenant backend may never be"));
    }
    let by_addr = || allow.iter().any(|a| a.covers_addr(ip, port));
    let by_name = || allow.iter().any(|a| a.covers_name(host, port));
    // Classified as written: an IPv6 form of a forbidden IPv4 address is named as such.
    match classify(addr.ip()) {
        Class::Public => Ok(()),
        Class::Private(_) if by_addr() || by_name() => Ok(()),
        Class::Guarded(_) if by_addr() => Ok(()),
        Class::Private(why) => Err(format!(
            "{why}, not allowed for this tenant (the operator can allow it in [tenant_limits.<tenant>] backends)"
        )),
        Class::Guarded(why) => Err(format!(
            "{why}, not allowed for this tenant (only an address range in [tenant_limits.<tenant>] backends can allow it)"
        )),
        Class::Never(why) => Err(format!("{why}, which no backend may be")),
    }
}

/// A URL host as a resolver and the allowances see it: no brackets, lower case, no trailing dot.
fn bare_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// A stable id per distinct (tenant, allowances): pooled connections are shared within one id only,
/// so a connection one policy allowed is never handed to a request under another policy.
fn scope_id(tenant: &str, allow: &[Allow]) -> u64 {
    static IDS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    let key = std::iter::once(tenant.to_string())
        .chain(allow.iter().map(ToString::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    let mut ids = IDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let next = ids.len() as u64 + 1;
    *ids.entry(key).or_insert(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &[&str]) -> Vec<Allow> {
        list.iter().map(|s| Allow::parse(s).unwrap()).collect()
    }

    fn lit(allowed: &[&str], host: &str, port: u16) -> Result<(), String> {
        let own = OwnAddrs::default();
        own.set([
            ("web".to_string(), "127.0.0.1:8080".parse().unwrap()),
            ("admin".to_string(), "127.0.0.1:9901".parse().unwrap()),
        ]);
        check_literal(&allow(allowed), &own, &[], host, port)
    }

    #[test]
    fn literals_are_judged_at_load() {
        assert!(lit(&[], "127.0.0.1", 3000)
            .unwrap_err()
            .contains("loopback"));
        assert!(lit(&[], "[::1]", 3000).unwrap_err().contains("loopback"));
        assert!(lit(&[], "169.254.169.254", 80)
            .unwrap_err()
            .contains("metadata"));
        assert!(lit(&[], "10.1.2.3", 80).unwrap_err().contains("RFC 1918"));
        assert!(lit(&[], "[::ffff:127.0.0.1]", 80)
            .unwrap_err()
            .contains("IPv4-mapped"));
        assert!(lit(&[], "localhost", 80).unwrap_err().contains("loopback"));
        assert!(lit(&[], "app.localhost.", 80)
            .unwrap_err()
            .contains("loopback"));
        assert!(lit(&[], "127.1", 80).unwrap_err().contains("legacy form"));
        assert!(lit(&[], "0x7f000001", 80)
            .unwrap_err()
            .contains("legacy form"));
        assert!(lit(&[], "93.184.216.34", 80).is_ok());
        assert!(
            lit(&[], "example.com", 80).is_ok(),
            "names are judged at connect time"
        );

        assert!(lit(&["10.1.0.0/16"], "10.1.2.3", 80).is_ok());
        assert!(lit(&["10.1.0.0/16"], "10.2.0.1", 80).is_err());
        assert!(lit(&["127.0.0.1:3000"], "127.0.0.1", 3000).is_ok());
        assert!(lit(&["127.0.0.1:3000"], "localhost", 3000).is_ok());
        assert!(lit(&["127.0.0.1:3000"], "127.0.0.1", 3001).is_err());
        // A name entry opens private ranges for that name only, never loopback.
        assert!(lit(&["localhost"], "localhost", 80).is_err());
        // Allowing all of loopback still leaves the proxy's own sockets out.
        let own = lit(&["127.0.0.0/8"], "127.0.0.1", 8080).unwrap_err();
        assert!(own.contains("own listener `web`"), "{own}");
        let admin = lit(&["127.0.0.0/8"], "127.0.0.1", 9901).unwrap_err();
        assert!(admin.contains("admin endpoint"), "{admin}");
        assert!(
            lit(&["0.0.0.0/0"], "0.0.0.0", 80).is_err(),
            "unspecified is never allowed"
        );
    }

    #[test]
    fn names_are_judged_by_what_they_resolve_to() {
        let own = Arc::new(OwnAddrs::default());
        let p = EgressPolicy::new("t", &allow(&["api.internal:8443"]), own.clone());
        assert!(p
            .check("api.internal", "10.0.0.7:8443".parse().unwrap())
            .is_ok());
        assert!(p
            .check("API.internal.", "10.0.0.7:8443".parse().unwrap())
            .is_ok());
        assert!(p
            .check("api.internal", "10.0.0.7:443".parse().unwrap())
            .is_err());
        assert!(p
            .check("other.internal", "10.0.0.7:8443".parse().unwrap())
            .is_err());
        assert!(p
            .check("api.internal", "127.0.0.1:8443".parse().unwrap())
            .is_err());
        assert!(p
            .check("api.internal", "169.254.169.254:8443".parse().unwrap())
            .is_err());
        assert!(p
            .check("anything", "93.184.216.34:80".parse().unwrap())
            .is_ok());
        let q = EgressPolicy::new("t", &allow(&["api.internal:8443"]), own.clone());
        let r = EgressPolicy::new("u", &allow(&["api.internal:8443"]), own);
        assert_eq!(p.scope, q.scope);
        assert_ne!(p.scope, r.scope);
        assert_ne!(
            Connector::Tenant(Arc::new(r)).scope(),
            Connector::Operator.scope()
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let own = Arc::new(OwnAddrs::default());
        let closed = Connector::Tenant(Arc::new(EgressPolicy::new("t", &[], own.clone())));
        match closed
            .connect(&format!("localhost:{port}"), "localhost")
            .await
        {
            Err(EgressError::Refused { reason, .. }) => {
                assert!(reason.contains("loopback"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let open = Connector::Tenant(Arc::new(EgressPolicy::new(
            "t",
            &allow(&[&format!("127.0.0.1:{port}")]),
            own,
        )));
        let s = open
            .connect(&format!("localhost:{port}"), "localhost")
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
    }
}
