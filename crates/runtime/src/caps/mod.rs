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
    fn capabilities(&self, entry: &PluginConfig, chain: &str) -> Capabilities {
        let ns = kv::NamespaceId {
            tenant: self.tenant.map(str::to_string),
            site: self.site.to_string(),
            chain: chain.to_string(),
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
