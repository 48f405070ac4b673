//! Fixture: traps (a Rust panic aborts, which is a wasm `unreachable` trap).
//! - path contains `/trap-response`: allows the request, then traps in `on_response`;
//! - otherwise path contains `/trap`: traps in `on_request`;
//! - anything else is allowed.

use wasmgate_plugin_sdk::prelude::*;

pub struct Trap;

impl Plugin for Trap {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, InitError> {
        Ok(Trap)
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        if req.path.contains("/trap") && !req.path.contains("/trap-response") {
            panic!("fixture-trap: trapping on {}", req.path);
        }
        Decision::allow()
    }

    fn on_response(&mut self, req: &RequestInfo, _resp: &ResponseHead) -> Vec<HeaderOp> {
        if req.path.contains("/trap-response") {
            panic!("fixture-trap: trapping in on_response on {}", req.path);
        }
        Vec::new()
    }
}

wasmgate_plugin_sdk::export_plugin!(Trap);
