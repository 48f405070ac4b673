//! Fixture: recurses without bound when the path contains `/recurse`, to test that a stack overflow
//! is a trap that fails the request closed.

use std::sync::atomic::{AtomicU64, Ordering};

use wasmgate_plugin_sdk::prelude::*;

pub struct Recurse;

/// Read every frame, so the end condition is opaque to the optimiser (and never reached).
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Unbounded recursion on the *wasm* stack: no local has its address taken, so Rust's shadow stack in
/// linear memory is not used and the engine's `max_wasm_stack` is what runs out. The result is mixed
/// after the call with two different operations, so LLVM cannot turn it into a loop.
#[inline(never)]
fn deeper(depth: u64, a: u64, b: u64) -> u64 {
    if depth == LIMIT.load(Ordering::Relaxed) {
        return a ^ b;
    }
    let below = deeper(depth + 1, a.wrapping_mul(3) ^ depth, b.wrapping_add(a));
    below.wrapping_add(a).wrapping_mul(b | 1)
}

impl Plugin for Recurse {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, InitError> {
        Ok(Recurse)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        if req.path.contains("/recurse") {
            let n = deeper(0, 1, 2);
            return Decision::allow().set_header("x-depth", n.to_string());
        }
        Decision::allow()
    }
}

wasmgate_plugin_sdk::export_plugin!(Recurse);
