//! Fixture: sets request header `name: value` and response header `x-plugin-version: value`, so a
//! test can see both that the plugin ran and which version of it served (hot reload).

use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    pub value: String,
}

pub struct AddHeader(Config);

impl Plugin for AddHeader {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        Ok(AddHeader(config))
    }

    fn on_request(&mut self, _req: &Request) -> Decision {
        Decision::allow().set_header(&self.0.name, &self.0.value)
    }

    fn on_response(&mut self, _req: &RequestInfo, _resp: &ResponseHead) -> Vec<HeaderOp> {
        vec![HeaderOp::set("x-plugin-version", &self.0.value)]
    }
}

wasmgate_plugin_sdk::export_plugin!(AddHeader);
