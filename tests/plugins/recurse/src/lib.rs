//! Fixture: recurses without bound when the path contains `/recurse`, to test that a stack overflow
//! is a trap that fails the request closed.

use std::hint::black_box;

use wasmgate_plugin_sdk::prelude::*;

pub struct Recurse;

/// Each frame keeps a buffer alive across the call and uses the call's result, so the optimiser can
/// neither turn this into a loop (no tail call) nor drop it. The end condition is opaque
/// (`black_box`) and never reached in practice: the stack runs out long before.
#[inline(never)]
fn deeper(depth: u64) -> u64 {
    let mut frame = [0u8; 128];
    frame[0] = depth as u8;
    black_box(&mut frame);
    if depth == black_box(u64::MAX) {
        return 0;
    }
    let below = deeper(black_box(depth + 1));
    below.wrapping_add(u64::from(frame[1]))
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
            let n = deeper(0);
            return Decision::allow().set_header("x-depth", n.to_string());
        }
        Decision::allow()
    }
}

wasmgate_plugin_sdk::export_plugin!(Recurse);
