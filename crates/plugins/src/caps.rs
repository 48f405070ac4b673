//! What a plugin may do beyond computing: read a clock, keep state, call out over HTTP.
//!
//! The traits live here, beside the host functions that offer them to guests, and are implemented
//! above this layer (`wasmgate_runtime::caps`), which owns what they need: the upstream client, the
//! tenant egress policy, the stores. So the plugin layer never imports the layers that serve
//! requests, and a test can hand a plugin a fake clock or store.
//!
//! A plugin gets its [`Capabilities`] from the [`Grants`] of its owner, per chain entry: what an
//! entry was not granted is `None`, and the host function that would use it answers with an error.
//! Futures are boxed (`BoxFuture`): these calls are I/O, microseconds at the very least, where one
//! allocation does not show, and boxing keeps the traits object-safe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmgate_config::PluginConfig;
use wasmgate_core::body::BoxError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Time as a plugin sees it.
pub trait Clock: Send + Sync {
    /// Time since a fixed origin (the host's start, say): only differences mean anything.
    fn monotonic(&self) -> Duration;
    /// Time since the Unix epoch (zero if the system clock is set before it).
    fn wall(&self) -> Duration;
}

/// Why a key-value call failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("the store is unavailable")]
    Unavailable(#[source] BoxError),
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("a value of {size} bytes is over this namespace's {max}-byte limit")]
    ValueTooLarge { size: usize, max: usize },
    #[error("a key of {size} bytes is over the {max}-byte limit")]
    KeyTooLarge { size: usize, max: usize },
    #[error("the value under `{0}` is not a 64-bit integer")]
    NotANumber(String),
    #[error("incrementing `{0}` overflows a 64-bit integer")]
    Overflow(String),
}

/// One namespace of a key-value store: a plugin entry's own keys, which no other entry (and no
/// other tenant) can name. Shaped like `wasi:keyvalue` (store, atomics, cas); the TTLs are our
/// extension of it. `ttl: None` keeps a value until it is deleted or evicted.
pub trait KeyValue: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, KvError>>;
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), KvError>>;
    /// Whether there was a value to delete.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>>;
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>>;
    /// Add `delta` to the integer under `key` (a missing key counts as 0; `ttl` applies only when
    /// the call creates it) and return the new value.
    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, KvError>>;
    /// Store `new` only if the current value is `expected` (`None`: the key is absent); whether it
    /// was stored.
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Bytes>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, KvError>>;
}

/// A request a plugin sends: an absolute URL, and a body it holds whole.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: http::Method,
    pub url: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The answer, read whole (up to the grant's bound).
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Why an outbound call failed. `Denied` is the plugin's own doing (a URL it was not granted) and
/// names the URL; the others are the far side's.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("outbound call to `{url}` denied: {reason}")]
    Denied { url: String, reason: String },
    #[error("could not connect to `{url}`")]
    Connect {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("`{url}` did not answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("the answer from `{url}` is over the {max}-byte limit")]
    TooLarge { url: String, max: usize },
    #[error("the exchange with `{url}` failed")]
    Protocol {
        url: String,
        #[source]
        source: BoxError,
    },
}

/// HTTP calls out of a plugin, limited to what its entry was granted.
pub trait OutboundHttp: Send + Sync {
    /// Send `req` and read the answer whole, all within `timeout`.
    fn send(
        &self,
        req: OutboundRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<OutboundResponse, OutboundError>>;
}

/// What one plugin entry may use. Cloned into each of its instances.
#[derive(Clone)]
pub struct Capabilities {
    pub clock: Arc<dyn Clock>,
    pub kv: Option<Arc<dyn KeyValue>>,
    pub outbound: Option<Arc<dyn OutboundHttp>>,
    /// A digest of what was granted: a plugin kept across a reload must have been granted the
    /// same (a narrowed allow-list or egress policy gets a fresh plugin, never the old reach).
    pub terms: [u8; 32],
}

/// Hands out capabilities for the entries of one owner's chains (made by the layer that builds
/// them, which knows the owner's egress policy and stores). An entry is `entry`, the `index`-th
/// of chain `chain` (a route's path, `""` for the site's own): two entries of one chain are two
/// grantees even when they are the same plugin with the same name.
pub trait Grants: Send + Sync {
    fn capabilities(&self, entry: &PluginConfig, chain: &str, index: usize) -> Capabilities;
}

/// For this crate's tests: the system's clock, and nothing else granted.
#[cfg(test)]
pub(crate) struct ClockOnly;

#[cfg(test)]
impl Clock for ClockOnly {
    fn monotonic(&self) -> Duration {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
    fn wall(&self) -> Duration {
        std::time::UNIX_EPOCH.elapsed().unwrap_or_default()
    }
}

#[cfg(test)]
impl Grants for ClockOnly {
    fn capabilities(&self, _: &PluginConfig, _: &str, _: usize) -> Capabilities {
        Capabilities {
            clock: Arc::new(ClockOnly),
            kv: None,
            outbound: None,
            terms: [0; 32],
        }
    }
}
