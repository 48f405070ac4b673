//! Reused `on-request` answers for plugins that declare a `decision-cache` in their registration: the
//! plugin promises its answer depends only on the listed request parts, so an equal request within
//! the TTL gets the same answer without a call (a token check becomes a hash lookup).
//!
//! One map per worker thread (like the instance pools: no lock contention, no cache-line traffic),
//! bounded: a full map is emptied rather than tracked per entry, which keeps a flood of distinct keys
//! (random tokens) from costing more than a call each. A reload keeps a cache only with its plugin,
//! when nothing that went into the plugin changed (`LoadedPlugin::serves_as`): a changed entry or
//! a changed file it read gets a new plugin, so a new cache.
//!
//! What is never kept, because replaying it for a request equal only in the key would lie: an answer
//! that rewrites the path (the new path is built from the request's path, which the key may not
//! hold: `token-auth`'s `strip` of a query token), and an answer the plugin limited to zero with
//! `limit-decision-cache`. An answer limited to less than the TTL (a signed token's acceptance,
//! until the token expires) is kept only that long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};

use super::bindings;
use super::convert::Decision;
use wasmgate_core::request::RequestState;

/// Answers kept per plugin and worker.
const MAX_ENTRIES: usize = 4096;

enum Part {
    Header(HeaderName),
    ClientAddr,
    Method,
    Scheme,
    Authority,
    Path,
    Query,
    Route,
    WebSocket,
}

/// Answers by key, with the instant they stop being valid. std's SipHash with a random key, on
/// purpose: the keys are client-controlled (tokens), so a cheaper unkeyed hash would invite
/// collision floods.
type Answers = HashMap<Vec<u8>, (Instant, Arc<Decision>)>;

pub struct DecisionCache {
    key: Vec<Part>,
    ttl: Duration,
    shards: Box<[Mutex<Answers>]>,
}

impl DecisionCache {
    pub fn new(c: bindings::DecisionCache, shards: usize) -> Result<DecisionCache, String> {
        use bindings::RequestPart as P;
        let key = c
            .key
            .into_iter()
            .map(|p| {
                Ok(match p {
                    P::Header(n) => {
                        Part::Header(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                            format!("decision cache keyed by `{n}`, which is not a header name")
                        })?)
                    }
                    P::ClientAddr => Part::ClientAddr,
                    P::Method => Part::Method,
                    P::Scheme => Part::Scheme,
                    P::Authority => Part::Authority,
                    P::Path => Part::Path,
                    P::Query => Part::Query,
                    P::Route => Part::Route,
                    P::Websocket => Part::WebSocket,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(DecisionCache {
            key,
            ttl: Duration::from_millis(u64::from(c.ttl_ms.max(1))),
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
        })
    }

    /// The request's key: each part tagged and length-prefixed, so no two requests that differ in a
    /// listed part can produce the same bytes.
    pub fn key(&self, s: &RequestState, headers: &HeaderMap) -> Vec<u8> {
        let mut k = Vec::with_capacity(64);
        let mut field = |tag: u8, bytes: &[u8]| {
            k.push(tag);
            k.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            k.extend_from_slice(bytes);
        };
        for part in &self.key {
            match part {
                Part::Header(name) => {
                    let values = headers.get_all(name);
                    field(b'h', &(values.iter().count() as u32).to_le_bytes());
                    for v in values {
                        field(b'v', v.as_bytes());
                    }
                }
                Part::ClientAddr => match s.client {
                    std::net::IpAddr::V4(a) => field(b'c', &a.octets()),
                    std::net::IpAddr::V6(a) => field(b'c', &a.octets()),
                },
                Part::Method => field(b'm', s.method.as_str().as_bytes()),
                Part::Scheme => field(b's', s.scheme.as_str().as_bytes()),
                Part::Authority => field(b'a', s.authority.as_bytes()),
                Part::Path => field(b'p', s.path.as_bytes()),
                Part::Query => match &s.query {
                    Some(q) => field(b'q', q.as_bytes()),
                    None => field(b'Q', &[]),
                },
                Part::Route => field(b'r', s.route.as_bytes()),
                Part::WebSocket => field(b'w', &[u8::from(s.websocket)]),
            }
        }
        k
    }

    /// The answer for `key` if it is still valid at `now`.
    pub fn get(&self, shard: usize, key: &[u8], now: Instant) -> Option<Arc<Decision>> {
        let map = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((until, action)) if now < *until => Some(action.clone()),
            _ => None,
        }
    }

    /// Keep the answer for `key`, given at `now`, for the TTL or `max_age` if shorter — unless it
    /// must not be kept at all (see the module's doc).
    pub fn put(
        &self,
        shard: usize,
        key: Vec<u8>,
        decision: Arc<Decision>,
        now: Instant,
        max_age: Option<Duration>,
    ) {
        let ttl = max_age.map_or(self.ttl, |m| m.min(self.ttl));
        if ttl.is_zero() || decision.rewrites_path() {
            return;
        }
        let mut map = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, (now + ttl, decision));
    }
}
