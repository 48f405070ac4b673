//! A plugin's memory ceiling, enforced by the store's limiter. A refused growth is a trap whose
//! error is a [`MemoryLimit`], so a failed call is classified by type, not by wasmtime's wording.

use wasmtime::ResourceLimiter;

/// The error a call ends with when the guest asked for more memory than it may have (or than the
/// pooling allocator's slot holds).
#[derive(Debug)]
pub struct MemoryLimit {
    /// What the guest asked for, when the limiter saw the request (not when the allocator failed).
    pub desired: Option<usize>,
    pub limit: usize,
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.desired {
            Some(d) => write!(
                f,
                "memory limit: asked for {d} bytes, may have {}",
                self.limit
            ),
            None => write!(
                f,
                "memory limit: could not grow within {} bytes",
                self.limit
            ),
        }
    }
}

impl std::error::Error for MemoryLimit {}

pub struct MemoryLimiter {
    limit: usize,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> Self {
        MemoryLimiter { limit }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = maximum.map_or(self.limit, |m| m.min(self.limit));
        if desired > limit {
            return Err(MemoryLimit {
                desired: Some(desired),
                limit,
            }
            .into());
        }
        Ok(true)
    }

    /// The allocator could not grow it (its slot is smaller than our limit): the same ceiling.
    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(MemoryLimit {
            desired: None,
            limit: self.limit,
        }
        .into())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|m| desired <= m))
    }
}
