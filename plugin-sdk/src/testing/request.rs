//! Builders for the requests and response heads that tests feed to a plugin.

use crate::types::{Header, Request, RequestInfo, ResponseHead, TlsInfo};

/// Builds a [`Request`] as the host would send it:
/// `TestRequest::get("/path?x=1").header("authorization", "Bearer x").client("10.0.0.1").build()`.
///
/// Defaults: `GET`, `http`, authority `example.org`, client `127.0.0.1`, site `test`, route `/`,
/// `HTTP/1.1`, id `test-request-1`, no TLS, not a WebSocket.
#[derive(Clone, Debug)]
pub struct TestRequest {
    req: Request,
}

impl TestRequest {
    /// `target` is a path with optional `?query`, or an absolute URL (`https://host:8443/p?q`), which
    /// also sets the scheme and authority.
    pub fn new(method: &str, target: &str) -> Self {
        let mut info = RequestInfo {
            id: "test-request-1".into(),
            method: method.to_owned(),
            scheme: "http".into(),
            authority: "example.org".into(),
            client_addr: "127.0.0.1".into(),
            site: "test".into(),
            route: "/".into(),
            ..RequestInfo::default()
        };
        let mut rest = target;
        if let Some((scheme, after)) = target.split_once("://") {
            let end = after.find(['/', '?']).unwrap_or(after.len());
            info.scheme = scheme.to_ascii_lowercase();
            info.authority = after[..end].to_owned();
            rest = &after[end..];
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (rest, None),
        };
        info.path = if path.is_empty() {
            "/".into()
        } else {
            path.to_owned()
        };
        info.query = query;
        TestRequest {
            req: Request {
                info,
                version: "HTTP/1.1".into(),
                headers: Vec::new(),
                tls: None,
            },
        }
    }

    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    pub fn post(target: &str) -> Self {
        Self::new("POST", target)
    }

    /// Add a request header (names are lower-cased, as the host sends them).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.req.headers.push(Header::new(name, value));
        self
    }

    /// The client address the host established.
    pub fn client(mut self, addr: &str) -> Self {
        self.req.info.client_addr = addr.to_owned();
        self
    }

    /// The Host header / `:authority` (port included if the client sent one).
    pub fn authority(mut self, authority: &str) -> Self {
        self.req.info.authority = authority.to_owned();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.req.info.scheme = scheme.to_owned();
        self
    }

    /// Mark the request as a WebSocket upgrade (the flag only; add `upgrade` headers yourself if the
    /// plugin reads them).
    pub fn websocket(mut self, yes: bool) -> Self {
        self.req.info.websocket = yes;
        self
    }

    pub fn site(mut self, site: &str) -> Self {
        self.req.info.site = site.to_owned();
        self
    }

    pub fn route(mut self, route: &str) -> Self {
        self.req.info.route = route.to_owned();
        self
    }

    pub fn id(mut self, id: &str) -> Self {
        self.req.info.id = id.to_owned();
        self
    }

    /// "HTTP/1.1" or "HTTP/2".
    pub fn version(mut self, version: &str) -> Self {
        self.req.version = version.to_owned();
        self
    }

    /// Arrived over TLS (also sets the scheme to `https`).
    pub fn tls(mut self, tls: TlsInfo) -> Self {
        self.req.tls = Some(tls);
        self.req.info.scheme = "https".into();
        self
    }

    pub fn build(self) -> Request {
        self.req
    }

    /// Just the [`RequestInfo`], as `on_response` receives it.
    pub fn info(self) -> RequestInfo {
        self.req.info
    }
}

impl From<TestRequest> for Request {
    fn from(t: TestRequest) -> Self {
        t.build()
    }
}

/// Builds a [`ResponseHead`]: `TestResponse::status(200).header("server", "x").build()`.
#[derive(Clone, Debug)]
pub struct TestResponse {
    head: ResponseHead,
}

impl TestResponse {
    pub fn status(status: u16) -> Self {
        TestResponse {
            head: ResponseHead {
                status,
                headers: Vec::new(),
            },
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.head.headers.push(Header::new(name, value));
        self
    }

    pub fn build(self) -> ResponseHead {
        self.head
    }
}

impl From<TestResponse> for ResponseHead {
    fn from(t: TestResponse) -> Self {
        t.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let r = TestRequest::get("/a/b?x=1&y=%20").build();
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.query.as_deref(), Some("x=1&y=%20"));
        assert_eq!(r.query_param("y").as_deref(), Some(" "));
        let r = TestRequest::get("https://h.example:8443/p?q").build();
        assert_eq!(
            (r.scheme.as_str(), r.authority.as_str()),
            ("https", "h.example:8443")
        );
        assert_eq!((r.path.as_str(), r.query.as_deref()), ("/p", Some("q")));
        let r = TestRequest::get("http://h.example").build();
        assert_eq!((r.path.as_str(), r.query.as_deref()), ("/", None));
    }
}
