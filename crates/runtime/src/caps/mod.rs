//! The host's side of what plugins may use (the traits are `wasmgate_plugins::caps`): the system
//! clock, an in-process key-value store, and outbound HTTP through the upstream client and the
//! owner's egress connector. [`HostCaps`] lives as long as the server; [`HostGrants`] is what one
//! owner's chains are built with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmgate_config::PluginConfig;
use wasmgate_plugins::caps::{Capabilities, Clock, Grants};

use crate::upstream::client::Upstream;
use crate::upstream::egress::Connector;

pub mod kv;
pub mod outbound;

/// How long a plugin's outbound call may take to connect (its whole call is bounded by its own
/// timeout as well).
pub const OUTBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The system's clocks; `monotonic` counts from when this clock was made.
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall(&self) -> Duration {
        std::time::UNIX_EPOCH.elapsed().unwrap_or_default()
    }
}

/// What outlives one runtime: the clock, the local store (whose namespaces live while a plugin
/// using them does, so state survives a reload that keeps or replaces the plugin), and the client
/// outbound calls go through.
pub struct HostCaps {
    pub clock: Arc<dyn Clock>,
    pub kv: Arc<kv::LocalKv>,
    pub client: Arc<Upstream>,
}

/// The capabilities of one owner's entries: its egress connector, and its names for namespacing.
pub struct HostGrants<'a> {
    pub caps: &'a HostCaps,
    pub site: &'a str,
    pub tenant: Option<&'a str>,
    pub via: &'a Connector,
}

impl Grants for HostGrants<'_> {
    fn capabilities(&self, entry: &PluginConfig, chain: &str, index: usize) -> Capabilities {
        let ns = kv::NamespaceId {
            tenant: self.tenant.map(str::to_string),
            site: self.site.to_string(),
            chain: chain.to_string(),
            index,
            plugin: entry.name.clone(),
        };
        // No entry is granted an outbound origin yet (issue 18 adds `allowed_outbound`): every
        // call is denied, naming the URL, which is the default that must hold anyway.
        let allowed: Vec<outbound::Origin> = Vec::new();
        let mut terms = Sha256::new();
        terms.update(self.via.scope().to_be_bytes());
        for o in &allowed {
            terms.update(o.to_string().as_bytes());
            terms.update([0]);
        }
        Capabilities {
            clock: self.caps.clock.clone(),
            kv: Some(self.caps.kv.namespace(ns)),
            outbound: Some(Arc::new(outbound::HttpOutbound::new(
                self.caps.client.clone(),
                self.via.clone(),
                allowed,
                outbound::MAX_RESPONSE_BYTES,
            ))),
            terms: terms.finalize().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use wasmgate_config::{OnError, PluginLimits, PluginSource};

    fn entry(name: &str) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            source: PluginSource::Builtin("headers".into()),
            config: serde_json::json!({}),
            on_error: OnError::Deny,
            limits: PluginLimits::default(),
            files: wasmgate_config::FileScope::operator(&std::env::temp_dir()),
            confined: None,
            location: "test:1:1".into(),
        }
    }

    fn host() -> HostCaps {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        HostCaps {
            kv: Arc::new(kv::LocalKv::new(clock.clone(), Default::default())),
            clock,
            client: crate::upstream::client::UpstreamCache::new(crate::Lifecycle::default())
                .get(OUTBOUND_CONNECT_TIMEOUT, None)
                .unwrap(),
        }
    }

    fn tenant(name: &str, allow: &[wasmgate_config::egress::Allow]) -> Connector {
        let metrics = wasmgate_observe::metrics::Metrics::new();
        Connector::Tenant(Arc::new(crate::upstream::egress::EgressPolicy::new(
            name,
            allow,
            Arc::default(),
            &metrics,
        )))
    }

    fn grants<'a>(
        caps: &'a HostCaps,
        site: &'a str,
        tenant: Option<&'a str>,
        via: &'a Connector,
    ) -> HostGrants<'a> {
        HostGrants {
            caps,
            site,
            tenant,
            via,
        }
    }

    async fn put(c: &Capabilities, key: &str, value: &'static [u8]) {
        let kv = c.kv.as_ref().unwrap();
        kv.set(key, Bytes::from_static(value), None).await.unwrap();
    }

    async fn read(c: &Capabilities, key: &str) -> Option<Bytes> {
        c.kv.as_ref().unwrap().get(key).await.unwrap()
    }

    /// Two tenants may both have a site `shop` with a plugin `auth`: their namespaces are still
    /// theirs. Two entries of one name in one chain are two namespaces; the same entry asked
    /// again (its next instance, its reloaded self) is the same one.
    #[tokio::test]
    async fn every_entry_of_every_owner_has_its_own_namespace() {
        let caps = host();
        let (evil, victim) = (tenant("evil", &[]), tenant("victim", &[]));
        let grants = |tenant, via| grants(&caps, "shop", tenant, via);
        let theirs = grants(Some("victim"), &victim).capabilities(&entry("auth"), "", 0);
        put(&theirs, "session", b"secret").await;
        let mine = grants(Some("evil"), &evil).capabilities(&entry("auth"), "", 0);
        assert_eq!(read(&mine, "session").await, None, "another tenant's keys");
        let operator = grants(None, &Connector::Operator).capabilities(&entry("auth"), "", 0);
        assert_eq!(read(&operator, "session").await, None, "a tenant's keys");
        let twin = grants(Some("victim"), &victim).capabilities(&entry("auth"), "", 1);
        assert_eq!(
            read(&twin, "session").await,
            None,
            "a second entry of the same name"
        );
        let route = grants(Some("victim"), &victim).capabilities(&entry("auth"), "/api", 0);
        assert_eq!(read(&route, "session").await, None, "a route's chain");
        let again = grants(Some("victim"), &victim).capabilities(&entry("auth"), "", 0);
        assert_eq!(
            read(&again, "session").await.as_deref(),
            Some(&b"secret"[..])
        );
    }

    /// What was granted is in `terms`: other egress allowances, other terms (a kept plugin must
    /// not keep a reach its tenant lost).
    #[tokio::test]
    async fn terms_follow_the_egress_policy() {
        let caps = host();
        let net = wasmgate_config::egress::Allow::Net {
            net: "10.1.0.0/16".parse().unwrap(),
            port: None,
        };
        let (narrow, wide) = (tenant("t", &[]), tenant("t", &[net]));
        let terms = |via: &Connector| {
            grants(&caps, "s", Some("t"), via)
                .capabilities(&entry("p"), "", 0)
                .terms
        };
        assert_eq!(terms(&narrow), terms(&tenant("t", &[])));
        assert_ne!(terms(&narrow), terms(&wide));
        assert_ne!(terms(&narrow), terms(&Connector::Operator));
    }
}
