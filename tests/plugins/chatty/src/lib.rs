//! Fixture: writes its configured `message` on every request through `log()` (at WARN) and to its
//! stdout, and with a path containing `/panic` panics with it (the panic text goes to stderr and the
//! trap to the host's failure line) — a tenant's text in every place it can reach the log.

use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub message: String,
}

pub struct Chatty(Config);

impl Plugin for Chatty {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        Ok(Chatty(config))
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        log(Level::Warn, &self.0.message);
        println!("{}", self.0.message);
        if req.path.contains("/panic") {
            panic!("{}", self.0.message);
        }
        Decision::allow()
    }
}

wasmgate_plugin_sdk::export_plugin!(Chatty);
