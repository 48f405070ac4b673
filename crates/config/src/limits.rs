//! The process-wide bounds plugin limits are checked against and rounded to. They live with the
//! config because validation applies them; the engine sizes its pools from the same numbers.

/// The largest linear memory any plugin may have; `limits.memory` is checked against it.
pub const MAX_MEMORY: u64 = 256 << 20;

/// The wasm stack sizes there are engines for: a plugin's `limits.stack` rounds up to one of them, so
/// whatever the configs say, the process has at most this many engines.
pub const STACK_CLASSES: [u64; 5] = [512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20];

/// The smallest class that holds `stack` (the largest for anything beyond).
pub fn stack_class(stack: u64) -> u64 {
    STACK_CLASSES
        .into_iter()
        .find(|&c| c >= stack)
        .unwrap_or(STACK_CLASSES[STACK_CLASSES.len() - 1])
}

/// Instances each engine's pooling allocator has room for.
pub const POOL_INSTANCES: u32 = 1000;

/// The most warm instances one tenant may be allowed (`tenant_limits.max_instances`): a fifth of the
/// pool, so no single tenant's grant can take the room the operator and the others reload in.
pub const TENANT_INSTANCES_MAX: usize = POOL_INSTANCES as usize / 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_sizes_round_up_to_a_few_classes() {
        assert_eq!(stack_class(64 << 10), 512 << 10);
        assert_eq!(stack_class(513 << 10), 1 << 20);
        assert_eq!(stack_class(8 << 20), 8 << 20);
        assert_eq!(stack_class(64 << 20), 8 << 20);
        let distinct: std::collections::HashSet<u64> =
            (1..=128u64).map(|k| stack_class(k << 16)).collect();
        assert_eq!(distinct.len(), STACK_CLASSES.len());
    }
}
