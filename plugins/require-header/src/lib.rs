//! `require-header`: a request header must be present and, if values are configured, equal one of
//! them. See `README.md`.

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wasmgate_plugin_sdk::prelude::*;

/// `config = { name = "x-api-key", values = ["k1", "k2"] }`
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header that must be present.
    pub name: String,
    /// Accepted values; empty: any value (presence is enough).
    #[serde(default)]
    pub values: Vec<String>,
    /// Refuse with this status instead of 401 (missing) and 403 (wrong value).
    pub status: Option<u16>,
    /// Remove the header before the request goes on (e.g. an API key the backend must not see).
    #[serde(default)]
    pub strip: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    BadName(String),
    EmptyValue(usize),
    BadStatus(u16),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadName(n) => write!(f, "`name`: `{n}` is not a valid header name"),
            ConfigError::EmptyValue(i) => write!(f, "values[{i}]: must not be empty"),
            ConfigError::BadStatus(s) => write!(f, "`status` must be between 400 and 599, got {s}"),
        }
    }
}

impl std::error::Error for ConfigError {}

pub struct RequireHeader {
    name: String,
    /// SHA-256 of each accepted value: fixed-size digests compared in constant time, every one of
    /// them on every check, so neither a value's length nor which one matched shows in the timing.
    values: Vec<[u8; 32]>,
    status: Option<u16>,
    strip: bool,
}

impl Plugin for RequireHeader {
    type Config = Config;

    fn new(c: Config) -> Result<Self, InitError> {
        if !Header::is_valid_name(&c.name) {
            return Err(ConfigError::BadName(c.name).into());
        }
        if let Some(i) = c.values.iter().position(String::is_empty) {
            return Err(ConfigError::EmptyValue(i).into());
        }
        if let Some(s) = c.status.filter(|s| !(400..=599).contains(s)) {
            return Err(ConfigError::BadStatus(s).into());
        }
        Ok(RequireHeader {
            name: c.name.to_ascii_lowercase(),
            values: c.values.iter().map(|v| digest(v)).collect(),
            status: c.status,
            strip: c.strip,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(vec![self.name.clone()])
    }

    /// The verdict is a function of the header's values alone.
    fn decision_cache(&self) -> Option<DecisionCache> {
        Some(DecisionCache {
            key: vec![RequestPart::Header(self.name.clone())],
            ttl: std::time::Duration::from_secs(60),
        })
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        let Some(value) = req.header(&self.name) else {
            return Decision::respond(self.status.unwrap_or(401))
                .text(format!("missing header {}\n", self.name));
        };
        if !self.values.is_empty() && !self.accepts(value) {
            return Decision::respond(self.status.unwrap_or(403))
                .text(format!("wrong value for header {}\n", self.name));
        }
        if self.strip {
            Decision::allow().remove_header(&self.name)
        } else {
            Decision::allow()
        }
    }
}

impl RequireHeader {
    fn accepts(&self, value: &str) -> bool {
        let d = digest(value);
        self.values
            .iter()
            .fold(subtle::Choice::from(0), |found, v| found | v.ct_eq(&d))
            .into()
    }
}

fn digest(v: &str) -> [u8; 32] {
    Sha256::digest(v.as_bytes()).into()
}

wasmgate_plugin_sdk::export_plugin!(RequireHeader);

#[cfg(test)]
mod tests;
