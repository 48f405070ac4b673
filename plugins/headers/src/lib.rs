//! `headers`: set, append and remove request and response headers, with `{variable}` values.
//! See `README.md`.

mod config;
mod template;

use wasmgate_plugin_sdk::prelude::*;

pub use config::{Config, ConfigError, Section, FORBIDDEN};
pub use template::{TemplateError, VARIABLES};

pub struct Headers {
    request: config::Edits,
    response: config::Edits,
}

impl Plugin for Headers {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        let request = config.request.unwrap_or_default().validate("request")?;
        let response = config.response.unwrap_or_default().validate("response")?;
        if request.is_empty() && response.is_empty() {
            return Err(ConfigError::Nothing.into());
        }
        Ok(Headers { request, response })
    }

    /// Only the hooks with something to do, so the host skips the other call entirely. Response
    /// edits without variables are handed to the host as fixed edits: no call per response at all.
    fn hooks(&self) -> Hooks {
        Hooks {
            on_request: !self.request.is_empty(),
            on_response: !self.response.is_empty() && !self.response.is_fixed(),
        }
    }

    /// Values come from the request's facts (`{client_addr}`, …), never from its headers.
    fn request_headers(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    fn response_headers(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    /// Request edits are rendered from request facts only; unless one uses `{request_id}`, equal
    /// facts give equal edits.
    fn decision_cache(&self) -> Option<DecisionCache> {
        Some(DecisionCache {
            key: self.request.parts()?,
            ttl: std::time::Duration::from_secs(60),
        })
    }

    fn fixed_response_edits(&self) -> Vec<HeaderOp> {
        if self.response.is_fixed() {
            self.response.render(&RequestInfo::default())
        } else {
            Vec::new()
        }
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        Decision::Continue(RequestEdits {
            headers: self.request.render(req),
            path: None,
        })
    }

    fn on_response(&mut self, req: &RequestInfo, _resp: &ResponseHead) -> Vec<HeaderOp> {
        self.response.render(req)
    }
}

wasmgate_plugin_sdk::export_plugin!(Headers);

#[cfg(test)]
mod tests;
