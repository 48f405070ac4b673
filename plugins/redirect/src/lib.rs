//! `redirect`: Apache `Redirect` semantics, or plain http → https. See `README.md`.

mod config;

use wasmgate_plugin_sdk::prelude::*;

pub use config::{Config, ConfigError, Rule, Status};

pub struct Redirect {
    rule: Rule,
}

impl Plugin for Redirect {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        Ok(Redirect {
            rule: config.validate()?,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    /// Path, query, scheme and host are request facts; no header is read.
    fn request_headers(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        match &self.rule {
            Rule::Prefix { from, to, status } => match rest_after(from, &req.path) {
                Some(rest) => Decision::redirect(*status, join(to, rest, req.query.as_deref())),
                None => Decision::allow(),
            },
            Rule::Gone { from } => match rest_after(from, &req.path) {
                Some(_) => Decision::respond(config::GONE),
                None => Decision::allow(),
            },
            Rule::Https { from, port, status } => {
                // Already on https: going on avoids a redirect loop on sites that serve both.
                if req.scheme.eq_ignore_ascii_case("https") || rest_after(from, &req.path).is_none()
                {
                    return Decision::allow();
                }
                let host = req.host();
                if host.is_empty() {
                    return Decision::respond(400).text("missing Host header\n");
                }
                let port = match port {
                    Some(p) if *p != 443 => format!(":{p}"),
                    _ => String::new(),
                };
                let mut url = format!("https://{host}{port}{}", encode_path(&req.path));
                if let Some(q) = &req.query {
                    url.push('?');
                    url.push_str(q);
                }
                Decision::redirect(*status, url)
            }
        }
    }
}

/// If `path` is under `from` on whole segments (`/a` matches `/a` and `/a/x`, not `/ab`), the rest of
/// the path after `from`.
fn rest_after<'p>(from: &str, path: &'p str) -> Option<&'p str> {
    let rest = path.strip_prefix(from)?;
    if from.ends_with('/') || rest.is_empty() || rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// `to` + rest + `?query`, without doubling the slash between them (Apache would send `//`, which
/// nobody wants). A query or fragment that `to` has stays in place: the rest goes before them and the
/// request's query is joined onto `to`'s with `&`.
fn join(to: &str, rest: &str, query: Option<&str>) -> String {
    let (to, fragment) = match to.split_once('#') {
        Some((t, f)) => (t, Some(f)),
        None => (to, None),
    };
    let (base, to_query) = match to.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (to, None),
    };
    let rest = encode_path(rest);
    let mut url = base.to_owned();
    match rest.strip_prefix('/') {
        Some(r) if url.ends_with('/') => url.push_str(r),
        _ => url.push_str(&rest),
    }
    let queries: Vec<&str> = to_query.into_iter().chain(query).collect();
    if !queries.is_empty() {
        url.push('?');
        url.push_str(&queries.join("&"));
    }
    if let Some(f) = fragment {
        url.push('#');
        url.push_str(f);
    }
    url
}

/// The host hands us a normalised path that may hold decoded bytes (spaces, `?`, non-ASCII); put
/// them back in %XX form so the `location` header is a valid URL. Existing `%` escapes stay.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

wasmgate_plugin_sdk::export_plugin!(Redirect);

#[cfg(test)]
mod tests;
