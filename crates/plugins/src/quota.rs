//! Live plugin instances per tenant. Every instance (warm in a pool, or made on demand for a call)
//! takes a slot of the shared pooling allocator; a tenant may hold at most its quota of them, and the
//! quotas of all tenants together stay within [`TENANT_POOL`], so the rest of the pool is always
//! there for the operator's plugins and for anyone's reload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Slots of the pool (see `config::limits::POOL_INSTANCES`) that tenants' quotas may add up to; the rest is
/// the operator's and the headroom reloads are made in.
pub const TENANT_POOL: usize = wasmgate_config::limits::POOL_INSTANCES as usize * 3 / 4;

/// A tenant's quota: its live count (shared by every version of the tenant, across reloads) and the
/// most it may hold.
#[derive(Debug)]
pub struct InstanceQuota {
    pub live: Arc<AtomicUsize>,
    pub cap: usize,
}

impl InstanceQuota {
    /// The same tenant's counter with the same cap.
    pub fn same_terms(&self, other: &InstanceQuota) -> bool {
        Arc::ptr_eq(&self.live, &other.live) && self.cap == other.cap
    }
}

/// One live instance's slot; released when the instance is dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InstanceQuota {
    /// The quota a tenant's config needs, given each plugin entry's `limits.instances`: the warm
    /// instances its pools can keep, twice over — once for the version serving, once for the next
    /// one being loaded (or for calls beyond the warm ones, under load).
    pub fn needed(entries: impl IntoIterator<Item = usize>) -> usize {
        entries
            .into_iter()
            .map(super::instance::warm_bound)
            .sum::<usize>()
            * 2
    }

    /// A slot, or `None` when the tenant holds its quota already.
    pub fn take(&self) -> Option<Slot> {
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.live.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_until_dropped() {
        let q = InstanceQuota {
            live: Default::default(),
            cap: 2,
        };
        let a = q.take().unwrap();
        let _b = q.take().unwrap();
        assert!(q.take().is_none());
        drop(a);
        assert!(q.take().is_some());
        assert_eq!(q.live.load(Ordering::Relaxed), 1);
    }
}
