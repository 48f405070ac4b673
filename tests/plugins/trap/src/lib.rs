//! Fixture: traps (a Rust panic aborts, which is a wasm `unreachable` trap).
//! - path contains `/trap-response`: allows the request, then traps in `on_response`;
//! - otherwise path contains `/trap`: traps in `on_request`;
//! - anything else is allowed.
//!
//! `config = { identity = ["x-remote-user"] }` declares those as its identity headers, which the host
//! removes when it skips the plugin (`on_error = "allow"`).

use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    identity: Vec<String>,
}

pub struct Trap(Config);

impl Plugin for Trap {
    type Config = Config;

    fn new(c: Config) -> Result<Self, InitError> {
        Ok(Trap(c))
    }

    fn identity_headers(&self) -> Vec<String> {
        self.0.identity.clone()
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
