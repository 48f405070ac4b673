//! `basic-auth`: HTTP Basic authentication against an htpasswd file. See `README.md`.

mod htpasswd;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmgate_plugin_sdk::prelude::*;
use wasmgate_plugin_sdk::read_config_text;

pub use htpasswd::{Hash, ParseError};

/// `config = { htpasswd = "users.htpasswd", realm = "chat" }`
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The htpasswd file, relative to the config file's directory.
    pub htpasswd: String,
    /// The realm in `www-authenticate: Basic realm="…"` (default: the site's name).
    pub realm: Option<String>,
    /// Send the authenticated user name to the backend in this header (removed from requests that
    /// pass otherwise, so a client cannot set it).
    pub forward_user: Option<String>,
}

/// Successful checks remembered per instance; past this many the cache starts over, so a client
/// cycling through valid passwords cannot grow memory without bound.
const CACHE_MAX: usize = 1024;
/// Above this bcrypt cost an uncached check takes tens of milliseconds in wasm: warn at start-up.
const SLOW_COST: u32 = 10;

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    NoUsers(String),
    BadHeader(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoUsers(file) => write!(f, "`{file}` has no users"),
            ConfigError::BadHeader(h) => {
                write!(f, "`forward_user`: `{h}` is not a valid header name")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

pub struct BasicAuth {
    users: BTreeMap<String, Hash>,
    realm: Option<String>,
    forward_user: Option<String>,
    /// SHA-256 of `user:password` pairs that verified: bcrypt is deliberately slow, and a browser
    /// sends the same credentials with every request. B-tree collections, not hash maps: std's
    /// `RandomState` would import `wasi:random/insecure-seed`, which a host need not provide.
    verified: BTreeSet<[u8; 32]>,
}

impl Plugin for BasicAuth {
    type Config = Config;

    fn new(c: Config) -> Result<Self, InitError> {
        let text = read_config_text(&c.htpasswd)?;
        let users = htpasswd::parse(&c.htpasswd, &text)?;
        if users.is_empty() {
            return Err(ConfigError::NoUsers(c.htpasswd).into());
        }
        for (user, hash) in &users {
            if let Hash::Bcrypt { cost, .. } = hash {
                if *cost > SLOW_COST {
                    log(Level::Warn, format!(
                        "basic-auth: user `{user}` has bcrypt cost {cost}; each first login costs 2^{cost} rounds, raise the plugin's time limit or re-hash with `htpasswd -B -C 5`"
                    ));
                }
            }
        }
        let forward_user = match c.forward_user {
            Some(h) if !Header::is_valid_name(&h) => return Err(ConfigError::BadHeader(h).into()),
            other => other.map(|h| h.to_ascii_lowercase()),
        };
        Ok(BasicAuth {
            users,
            realm: c.realm,
            forward_user,
            verified: BTreeSet::new(),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(vec!["authorization".to_owned()])
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        match req.header("authorization").and_then(credentials) {
            Some((user, password)) if self.check(&user, &password) => {
                let d = Decision::allow();
                match &self.forward_user {
                    Some(h) => d.set_header(h, user),
                    None => d,
                }
            }
            // Missing and wrong credentials both get the challenge, so the browser asks again.
            _ => {
                let realm = self.realm.as_deref().unwrap_or(&req.site);
                Decision::respond(401)
                    .header(
                        "www-authenticate",
                        format!("Basic realm=\"{}\", charset=\"UTF-8\"", quote(realm)),
                    )
                    .text("authentication required\n")
            }
        }
    }
}

impl BasicAuth {
    fn check(&mut self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update(b":");
        h.update(password);
        let key: [u8; 32] = h.finalize().into();
        if self.verified.contains(&key) {
            return true;
        }
        let ok = hash.verify(password);
        if ok {
            if self.verified.len() >= CACHE_MAX {
                self.verified.clear();
            }
            self.verified.insert(key);
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password). The user must be UTF-8; the password is bytes.
fn credentials(value: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let b64 = b64.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// Escape a realm for a quoted-string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

wasmgate_plugin_sdk::export_plugin!(BasicAuth);

#[cfg(test)]
mod tests;
