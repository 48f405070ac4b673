//! The trait a plugin implements, and the start-up path shared by the wasm glue and the test harness
//! (so a config error reads the same in a unit test as in wasmgate's log).

use std::fmt;

use serde::de::DeserializeOwned;

use crate::decision::Decision;
use crate::types::{HeaderOp, Hooks, Request, RequestInfo, ResponseHead};

/// What `Plugin::new` may fail with. Any error type converts with `?`, and so do `String` and `&str`:
/// `return Err(format!("bad value {x}").into())`.
pub type InitError = Box<dyn std::error::Error + Send + Sync>;

/// A wasmgate policy plugin. One value is one instance: the host may create several (one per worker,
/// or a fresh one after a trap), so keep only caches in `&mut self`, never state that must be shared.
///
/// Hooks run in request order; every hook has a no-op default, so implement only what you need.
pub trait Plugin: Sized + 'static {
    /// The plugin's `config` table from wasmgate's configuration. Use [`NoConfig`] for none, and
    /// `#[serde(deny_unknown_fields)]` so a typo is an error rather than silently ignored.
    type Config: DeserializeOwned;

    /// Build an instance from its config. Files named by the config may be read here (and only here)
    /// with [`crate::read_config_file`]. An error refuses the plugin; at a reload the old version keeps
    /// serving.
    fn new(config: Self::Config) -> Result<Self, InitError>;

    /// The hooks the host should call (both by default). Leaving one out saves a call per request.
    fn hooks(&self) -> Hooks {
        Hooks::BOTH
    }

    /// The request headers `on_request` reads (names, any case). Only these are passed to it, which
    /// makes each call cheaper (a header costs a copy into the plugin per call); `None`, the default,
    /// passes every header. Edits may still set or remove any header.
    fn request_headers(&self) -> Option<Vec<String>> {
        None
    }

    /// The response headers `on_response` reads; `None`, the default, passes every header.
    fn response_headers(&self) -> Option<Vec<String>> {
        None
    }

    /// Response header edits that never change (`strict-transport-security`, …). The host applies them
    /// to every response this plugin's `on_response` is owed, without calling the plugin (after
    /// `on_response` when [`Plugin::hooks`] lists it too).
    fn fixed_response_edits(&self) -> Vec<HeaderOp> {
        Vec::new()
    }

    /// Declare that `on_request` depends only on these parts of the request, so the host may reuse
    /// an answer for an equal request for up to `ttl` without calling the plugin. Only for pure
    /// decisions: no clock beyond `ttl`, no counting, no fact that is not in the key.
    fn decision_cache(&self) -> Option<DecisionCache> {
        None
    }

    /// The request headers this plugin sets or removes to tell the backend who the client is
    /// (`x-remote-user`, …). If the plugin fails and is skipped (`on_error = "allow"`), wasmgate
    /// removes them itself, so a client's own value never reaches the backend in the plugin's stead.
    fn identity_headers(&self) -> Vec<String> {
        Vec::new()
    }

    /// Decide about a request before it reaches the backend.
    fn on_request(&mut self, _req: &Request) -> Decision {
        Decision::allow()
    }

    /// Edit the response headers before they reach the client. Called for every response to a
    /// request whose `on_request` ran (or would have run, if not listed in `hooks`), including
    /// responses that a plugin or the host produced.
    fn on_response(&mut self, _req: &RequestInfo, _resp: &ResponseHead) -> Vec<HeaderOp> {
        Vec::new()
    }
}

/// `Config` for plugins that take none: accepts only an empty table.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// A config that does not fit the plugin's `Config` type.
#[derive(Debug)]
pub struct ConfigError {
    /// Where in the config the problem is, e.g. `tokens[2]` or `hmac.secret`; empty for the top level.
    pub path: String,
    /// What is wrong, in serde's words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid config: {}", self.message)
        } else {
            write!(f, "invalid config at `{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Deserialise a plugin config from the JSON the host passes to `init`. An empty string counts as
/// `{}`.
pub fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, ConfigError> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            path: if path == "." { String::new() } else { path },
            message: strip_position(&inner),
        }
    })
}

/// serde_json appends "at line L column C" of the JSON the host generated, which is not the file the
/// user wrote; the path says where the problem is instead.
fn strip_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match msg.strip_suffix(&suffix) {
        Some(m) if e.line() > 0 => m.to_owned(),
        _ => msg,
    }
}

/// Parse the config and build the plugin: the one start-up path, used by the wasm glue and by
/// `testing`. Errors come back as the message `init` returns to the host.
#[doc(hidden)]
pub fn start<P: Plugin>(config_json: &str) -> Result<(P, Registration), String> {
    let config: P::Config = parse_config(config_json).map_err(|e| e.to_string())?;
    let plugin = crate::host::during_init(|| {
        let plugin = P::new(config)?;
        crate::host::identity_headers(lower_case(plugin.identity_headers()));
        Ok::<P, InitError>(plugin)
    })
    .map_err(|e| e.to_string())?;
    let registration = Registration {
        identity_headers: lower_case(plugin.identity_headers()),
        hooks: plugin.hooks(),
        request_headers: plugin.request_headers().map(lower_case),
        response_headers: plugin.response_headers().map(lower_case),
        fixed_response_edits: plugin.fixed_response_edits(),
        decision_cache: plugin.decision_cache().map(|mut c| {
            for part in &mut c.key {
                if let RequestPart::Header(name) = part {
                    name.make_ascii_lowercase();
                }
            }
            c
        }),
    };
    Ok((plugin, registration))
}

fn lower_case(names: Vec<String>) -> Vec<String> {
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// What a plugin tells the host at start (WIT `registration`), collected from its [`Plugin`] methods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registration {
    pub hooks: Hooks,
    /// Lower-case; `None` = all headers.
    pub request_headers: Option<Vec<String>>,
    pub response_headers: Option<Vec<String>>,
    pub fixed_response_edits: Vec<HeaderOp>,
    pub decision_cache: Option<DecisionCache>,
    /// Lower-case ([`Plugin::identity_headers`]).
    pub identity_headers: Vec<String>,
}

/// A part of the request a cached decision is keyed by (see [`Plugin::decision_cache`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestPart {
    /// Every value of this header.
    Header(String),
    ClientAddr,
    Method,
    Scheme,
    Authority,
    Path,
    Query,
    Route,
    WebSocket,
}

/// `on_request` is a function of `key` alone; its answers may be reused for `ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionCache {
    pub key: Vec<RequestPart>,
    pub ttl: std::time::Duration,
}

impl Registration {
    /// Keep only the headers a hook declared, as the host does before calling it.
    pub fn filter(declared: &Option<Vec<String>>, headers: &[crate::Header]) -> Vec<crate::Header> {
        match declared {
            None => headers.to_vec(),
            Some(names) => headers
                .iter()
                .filter(|h| names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        name: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        values: Vec<String>,
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = parse_config::<Cfg>(r#"{"name":"a","inner":{"values":["x",3]}}"#).unwrap_err();
        assert_eq!(e.path, "inner.values[1]");
        assert_eq!(
            e.to_string(),
            "invalid config at `inner.values[1]`: invalid type: integer `3`, expected a string"
        );
        let e = parse_config::<Cfg>(r#"{"name":"a","nmae":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `nmae`"), "{e}");
        let e = parse_config::<Cfg>("{}").unwrap_err();
        assert_eq!(e.to_string(), "invalid config: missing field `name`");
    }

    #[test]
    fn empty_config_is_empty_table() {
        assert!(parse_config::<NoConfig>("").is_ok());
        assert!(parse_config::<NoConfig>("{}").is_ok());
        assert!(parse_config::<NoConfig>(r#"{"x":1}"#).is_err());
    }
}
