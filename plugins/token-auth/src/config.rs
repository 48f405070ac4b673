//! Config: raw serde shape → validated `Settings` (tokens loaded, names checked).

use std::fmt;

use serde::Deserialize;
use wasmgate_plugin_sdk::{read_config_text, report_config_problem, ConfigFileError, Header};

use crate::secret::TokenSet;

/// See `README.md` for every option.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Accepted tokens.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// A file with one token per line (`#` comments and blank lines ignored).
    pub tokens_file: Option<String>,
    /// Read the token from this header's raw value instead of `authorization: Bearer <token>`.
    pub header: Option<String>,
    /// Also accept the token in this query parameter — for WebSocket requests only, unless
    /// `query_always` is set (query strings end up in logs and browser history).
    pub query: Option<String>,
    #[serde(default)]
    pub query_always: bool,
    /// For WebSockets: also accept the token as a `bearer.<token>` entry of `sec-websocket-protocol`.
    #[serde(default)]
    pub subprotocol: bool,
    /// Accept signed, expiring tokens `<subject>.<expiry>.<hex hmac>`.
    pub hmac: Option<HmacConfig>,
    /// The realm in `www-authenticate: Bearer realm="…"` (default: the site's name).
    pub realm: Option<String>,
    /// On success, send the signed token's subject to the backend in this header. The header is
    /// removed from every request that passes, so a client cannot supply its own.
    pub forward_subject: Option<String>,
    /// Remove the credential (header, query parameter or subprotocol entry) before the backend.
    #[serde(default)]
    pub strip: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    pub secret: Option<String>,
    /// A file holding the secret (surrounding whitespace ignored), to keep it out of the config.
    pub secret_file: Option<String>,
}

const BAD_TOKEN: &str = "a token must be non-empty, without spaces or control characters";

/// Shorter HMAC secrets can be brute-forced offline from a single token.
pub const MIN_SECRET_LEN: usize = 16;
/// The prefix of the `sec-websocket-protocol` entry that carries a token.
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Where the token is looked for, in this order.
#[derive(Debug)]
pub struct Settings {
    pub tokens: TokenSet,
    pub secret: Option<Vec<u8>>,
    /// `None`: `authorization: Bearer <token>`; `Some(name)`: the raw value of that header.
    pub header: Option<String>,
    pub query: Option<String>,
    pub query_always: bool,
    pub subprotocol: bool,
    pub realm: Option<String>,
    pub forward_subject: Option<String>,
    pub strip: bool,
}

#[derive(Debug)]
pub enum ConfigError {
    NoTokens,
    BadToken { at: String },
    File(ConfigFileError),
    SecretChoice,
    ShortSecret { len: usize },
    BadHeader { field: &'static str, name: String },
    EmptyQuery,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoTokens => f.write_str("configure `tokens`, `tokens_file` or `hmac`"),
            ConfigError::BadToken { at } => write!(f, "{at}: {BAD_TOKEN}"),
            ConfigError::File(e) => e.fmt(f),
            ConfigError::SecretChoice => f.write_str("`hmac` needs exactly one of `secret` and `secret_file`"),
            ConfigError::ShortSecret { len } => write!(f, "`hmac` secret is {len} bytes; at least {MIN_SECRET_LEN} are required (32 random bytes recommended)"),
            ConfigError::BadHeader { field, name } => write!(f, "`{field}`: `{name}` is not a valid header name"),
            ConfigError::EmptyQuery => f.write_str("`query` must name a query parameter"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigFileError> for ConfigError {
    fn from(e: ConfigFileError) -> Self {
        ConfigError::File(e)
    }
}

impl Config {
    /// Reads `tokens_file` and `hmac.secret_file`, so it must run inside `Plugin::new`.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        if self.tokens.is_empty() && self.tokens_file.is_none() && self.hmac.is_none() {
            return Err(ConfigError::NoTokens);
        }
        let mut tokens = TokenSet::default();
        for (i, t) in self.tokens.iter().enumerate() {
            check_token(t, || format!("tokens[{i}]"))?;
            tokens.insert(t);
        }
        if let Some(file) = &self.tokens_file {
            // Line by line: a bad line is reported and grants nothing, and every other line — and
            // every removal — takes effect. Refusing the whole file would keep the previous version
            // serving, revoked tokens included.
            let text = read_config_text(file)?;
            for (n, line) in text.lines().enumerate() {
                let t = line.trim();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                match check_token(t, || format!("{file} line {}", n + 1)) {
                    Ok(()) => tokens.insert(t),
                    Err(_) => report_config_problem(file, n as u32 + 1, BAD_TOKEN),
                }
            }
        }
        let secret = self.hmac.map(secret).transpose()?;
        if tokens.is_empty() && secret.is_none() {
            // Only reachable with a tokens file (without one, NoTokens was returned above). Its
            // last token was removed (or every line is bad): nobody gets in, which is what the file
            // now says — an error would keep the old tokens working instead.
            let file = self.tokens_file.as_deref().unwrap_or_default();
            report_config_problem(file, 0, "no valid token: every request is refused");
        }
        if self.query.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::EmptyQuery);
        }
        Ok(Settings {
            tokens,
            secret,
            // `header = "authorization"` means the default, Bearer scheme included.
            header: header_name("header", self.header)?.filter(|h| h != "authorization"),
            query: self.query,
            query_always: self.query_always,
            subprotocol: self.subprotocol,
            realm: self.realm,
            forward_subject: header_name("forward_subject", self.forward_subject)?,
            strip: self.strip,
        })
    }
}

fn check_token(t: &str, at: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::BadToken { at: at() });
    }
    Ok(())
}

fn secret(h: HmacConfig) -> Result<Vec<u8>, ConfigError> {
    let secret = match (h.secret, h.secret_file) {
        (Some(s), None) => s,
        (None, Some(file)) => read_config_text(&file)?.trim().to_owned(),
        _ => return Err(ConfigError::SecretChoice),
    };
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError::ShortSecret { len: secret.len() });
    }
    Ok(secret.into_bytes())
}

fn header_name(field: &'static str, name: Option<String>) -> Result<Option<String>, ConfigError> {
    match name {
        Some(name) if !Header::is_valid_name(&name) => Err(ConfigError::BadHeader { field, name }),
        other => Ok(other.map(|n| n.to_ascii_lowercase())),
    }
}
