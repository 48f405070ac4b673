//! Config: raw serde shape → validated header edits.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use wasmgate_plugin_sdk::{Header, HeaderOp, RequestInfo};

use crate::template::{Template, TemplateError};

/// `config.request = { set = {..}, append = {..}, remove = [..] }`, same for `config.response`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub request: Option<Section>,
    pub response: Option<Section>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Replace every header of that name.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Add a header, keeping those already there.
    #[serde(default)]
    pub append: BTreeMap<String, String>,
    /// Remove every header of these names.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Headers the proxy owns: connection management and message framing. Changing them from a plugin
/// would break the connection or WebSocket upgrades, so they are refused at start-up.
pub const FORBIDDEN: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "http2-settings",
];

/// Validated edits of one section, applied in this order: remove, set, append.
#[derive(Debug, Default)]
pub struct Edits {
    remove: Vec<String>,
    set: Vec<(String, Template)>,
    append: Vec<(String, Template)>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.append.is_empty()
    }

    /// The request parts the rendered edits depend on; `None` if one differs for every request.
    pub fn parts(&self) -> Option<Vec<wasmgate_plugin_sdk::RequestPart>> {
        let mut parts = Vec::new();
        for (_, t) in self.set.iter().chain(&self.append) {
            for p in t.parts()? {
                if !parts.contains(&p) {
                    parts.push(p);
                }
            }
        }
        Some(parts)
    }

    /// Whether the edits are the same for every request (no value uses a variable).
    pub fn is_fixed(&self) -> bool {
        self.set
            .iter()
            .chain(&self.append)
            .all(|(_, t)| t.is_fixed())
    }

    pub fn render(&self, req: &RequestInfo) -> Vec<HeaderOp> {
        let remove = self.remove.iter().map(HeaderOp::remove);
        let set = self
            .set
            .iter()
            .map(|(n, t)| HeaderOp::set(n, t.render(req)));
        let append = self
            .append
            .iter()
            .map(|(n, t)| HeaderOp::append(n, t.render(req)));
        remove.chain(set).chain(append).collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Neither section has anything to do.
    Nothing,
    BadName {
        at: String,
        name: String,
    },
    Forbidden {
        at: String,
        name: String,
    },
    BadValue {
        at: String,
        error: TemplateError,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Nothing => f.write_str("nothing to do: configure `request` and/or `response` with `set`, `append` or `remove`"),
            ConfigError::BadName { at, name } => write!(f, "{at}: `{name}` is not a valid header name"),
            ConfigError::Forbidden { at, name } => write!(f, "{at}: `{name}` is managed by the proxy (connection or framing) and cannot be changed by a plugin"),
            ConfigError::BadValue { at, error } => write!(f, "{at}: {error}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Section {
    /// `section` is `request` or `response`, for messages.
    pub fn validate(self, section: &str) -> Result<Edits, ConfigError> {
        let remove = self
            .remove
            .into_iter()
            .enumerate()
            .map(|(i, n)| name(format!("{section}.remove[{i}]"), n))
            .collect::<Result<_, _>>()?;
        Ok(Edits {
            remove,
            set: values(section, "set", self.set)?,
            append: values(section, "append", self.append)?,
        })
    }
}

fn values(
    section: &str,
    kind: &str,
    map: BTreeMap<String, String>,
) -> Result<Vec<(String, Template)>, ConfigError> {
    map.into_iter()
        .map(|(n, v)| {
            let at = format!("{section}.{kind}.{n}");
            let template = Template::parse(&v).map_err(|error| ConfigError::BadValue {
                at: at.clone(),
                error,
            })?;
            Ok((name(at, n)?, template))
        })
        .collect()
}

fn name(at: String, name: String) -> Result<String, ConfigError> {
    if !Header::is_valid_name(&name) {
        return Err(ConfigError::BadName { at, name });
    }
    let lower = name.to_ascii_lowercase();
    if FORBIDDEN.contains(&lower.as_str()) {
        return Err(ConfigError::Forbidden { at, name });
    }
    Ok(lower)
}
