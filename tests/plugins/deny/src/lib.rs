//! Fixture: refuses every request with `401` and `www-authenticate: Bearer`.

use wasmgate_plugin_sdk::prelude::*;

pub struct Deny;

impl Plugin for Deny {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, InitError> {
        Ok(Deny)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&mut self, _req: &Request) -> Decision {
        Decision::respond(401).header("www-authenticate", "Bearer")
    }
}

wasmgate_plugin_sdk::export_plugin!(Deny);
