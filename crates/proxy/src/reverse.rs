//! ProxyPassReverse: backend response headers that point into the backend are rewritten to point at
//! the public URL the client used, so redirects never leak `127.0.0.1:3000`.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LOCATION, LOCATION, SET_COOKIE};

use wasmgate_config::Backend;
use wasmgate_runtime::router::{map_path, prefix_matches};

static URI_HEADER: HeaderName = HeaderName::from_static("uri");

/// Everything needed to map one backend URL back to the public one.
pub struct ReverseMap<'a> {
    pub backend: &'a Backend,
    /// The route's public prefix.
    pub route_path: &'a str,
    /// What the client used: `https` and `chat.example.org:8443`.
    pub public_scheme: &'a str,
    pub public_authority: &'a str,
    /// With preserve_host the backend builds URLs from the client's host but usually with its own
    /// (plain) scheme; those are ours too.
    pub preserve_host: bool,
}

impl ReverseMap<'_> {
    /// Rewrite `Location`, `Content-Location` and `URI`; and `Set-Cookie` paths when `cookies`.
    pub fn apply(&self, headers: &mut HeaderMap, cookies: bool) {
        for name in [&LOCATION, &CONTENT_LOCATION, &URI_HEADER] {
            if let Some(new) = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| self.rewrite_url(v))
            {
                if let Ok(v) = HeaderValue::from_str(&new) {
                    headers.insert(name.clone(), v);
                }
            }
        }
        if cookies && headers.contains_key(SET_COOKIE) {
            let rewritten: Vec<HeaderValue> = headers
                .get_all(SET_COOKIE)
                .iter()
                .map(|v| {
                    v.to_str()
                        .ok()
                        .and_then(|s| self.rewrite_cookie_path(s))
                        .and_then(|s| HeaderValue::from_str(&s).ok())
                        .unwrap_or_else(|| v.clone())
                })
                .collect();
            headers.remove(SET_COOKIE);
            for v in rewritten {
                headers.append(SET_COOKIE, v);
            }
        }
    }

    /// The public form of `url`, or `None` when it does not point into this route's backend.
    pub fn rewrite_url(&self, url: &str) -> Option<String> {
        let path_and_rest = if url.starts_with('/') && !url.starts_with("//") {
            url
        } else {
            self.strip_backend_origin(url)?
        };
        let split = path_and_rest
            .find(['?', '#'])
            .unwrap_or(path_and_rest.len());
        let (path, tail) = path_and_rest.split_at(split);
        let path = if path.is_empty() { "/" } else { path };
        if !prefix_matches(&self.backend.path, path) {
            return None;
        }
        let public_path = map_path(&self.backend.path, self.route_path, path);
        if url.starts_with('/') {
            return (public_path != path).then(|| format!("{public_path}{tail}"));
        }
        Some(format!(
            "{}://{}{public_path}{tail}",
            self.public_scheme, self.public_authority
        ))
    }

    /// `http://127.0.0.1:3000/x` → `/x` if that origin is the backend's.
    fn strip_backend_origin<'u>(&self, url: &'u str) -> Option<&'u str> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = authority.to_ascii_lowercase();
        let b = self.backend;
        let default_port = if b.tls { 443 } else { 80 };
        let scheme_is_backends = match scheme.as_str() {
            "http" | "ws" => !b.tls,
            "https" | "wss" => b.tls,
            _ => false,
        };
        let host_port = |a: &str| -> (String, Option<u16>) {
            if let Some(v6) = a.strip_prefix('[') {
                let (h, rest) = v6.split_once(']').unwrap_or((v6, ""));
                return (
                    h.to_string(),
                    rest.strip_prefix(':').and_then(|p| p.parse().ok()),
                );
            }
            match a.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()),
                None => (a.to_string(), None),
            }
        };
        let (host, port) = host_port(&authority);
        let is_backend = scheme_is_backends
            && host == b.host.to_ascii_lowercase()
            && port.unwrap_or(default_port) == b.port;
        // With preserve_host the backend knows the public host; only the scheme and port may be off.
        let public_host = wasmgate_runtime::router::normalise_host(self.public_authority);
        let is_public_host = self.preserve_host
            && matches!(scheme.as_str(), "http" | "https")
            && host == public_host;
        (is_backend || is_public_host).then_some(if tail.is_empty() { "/" } else { tail })
    }

    fn rewrite_cookie_path(&self, cookie: &str) -> Option<String> {
        let mut changed = false;
        let parts: Vec<String> = cookie
            .split(';')
            .map(|part| {
                let trimmed = part.trim_start();
                match trimmed.split_once('=') {
                    Some((k, v))
                        if k.trim().eq_ignore_ascii_case("path")
                            && prefix_matches(&self.backend.path, v.trim()) =>
                    {
                        changed = true;
                        format!(
                            " Path={}",
                            map_path(&self.backend.path, self.route_path, v.trim())
                        )
                    }
                    _ => part.to_string(),
                }
            })
            .collect();
        changed.then(|| parts.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str, path: &str) -> Backend {
        let uri: http::Uri = url.parse().unwrap();
        Backend {
            url: url.into(),
            tls: uri.scheme_str() == Some("https"),
            websocket_scheme: false,
            authority: format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(80)),
            host: uri.host().unwrap().into(),
            port: uri.port_u16().unwrap_or(80),
            path: path.into(),
            ca: None,
        }
    }

    fn map<'a>(b: &'a Backend, route: &'a str, preserve: bool) -> ReverseMap<'a> {
        ReverseMap {
            backend: b,
            route_path: route,
            public_scheme: "https",
            public_authority: "chat.example.org",
            preserve_host: preserve,
        }
    }

    #[test]
    fn seed_redirect_is_rewritten() {
        let b = backend("http://127.0.0.1:3000/", "/");
        let m = map(&b, "/", false);
        assert_eq!(
            m.rewrite_url("http://127.0.0.1:3000/login?next=/x")
                .unwrap(),
            "https://chat.example.org/login?next=/x"
        );
        assert_eq!(
            m.rewrite_url("http://127.0.0.1:3000").unwrap(),
            "https://chat.example.org/"
        );
        assert_eq!(m.rewrite_url("http://127.0.0.1:3001/login"), None);
        assert_eq!(m.rewrite_url("https://127.0.0.1:3000/login"), None);
        assert_eq!(m.rewrite_url("https://elsewhere.example/"), None);
        // Relative paths need nothing when the prefixes agree.
        assert_eq!(m.rewrite_url("/login"), None);
    }

    #[test]
    fn prefixes_map_both_ways() {
        let b = backend("http://10.0.0.5/app/", "/app/");
        let m = map(&b, "/shop/", false);
        assert_eq!(
            m.rewrite_url("http://10.0.0.5:80/app/cart").unwrap(),
            "https://chat.example.org/shop/cart"
        );
        assert_eq!(m.rewrite_url("/app/cart#top").unwrap(), "/shop/cart#top");
        assert_eq!(m.rewrite_url("http://10.0.0.5/other"), None);
    }

    #[test]
    fn preserved_host_with_wrong_scheme_is_fixed() {
        let b = backend("http://127.0.0.1:3000/", "/");
        assert_eq!(
            map(&b, "/", true)
                .rewrite_url("http://chat.example.org/x")
                .unwrap(),
            "https://chat.example.org/x"
        );
        assert_eq!(
            map(&b, "/", false).rewrite_url("http://chat.example.org/x"),
            None
        );
    }

    #[test]
    fn headers_and_cookies() {
        let b = backend("http://127.0.0.1:3000/app/", "/app/");
        let m = map(&b, "/", false);
        let mut h = HeaderMap::new();
        h.insert(LOCATION, "http://127.0.0.1:3000/app/a".parse().unwrap());
        h.insert(CONTENT_LOCATION, "/app/b".parse().unwrap());
        h.insert("uri", "http://127.0.0.1:3000/app/c".parse().unwrap());
        h.append(SET_COOKIE, "sid=1; Path=/app/; HttpOnly".parse().unwrap());
        h.append(SET_COOKIE, "other=2; Path=/elsewhere".parse().unwrap());
        m.apply(&mut h, true);
        assert_eq!(h[LOCATION], "https://chat.example.org/a");
        assert_eq!(h[CONTENT_LOCATION], "/b");
        assert_eq!(h["uri"], "https://chat.example.org/c");
        let cookies: Vec<_> = h
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            cookies,
            vec!["sid=1; Path=/; HttpOnly", "other=2; Path=/elsewhere"]
        );
    }
}
