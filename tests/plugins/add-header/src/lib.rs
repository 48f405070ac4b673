//! Fixture: sets request header `name: value` and response header `x-plugin-version: value`, so a
//! test can see both that the plugin ran and which version of it served (hot reload).
//!
//! With `cache_on = "<header>"` it declares a decision cache keyed by that header (`cache_ttl_ms`,
//! default 60 s) and appends `#<n>` to the value, `n` counting its real calls: a test sees which
//! answers came from the host's cache.

use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub cache_on: Option<String>,
    #[serde(default)]
    pub cache_ttl_ms: Option<u64>,
}

pub struct AddHeader(Config, u32);

impl Plugin for AddHeader {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        Ok(AddHeader(config, 0))
    }

    fn decision_cache(&self) -> Option<DecisionCache> {
        Some(DecisionCache {
            key: vec![RequestPart::Header(self.0.cache_on.clone()?)],
            ttl: std::time::Duration::from_millis(self.0.cache_ttl_ms.unwrap_or(60_000)),
        })
    }

    fn on_request(&mut self, _req: &Request) -> Decision {
        if self.0.cache_on.is_none() {
            return Decision::allow().set_header(&self.0.name, &self.0.value);
        }
        self.1 += 1;
        Decision::allow().set_header(&self.0.name, format!("{}#{}", self.0.value, self.1 - 1))
    }

    fn on_response(&mut self, _req: &RequestInfo, _resp: &ResponseHead) -> Vec<HeaderOp> {
        vec![HeaderOp::set("x-plugin-version", &self.0.value)]
    }
}

wasmgate_plugin_sdk::export_plugin!(AddHeader);
