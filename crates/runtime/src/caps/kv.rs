//! The `local` key-value store: in process, one namespace per plugin entry and owner, each bounded
//! in bytes with least-recently-used eviction, values with TTLs expiring on the store's clock.
//!
//! A namespace lives while some plugin holding it does: the store keeps only weak references, so a
//! plugin removed from the config frees its keys, while one kept or replaced at a reload (the new
//! runtime is built while the old one still serves) finds its namespace where it left it. Each
//! namespace has its own lock: entries of different plugins never contend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use wasmgate_plugins::caps::{BoxFuture, Clock, KeyValue, KvError};

/// Whose keys: a tenant's (or the operator's, `None`) plugin entry on one site and chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceId {
    pub tenant: Option<String>,
    pub site: String,
    /// The route's path, `""` for the site's own chain.
    pub chain: String,
    /// The entry's place in its chain: two entries of one name never share keys. (Moving an
    /// entry within its chain starts its namespace afresh, as it does its warm instances.)
    pub index: usize,
    pub plugin: String,
}

/// Bounds of every namespace.
#[derive(Clone, Copy, Debug)]
pub struct KvLimits {
    /// Keys, values and a fixed overhead per entry ([`ENTRY_OVERHEAD`]), summed.
    pub max_bytes: usize,
    pub max_key: usize,
    pub max_value: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_bytes: 4 << 20,
            max_key: 512,
            max_value: 64 << 10,
        }
    }
}

/// What an entry costs beyond its key and value bytes (the map slot, the LRU index, the `Bytes`
/// header), so a flood of empty values is bounded too.
pub const ENTRY_OVERHEAD: usize = 96;

pub struct LocalKv {
    clock: Arc<dyn Clock>,
    limits: KvLimits,
    spaces: Mutex<HashMap<NamespaceId, Weak<Namespace>>>,
}

impl LocalKv {
    pub fn new(clock: Arc<dyn Clock>, limits: KvLimits) -> LocalKv {
        LocalKv {
            clock,
            limits,
            spaces: Mutex::default(),
        }
    }

    /// The namespace `id`, shared with every live holder of the same id.
    pub fn namespace(&self, id: NamespaceId) -> Arc<Namespace> {
        let mut spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        spaces.retain(|_, w| w.strong_count() > 0);
        if let Some(ns) = spaces.get(&id).and_then(Weak::upgrade) {
            return ns;
        }
        let ns = Arc::new(Namespace {
            clock: self.clock.clone(),
            limits: self.limits,
            inner: Mutex::default(),
        });
        spaces.insert(id, Arc::downgrade(&ns));
        ns
    }

    /// Namespaces some plugin holds right now.
    pub fn namespaces(&self) -> usize {
        let spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        spaces.values().filter(|w| w.strong_count() > 0).count()
    }
}

pub struct Namespace {
    clock: Arc<dyn Clock>,
    limits: KvLimits,
    inner: Mutex<Space>,
}

#[derive(Default)]
struct Space {
    entries: HashMap<String, Entry>,
    /// Last use → key: the first is the one to evict.
    lru: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
}

struct Entry {
    value: Bytes,
    /// On the store's monotonic clock.
    expires: Option<Duration>,
    used: u64,
}

fn cost(key: &str, value: &Bytes) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Space {
    /// The live entry under `key`, marked used; an expired one is removed.
    fn live(&mut self, key: &str, now: Duration) -> Option<&mut Entry> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some(e) => e.expires.is_some_and(|t| t <= now),
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(key)?;
        self.lru.remove(&e.used);
        self.lru.insert(tick, key.to_string());
        e.used = tick;
        Some(e)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.lru.remove(&e.used);
        self.bytes -= cost(key, &e.value);
        Some(e)
    }

    /// Store `value` under `key`, evicting the least recently used entries until it fits.
    fn put(&mut self, key: &str, value: Bytes, expires: Option<Duration>, max_bytes: usize) {
        self.remove(key);
        let need = cost(key, &value);
        while self.bytes + need > max_bytes {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&victim) {
                self.bytes -= cost(&victim, &e.value);
            }
        }
        self.tick += 1;
        self.lru.insert(self.tick, key.to_string());
        self.bytes += need;
        self.entries.insert(
            key.to_string(),
            Entry {
                value,
                expires,
                used: self.tick,
            },
        );
    }
}

impl Namespace {
    fn check(&self, key: &str, value: Option<&Bytes>) -> Result<(), KvError> {
        if key.len() > self.limits.max_key {
            return Err(KvError::KeyTooLarge {
                size: key.len(),
                max: self.limits.max_key,
            });
        }
        // One entry may take at most the whole namespace.
        let max = self.limits.max_value.min(
            self.limits
                .max_bytes
                .saturating_sub(key.len() + ENTRY_OVERHEAD),
        );
        match value {
            Some(v) if v.len() > max => Err(KvError::ValueTooLarge { size: v.len(), max }),
            _ => Ok(()),
        }
    }

    /// Run `f` on the space at the store's current time.
    fn with<T>(&self, f: impl FnOnce(&mut Space, Duration) -> T) -> T {
        let now = self.clock.monotonic();
        let mut space = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut space, now)
    }

    fn expiry(&self, ttl: Option<Duration>) -> Option<Duration> {
        ttl.map(|t| self.clock.monotonic().saturating_add(t))
    }

    /// Bytes held (keys, values and overhead).
    pub fn bytes(&self) -> usize {
        self.with(|s, _| s.bytes)
    }

    fn get_now(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        self.check(key, None)?;
        Ok(self.with(|s, now| s.live(key, now).map(|e| e.value.clone())))
    }

    fn set_now(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), KvError> {
        self.check(key, Some(&value))?;
        let expires = self.expiry(ttl);
        let max = self.limits.max_bytes;
        self.with(|s, _| s.put(key, value, expires, max));
        Ok(())
    }

    fn delete_now(&self, key: &str) -> Result<bool, KvError> {
        self.check(key, None)?;
        Ok(self.with(|s, now| {
            let live = s.live(key, now).is_some();
            s.remove(key);
            live
        }))
    }

    fn increment_now(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        self.check(key, None)?;
        let expires = self.expiry(ttl);
        let max = self.limits.max_bytes;
        self.with(|s, now| {
            let (current, expires) = match s.live(key, now) {
                None => (0, expires),
                Some(e) => {
                    let n = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or_else(|| KvError::NotANumber(key.to_string()))?;
                    (n, e.expires)
                }
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow(key.to_string()))?;
            s.put(key, Bytes::from(next.to_string()), expires, max);
            Ok(next)
        })
    }

    fn cas_now(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        self.check(key, Some(&new))?;
        let expires = self.expiry(ttl);
        let max = self.limits.max_bytes;
        Ok(self.with(|s, now| {
            let current = s.live(key, now).map(|e| e.value.clone());
            if current != expected {
                return false;
            }
            s.put(key, new, expires, max);
            true
        }))
    }
}

/// Every call completes at once (the store is in memory): the futures are ready when made.
impl KeyValue for Namespace {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        Box::pin(std::future::ready(self.get_now(key)))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(std::future::ready(self.set_now(key, value, ttl)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(std::future::ready(self.delete_now(key)))
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(std::future::ready(self.get_now(key).map(|v| v.is_some())))
    }

    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        Box::pin(std::future::ready(self.increment_now(key, delta, ttl)))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Bytes>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(std::future::ready(self.cas_now(key, expected, new, ttl)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test moves by hand.
    #[derive(Default)]
    struct Manual(AtomicU64);

    impl Manual {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for Manual {
        fn monotonic(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
        fn wall(&self) -> Duration {
            self.monotonic()
        }
    }

    fn id(tenant: Option<&str>, plugin: &str) -> NamespaceId {
        NamespaceId {
            tenant: tenant.map(str::to_string),
            site: "s".into(),
            chain: "".into(),
            index: 0,
            plugin: plugin.into(),
        }
    }

    fn store(limits: KvLimits) -> (Arc<Manual>, LocalKv) {
        let clock = Arc::new(Manual::default());
        (clock.clone(), LocalKv::new(clock, limits))
    }

    fn block<T>(f: BoxFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn set_get_delete_exists() {
        let (_, kv) = store(KvLimits::default());
        let ns = kv.namespace(id(None, "p"));
        assert_eq!(block(ns.get("a")).unwrap(), None);
        block(ns.set("a", Bytes::from_static(b"1"), None)).unwrap();
        assert_eq!(block(ns.get("a")).unwrap().as_deref(), Some(&b"1"[..]));
        assert!(block(ns.exists("a")).unwrap());
        assert!(block(ns.delete("a")).unwrap());
        assert!(!block(ns.delete("a")).unwrap());
        assert!(!block(ns.exists("a")).unwrap());
        assert_eq!(ns.bytes(), 0, "deleting gives its bytes back");
    }

    #[test]
    fn namespaces_never_see_each_other() {
        let (_, kv) = store(KvLimits::default());
        let mine = kv.namespace(id(Some("evil"), "p"));
        let theirs = kv.namespace(id(Some("victim"), "p"));
        let operator = kv.namespace(id(None, "p"));
        block(theirs.set("session", Bytes::from_static(b"secret"), None)).unwrap();
        assert_eq!(block(mine.get("session")).unwrap(), None);
        assert_eq!(block(operator.get("session")).unwrap(), None);
        assert!(!block(mine.delete("session")).unwrap());
        assert!(block(theirs.exists("session")).unwrap());
        // The same id is the same namespace (a plugin's next instance, or its reloaded self).
        let again = kv.namespace(id(Some("victim"), "p"));
        assert!(block(again.exists("session")).unwrap());
    }

    #[test]
    fn a_namespace_lives_while_a_plugin_holds_it() {
        let (_, kv) = store(KvLimits::default());
        let ns = kv.namespace(id(None, "gone"));
        block(ns.set("k", Bytes::from_static(b"v"), None)).unwrap();
        assert_eq!(kv.namespaces(), 1);
        drop(ns);
        assert_eq!(kv.namespaces(), 0);
        let fresh = kv.namespace(id(None, "gone"));
        assert_eq!(
            block(fresh.get("k")).unwrap(),
            None,
            "freed with its last holder"
        );
    }

    #[test]
    fn values_expire_on_the_store_clock() {
        let (clock, kv) = store(KvLimits::default());
        let ns = kv.namespace(id(None, "p"));
        block(ns.set("t", Bytes::from_static(b"x"), Some(Duration::from_secs(10)))).unwrap();
        clock.advance(Duration::from_secs(9));
        assert!(block(ns.exists("t")).unwrap());
        clock.advance(Duration::from_secs(1));
        assert!(!block(ns.exists("t")).unwrap(), "expired at its TTL");
        assert_eq!(ns.bytes(), 0, "an expired entry is removed when seen");
        // A counter's TTL is set when it is created, not pushed back by each increment.
        assert_eq!(
            block(ns.increment("c", 1, Some(Duration::from_secs(5)))).unwrap(),
            1
        );
        clock.advance(Duration::from_secs(3));
        assert_eq!(
            block(ns.increment("c", 1, Some(Duration::from_secs(5)))).unwrap(),
            2
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            block(ns.increment("c", 1, None)).unwrap(),
            1,
            "a new window"
        );
    }

    #[test]
    fn a_full_namespace_evicts_the_least_recently_used() {
        let entry = 1 + 10 + ENTRY_OVERHEAD;
        let (_, kv) = store(KvLimits {
            max_bytes: 3 * entry,
            ..KvLimits::default()
        });
        let ns = kv.namespace(id(Some("t"), "p"));
        let v = || Bytes::from_static(b"0123456789");
        for k in ["a", "b", "c"] {
            block(ns.set(k, v(), None)).unwrap();
        }
        block(ns.get("a")).unwrap(); // a is now the most recently used
        block(ns.set("d", v(), None)).unwrap();
        assert!(
            !block(ns.exists("b")).unwrap(),
            "b was the least recently used"
        );
        for k in ["a", "c", "d"] {
            assert!(block(ns.exists(k)).unwrap(), "{k} kept");
        }
        assert!(ns.bytes() <= 3 * entry);
        // A flood of keys never takes more than the bound, and no other namespace pays for it.
        let other = kv.namespace(id(Some("u"), "p"));
        block(other.set("mine", v(), None)).unwrap();
        for i in 0..10_000 {
            block(ns.set(&format!("{i:x}"), Bytes::new(), None)).unwrap();
        }
        assert!(ns.bytes() <= 3 * entry);
        assert!(block(other.exists("mine")).unwrap());
    }

    #[test]
    fn oversized_keys_and_values_are_refused_and_store_nothing() {
        let (_, kv) = store(KvLimits {
            max_bytes: 4096,
            max_key: 8,
            max_value: 100,
        });
        let ns = kv.namespace(id(None, "p"));
        let err = block(ns.set("k", Bytes::from(vec![0; 101]), None)).unwrap_err();
        assert!(
            matches!(
                err,
                KvError::ValueTooLarge {
                    size: 101,
                    max: 100
                }
            ),
            "{err}"
        );
        let err = block(ns.get("a-very-long-key")).unwrap_err();
        assert!(
            matches!(err, KvError::KeyTooLarge { size: 15, max: 8 }),
            "{err}"
        );
        assert_eq!(ns.bytes(), 0);
    }

    #[test]
    fn increment_and_compare_and_swap() {
        let (_, kv) = store(KvLimits::default());
        let ns = kv.namespace(id(None, "p"));
        assert_eq!(block(ns.increment("n", 5, None)).unwrap(), 5);
        assert_eq!(block(ns.increment("n", -7, None)).unwrap(), -2);
        block(ns.set("s", Bytes::from_static(b"abc"), None)).unwrap();
        assert!(matches!(
            block(ns.increment("s", 1, None)),
            Err(KvError::NotANumber(_))
        ));
        block(ns.set("max", Bytes::from(i64::MAX.to_string()), None)).unwrap();
        assert!(matches!(
            block(ns.increment("max", 1, None)),
            Err(KvError::Overflow(_))
        ));
        // CAS: absent → set; a stale expectation fails and changes nothing.
        assert!(block(ns.compare_and_swap("lock", None, Bytes::from_static(b"a"), None)).unwrap());
        assert!(!block(ns.compare_and_swap("lock", None, Bytes::from_static(b"b"), None)).unwrap());
        assert!(!block(ns.compare_and_swap(
            "lock",
            Some(Bytes::from_static(b"b")),
            Bytes::from_static(b"c"),
            None
        ))
        .unwrap());
        assert!(block(ns.compare_and_swap(
            "lock",
            Some(Bytes::from_static(b"a")),
            Bytes::from_static(b"c"),
            None
        ))
        .unwrap());
        assert_eq!(block(ns.get("lock")).unwrap().as_deref(), Some(&b"c"[..]));
    }
}
