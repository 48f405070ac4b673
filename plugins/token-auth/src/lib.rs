//! `token-auth`: bearer / header / query / WebSocket-subprotocol tokens, static or HMAC-signed.
//! See `README.md`.

mod config;
mod secret;

use wasmgate_plugin_sdk::prelude::*;
use wasmgate_plugin_sdk::{limit_decision_cache, wall_now_ms};

use config::Settings;
pub use config::{Config, ConfigError, HmacConfig, MIN_SECRET_LEN, SUBPROTOCOL_PREFIX};
use secret::{verify_signed, Signed};

pub struct TokenAuth {
    s: Settings,
}

/// Where the presented token came from, so `strip` can remove exactly that.
enum Source {
    Header(String),
    Query(String),
    /// The other entries of `sec-websocket-protocol`.
    Subprotocol(Vec<String>),
}

enum Verdict {
    Missing,
    Wrong,
    Expired,
    Valid { subject: Option<String> },
}

impl Plugin for TokenAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        Ok(TokenAuth {
            s: config.validate()?,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    /// The credential's header (and the subprotocol list when tokens may come that way).
    fn request_headers(&self) -> Option<Vec<String>> {
        let mut names = vec![self
            .s
            .header
            .clone()
            .unwrap_or_else(|| "authorization".to_owned())];
        if self.s.subprotocol {
            names.push("sec-websocket-protocol".to_owned());
        }
        Some(names)
    }

    /// Set or removed on every request that passes; removed by the host if the plugin is skipped.
    fn identity_headers(&self) -> Vec<String> {
        self.s.forward_subject.iter().cloned().collect()
    }

    /// The verdict depends only on where a credential may come from — and, for a signed token, on
    /// the clock: its acceptance is limited to the token's remaining lifetime (`check`). Refusals
    /// and static tokens do not change until a reload, which starts a new cache. Answers that strip
    /// a query token rewrite the path, and the host never caches those.
    fn decision_cache(&self) -> Option<DecisionCache> {
        let name = self.s.header.as_deref().unwrap_or("authorization");
        let mut key = vec![RequestPart::Header(name.to_owned()), RequestPart::WebSocket];
        if self.s.query.is_some() {
            key.push(RequestPart::Query);
        }
        if self.s.subprotocol {
            key.push(RequestPart::Header("sec-websocket-protocol".to_owned()));
        }
        Some(DecisionCache {
            key,
            ttl: std::time::Duration::from_secs(60),
        })
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        let found = self.credential(req);
        let verdict = match &found {
            None => Verdict::Missing,
            Some((token, _)) => self.check(token),
        };
        match verdict {
            Verdict::Missing => {
                let realm = self.s.realm.as_deref().unwrap_or(&req.site);
                Decision::respond(401)
                    .header(
                        "www-authenticate",
                        format!("Bearer realm=\"{}\"", quote(realm)),
                    )
                    .text("missing token\n")
            }
            Verdict::Wrong => Decision::respond(403).text("invalid token\n"),
            Verdict::Expired => Decision::respond(403).text("token expired\n"),
            Verdict::Valid { subject } => {
                let mut d = Decision::allow();
                if let Some(h) = &self.s.forward_subject {
                    // Set or remove, never pass through: a client must not choose its own subject.
                    d = match subject {
                        Some(s) => d.set_header(h, s),
                        None => d.remove_header(h),
                    };
                }
                match found {
                    Some((_, source)) if self.s.strip => strip(d, req, source),
                    _ => d,
                }
            }
        }
    }
}

impl TokenAuth {
    /// The first token present: header, then query parameter, then subprotocol entry.
    fn credential(&self, req: &Request) -> Option<(String, Source)> {
        let header = match &self.s.header {
            Some(name) => req
                .header(name)
                .map(|v| (v.trim().to_owned(), name.clone())),
            None => req
                .header("authorization")
                .and_then(bearer)
                .map(|t| (t.to_owned(), "authorization".to_owned())),
        };
        if let Some((token, name)) = header.filter(|(t, _)| !t.is_empty()) {
            return Some((token, Source::Header(name)));
        }
        if let Some(param) = &self.s.query {
            if req.websocket || self.s.query_always {
                if let Some(t) = req.query_param(param).filter(|t| !t.is_empty()) {
                    return Some((t, Source::Query(param.clone())));
                }
            }
        }
        if self.s.subprotocol && req.websocket {
            let entries: Vec<&str> = req
                .header_all("sec-websocket-protocol")
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect();
            let token = entries
                .iter()
                .find_map(|e| e.strip_prefix(SUBPROTOCOL_PREFIX));
            if let Some(t) = token.filter(|t| !t.is_empty()) {
                let others = entries
                    .iter()
                    .filter(|e| !e.starts_with(SUBPROTOCOL_PREFIX))
                    .map(|e| (*e).to_owned())
                    .collect();
                return Some((t.to_owned(), Source::Subprotocol(others)));
            }
        }
        None
    }

    fn check(&self, token: &str) -> Verdict {
        if self.s.tokens.contains(token) {
            return Verdict::Valid { subject: None };
        }
        let Some(secret) = &self.s.secret else {
            return Verdict::Wrong;
        };
        let now_ms = wall_now_ms();
        match verify_signed(secret, token, now_ms / 1000) {
            Signed::Valid { subject, expiry } => {
                // Never reused past the expiry (`now < expiry` in whole seconds).
                let left = expiry.saturating_mul(1000).saturating_sub(now_ms);
                limit_decision_cache(std::time::Duration::from_millis(left));
                Verdict::Valid {
                    subject: Some(subject),
                }
            }
            Signed::Expired { subject } => {
                log(
                    Level::Info,
                    format!("token-auth: expired token for subject `{subject}`"),
                );
                Verdict::Expired
            }
            Signed::Invalid => Verdict::Wrong,
        }
    }
}

/// `Bearer <token>`, the scheme case-insensitive (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Remove the credential from what the backend sees.
fn strip(d: Decision, req: &Request, source: Source) -> Decision {
    match source {
        Source::Header(name) => d.remove_header(name),
        Source::Query(param) => {
            let kept: Vec<&str> = req
                .query
                .as_deref()
                .unwrap_or("")
                .split('&')
                .filter(|pair| {
                    let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    !pair.is_empty() && wasmgate_plugin_sdk::percent_decode(key) != param
                })
                .collect();
            let path = if kept.is_empty() {
                req.path.clone()
            } else {
                format!("{}?{}", req.path, kept.join("&"))
            };
            d.rewrite_path(path)
        }
        Source::Subprotocol(others) if others.is_empty() => {
            d.remove_header("sec-websocket-protocol")
        }
        Source::Subprotocol(others) => d.set_header("sec-websocket-protocol", others.join(", ")),
    }
}

/// Escape a realm for a quoted-string.
fn quote(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

wasmgate_plugin_sdk::export_plugin!(TokenAuth);

#[cfg(test)]
mod tests;
