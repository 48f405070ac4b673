//! `basic-auth`: HTTP Basic authentication against an htpasswd file. See `README.md`.

mod htpasswd;

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::Deserialize;
use wasmgate_plugin_sdk::prelude::*;
use wasmgate_plugin_sdk::{
    read_config_text, report_config_problem, verify_password, PasswordVerdict,
};

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

/// Above this bcrypt cost an uncached check takes a noticeable slice of a host core: warn.
const SLOW_COST: u32 = 12;

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    BadHeader(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
}

/// The outcome of checking credentials.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Ok,
    Wrong,
    /// The host refused to check: this client failed too often. Retry after this many seconds.
    Throttled(u32),
}

impl Plugin for BasicAuth {
    type Config = Config;

    fn new(c: Config) -> Result<Self, InitError> {
        let text = read_config_text(&c.htpasswd)?;
        // Line by line: a bad line is reported and grants nothing; the rest (and every removal)
        // applies. Refusing the whole file would keep the previous version, removed users included.
        let (users, refused) = htpasswd::parse(&c.htpasswd, &text);
        for e in &refused {
            report_config_problem(&c.htpasswd, e.line as u32, &e.problem);
        }
        if users.is_empty() {
            report_config_problem(&c.htpasswd, 0, "no usable user: every request is refused");
        }
        for (user, hash) in &users {
            if let Some(cost) = hash.bcrypt_cost().filter(|c| *c > SLOW_COST) {
                log(Level::Warn, format!(
                    "basic-auth: user `{user}` has bcrypt cost {cost}: each uncached check costs 2^{cost} rounds of a host core; consider `htpasswd -B -C 10`"
                ));
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
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(vec!["authorization".to_owned()])
    }

    /// Set on every request that passes; removed by the host if the plugin is skipped.
    fn identity_headers(&self) -> Vec<String> {
        self.forward_user.iter().cloned().collect()
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        let found = req.header("authorization").and_then(credentials);
        let check = match &found {
            Some((user, password)) => self.check(user, password),
            None => Check::Wrong,
        };
        match (check, found) {
            (Check::Ok, Some((user, _))) => {
                let d = Decision::allow();
                match &self.forward_user {
                    Some(h) => d.set_header(h, user),
                    None => d,
                }
            }
            (Check::Throttled(secs), _) => Decision::respond(429)
                .header("retry-after", secs.to_string())
                .text("too many failed logins from your address; try again later\n"),
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
    /// The host hashes (natively, off this plugin's time limit), remembers successes and throttles
    /// an address that keeps failing.
    fn check(&self, user: &str, password: &[u8]) -> Check {
        // An unknown user is still asked about (with no hash), so the host counts the failure.
        let hash = self.users.get(user).map_or("", |h| h.hash.as_str());
        match verify_password(hash, password) {
            Ok(PasswordVerdict::Match) => Check::Ok,
            Ok(PasswordVerdict::Mismatch) => Check::Wrong,
            Ok(PasswordVerdict::Throttled { retry_after_secs }) => {
                Check::Throttled(retry_after_secs)
            }
            Err(e) => {
                log(
                    Level::Warn,
                    format!("basic-auth: cannot check user `{user}`'s hash: {e}"),
                );
                Check::Wrong
            }
        }
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
