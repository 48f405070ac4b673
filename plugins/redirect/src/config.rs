//! Config: raw serde shape → validated `Rule`, so the hook never meets an invalid combination.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// `config = { from = "/", to = "https://chat.example.org/", status = "permanent" }` or
/// `config = { https = true, port = 8443 }`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path prefix, matched on whole segments (default `/`).
    pub from: Option<String>,
    /// Target URL (or absolute path); the rest of the path after `from` and the query are appended.
    pub to: Option<String>,
    /// `permanent` (301), `temp` (302, the default, as in Apache), `seeother` (303), `gone` (410),
    /// or one of the codes 301, 302, 303, 307, 308, 410.
    pub status: Option<Status>,
    /// Redirect plain-http requests to https on the same host, path and query.
    #[serde(default)]
    pub https: bool,
    /// Port for the https URL (omitted from the URL when 443 or not given).
    pub port: Option<u16>,
}

/// A redirect status, written as Apache's keyword or as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

pub const GONE: u16 = 410;
const ALLOWED: [u16; 6] = [301, 302, 303, 307, 308, GONE];

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StatusVisitor)
    }
}

struct StatusVisitor;

impl Visitor<'_> for StatusVisitor {
    type Value = Status;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"permanent\", \"temp\", \"seeother\", \"gone\" or one of 301, 302, 303, 307, 308, 410")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Status, E> {
        match v {
            "permanent" => Ok(Status(301)),
            "temp" => Ok(Status(302)),
            "seeother" => Ok(Status(303)),
            "gone" => Ok(Status(GONE)),
            _ => v
                .parse::<u64>()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
                .and_then(|n| self.visit_u64(n)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Status, E> {
        match u16::try_from(v) {
            Ok(s) if ALLOWED.contains(&s) => Ok(Status(s)),
            _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Status, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }
}

/// What the plugin does, checked once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Apache `Redirect`: `from` prefix → `to` + rest of path + query.
    Prefix {
        from: String,
        to: String,
        status: u16,
    },
    /// `Redirect gone`: a body-less 410 for paths under `from`.
    Gone { from: String },
    /// Plain http → `https://host[:port]/same/path?query`.
    Https {
        from: String,
        port: Option<u16>,
        status: u16,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    FromNotAbsolute(String),
    MissingTo,
    ToWithGone,
    ToWithHttps,
    BadTo(String),
    PortWithoutHttps,
    GoneWithHttps,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::FromNotAbsolute(s) => write!(f, "`from` must start with `/`, got `{s}`"),
            ConfigError::MissingTo => f.write_str("`to` is required (or set `https = true`, or `status = \"gone\"`)"),
            ConfigError::ToWithGone => f.write_str("`status = \"gone\"` takes no `to`"),
            ConfigError::ToWithHttps => f.write_str("`https = true` takes no `to`: it keeps host, path and query"),
            ConfigError::BadTo(s) => write!(f, "`to` must be an absolute URL (`https://host/…`) or a path starting with `/`, got `{s}`"),
            ConfigError::PortWithoutHttps => f.write_str("`port` only applies with `https = true`"),
            ConfigError::GoneWithHttps => f.write_str("`status = \"gone\"` cannot be combined with `https = true`"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn validate(self) -> Result<Rule, ConfigError> {
        let from = self.from.unwrap_or_else(|| "/".to_owned());
        if !from.starts_with('/') {
            return Err(ConfigError::FromNotAbsolute(from));
        }
        // Apache's default for `Redirect` without a status.
        let status = self.status.map_or(302, |s| s.0);
        if self.https {
            if self.to.is_some() {
                return Err(ConfigError::ToWithHttps);
            }
            if status == GONE {
                return Err(ConfigError::GoneWithHttps);
            }
            return Ok(Rule::Https {
                from,
                port: self.port,
                status,
            });
        }
        if self.port.is_some() {
            return Err(ConfigError::PortWithoutHttps);
        }
        match (status, self.to) {
            (GONE, None) => Ok(Rule::Gone { from }),
            (GONE, Some(_)) => Err(ConfigError::ToWithGone),
            (_, None) => Err(ConfigError::MissingTo),
            (status, Some(to)) if is_target(&to) => Ok(Rule::Prefix { from, to, status }),
            (_, Some(to)) => Err(ConfigError::BadTo(to)),
        }
    }
}

/// An absolute URL with a scheme and a host, or an absolute path; no whitespace or control bytes.
fn is_target(to: &str) -> bool {
    if to.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return false;
    }
    if to.starts_with('/') {
        return !to.starts_with("//");
    }
    match to.split_once("://") {
        Some((scheme, rest)) => {
            let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            scheme_ok && !rest.is_empty() && !rest.starts_with('/')
        }
        None => false,
    }
}
