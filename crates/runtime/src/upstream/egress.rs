//! Tenant egress: the one way a tenant-originated connection leaves wasmgate. A tenant's backend (and,
//! later, a plugin's outbound call or an upstream's re-resolution) is reached through
//! [`Connector::connect`], which resolves the name, judges every address it resolved to against the
//! tenant's [`EgressPolicy`], and connects only to allowed ones — so a name that resolves (or is
//! re-pointed, DNS rebinding) to loopback, link-local, the metadata address, a private range the
//! operator did not allow, or wasmgate's own listeners is refused at connect time, whatever it
//! resolved to when the config was loaded. Literal addresses are refused earlier, when the tenant's
//! file is loaded (`config::egress::check_literal`), with the file, line and reason.
//!
//! The operator's own routes go through [`Connector::Operator`], which filters nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use wasmgate_config::egress::{check_resolved, Allow, OwnAddrs};

/// What one tenant may connect to, and whom to blame.
#[derive(Debug)]
pub struct EgressPolicy {
    pub tenant: Arc<str>,
    allow: Arc<[Allow]>,
    own: Arc<OwnAddrs>,
    refused: Counter,
    scope: u128,
}

impl EgressPolicy {
    pub fn new(
        tenant: &str,
        allow: &[Allow],
        own: Arc<OwnAddrs>,
        metrics: &wasmgate_observe::metrics::Metrics,
    ) -> EgressPolicy {
        EgressPolicy {
            tenant: tenant.into(),
            allow: allow.into(),
            own,
            refused: metrics
                .tenant_egress_refused
                .get_or_create(&wasmgate_observe::metrics::TenantOnlyLabels {
                    tenant: tenant.to_string(),
                })
                .clone(),
            scope: scope_id(tenant, allow),
        }
    }

    /// May a connection to backend `host` (as written in the config) go to `addr`? The reason when not.
    pub fn check(&self, host: &str, addr: SocketAddr) -> Result<(), String> {
        check_resolved(&self.allow, &self.own, host, addr)
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
    pub fn scope(&self) -> u128 {
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

/// A stable id per distinct (tenant, allowances): pooled connections are shared within one id only,
/// so a connection one policy allowed is never handed to a request under another policy. 128 bits
/// of SHA-256 over the tenant and its allowances: no table that grows with every policy a tenant
/// tries, and no collision a tenant could search for (64 bits would be a birthday search away).
fn scope_id(tenant: &str, allow: &[Allow]) -> u128 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    for a in allow {
        h.update(b"\n");
        h.update(a.to_string().as_bytes());
    }
    let digest = h.finalize();
    // Never 0, the operator's scope.
    u128::from_be_bytes(digest[..16].try_into().expect("16 bytes")).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &[&str]) -> Vec<Allow> {
        list.iter().map(|s| Allow::parse(s).unwrap()).collect()
    }

    #[test]
    fn names_are_judged_by_what_they_resolve_to() {
        let own = Arc::new(OwnAddrs::default());
        let p = EgressPolicy::new(
            "t",
            &allow(&["api.internal:8443"]),
            own.clone(),
            &Default::default(),
        );
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
        let q = EgressPolicy::new(
            "t",
            &allow(&["api.internal:8443"]),
            own.clone(),
            &Default::default(),
        );
        let r = EgressPolicy::new(
            "u",
            &allow(&["api.internal:8443"]),
            own,
            &Default::default(),
        );
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
        let closed = Connector::Tenant(Arc::new(EgressPolicy::new(
            "t",
            &[],
            own.clone(),
            &Default::default(),
        )));
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
            &Default::default(),
        )));
        let s = open
            .connect(&format!("localhost:{port}"), "localhost")
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
    }
}
