//! Fixture: never returns from `on_request` when the path contains `/spin`, to test the deadline.

use std::hint::black_box;

use wasmgate_plugin_sdk::prelude::*;

pub struct Spin;

impl Plugin for Spin {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, InitError> {
        Ok(Spin)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        if req.path.contains("/spin") {
            // black_box keeps the loop observable, so it can't be folded away or treated as UB.
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Decision::allow()
    }
}

wasmgate_plugin_sdk::export_plugin!(Spin);
