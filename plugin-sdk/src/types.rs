//! Plain-data mirrors of the WIT records in `wit/types.wit`, with the helpers a policy needs.
//!
//! They are our own types rather than wit-bindgen's so that plugin code, and its unit tests, never
//! depend on generated bindings: the conversion happens once, in the wasm-only glue.

use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;

use crate::query;

/// One HTTP header. Names coming from the host are lower-case ASCII.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl Header {
    /// A header; the name is lower-cased because HTTP/2 requires it and the host compares that way.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Header {
            name: lower(name.into()),
            value: value.into(),
        }
    }

    /// True when `name` is a valid HTTP header name (an RFC 9110 token). Plugins check names from
    /// their config with this at start-up, rather than have the host refuse an edit per request.
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }

    /// True when `value` may be sent as a header value: no control characters other than tab.
    pub fn is_valid_value(value: &str) -> bool {
        !value.chars().any(|c| c.is_control() && c != '\t')
    }
}

/// TLS facts about the client connection (only on TLS listeners).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client sent (SNI).
    pub sni: Option<String>,
    /// The negotiated ALPN protocol: "h2" or "http/1.1".
    pub alpn: Option<String>,
    /// "TLSv1.2" or "TLSv1.3".
    pub version: String,
}

/// Who asked for what: what `on_response` sees of the request, and a part of [`Request`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Unique id of this request (also sent to the backend as `x-request-id`).
    pub id: String,
    /// "GET", "POST", …
    pub method: String,
    /// "http" or "https": what the client used to reach wasmgate.
    pub scheme: String,
    /// Host header or `:authority`, port included if the client sent one.
    pub authority: String,
    /// The normalised path (no `..`, no `//`).
    pub path: String,
    /// The query string without the leading `?`.
    pub query: Option<String>,
    /// The client's IP as the host established it (trusted proxies already applied).
    pub client_addr: String,
    /// Name of the matched site.
    pub site: String,
    /// Path prefix of the matched route.
    pub route: String,
    /// True when the request asks to open a WebSocket.
    pub websocket: bool,
}

impl RequestInfo {
    /// The client's address parsed as an IP. Also accepts `ip:port` / `[v6]:port` defensively.
    pub fn client_ip(&self) -> Option<IpAddr> {
        let addr = self.client_addr.trim();
        addr.parse::<IpAddr>()
            .ok()
            .or_else(|| addr.parse::<SocketAddr>().ok().map(|s| s.ip()))
    }

    /// The authority without its port (`example.org:8443` → `example.org`, `[::1]:80` → `[::1]`).
    pub fn host(&self) -> &str {
        strip_port(&self.authority)
    }

    /// The first query parameter called `name`, percent-decoded (`+` counts as a space, as in forms).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// All query parameters in order, percent-decoded.
    pub fn query_pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        query::pairs(self.query.as_deref().unwrap_or(""))
    }

    /// Path plus `?query` if there is one, as the client sent it (after normalisation).
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// The whole request as `on_request` sees it. The body never reaches plugins.
///
/// It dereferences to its [`RequestInfo`], so `req.path`, `req.client_ip()` and so on work directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub info: RequestInfo,
    /// "HTTP/1.1" or "HTTP/2".
    pub version: String,
    pub headers: Vec<Header>,
    pub tls: Option<TlsInfo>,
}

impl Deref for Request {
    type Target = RequestInfo;
    fn deref(&self) -> &RequestInfo {
        &self.info
    }
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        all_headers(&self.headers, name)
    }
}

/// The response head as `on_response` sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<Header>,
}

impl ResponseHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        all_headers(&self.headers, name)
    }
}

/// A change to a header list; a list of them applies in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every header of that name with this one.
    Set(Header),
    /// Add this header, keeping those already there.
    Append(Header),
    /// Remove every header of this name.
    Remove(String),
}

impl HeaderOp {
    pub fn set(name: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderOp::Set(Header::new(name, value))
    }

    pub fn append(name: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderOp::Append(Header::new(name, value))
    }

    pub fn remove(name: impl Into<String>) -> Self {
        HeaderOp::Remove(lower(name.into()))
    }

    /// Apply the ops to a header list the way the host does (what tests use to check the outcome).
    pub fn apply_all(headers: &mut Vec<Header>, ops: &[HeaderOp]) {
        for op in ops {
            match op {
                HeaderOp::Set(h) => {
                    headers.retain(|x| !x.name.eq_ignore_ascii_case(&h.name));
                    headers.push(h.clone());
                }
                HeaderOp::Append(h) => headers.push(h.clone()),
                HeaderOp::Remove(n) => headers.retain(|x| !x.name.eq_ignore_ascii_case(n)),
            }
        }
    }
}

/// Which hooks the host should call. Unlisted hooks are skipped, which saves a call per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hooks {
    pub on_request: bool,
    pub on_response: bool,
}

impl Hooks {
    pub const BOTH: Hooks = Hooks {
        on_request: true,
        on_response: true,
    };
    pub const REQUEST: Hooks = Hooks {
        on_request: true,
        on_response: false,
    };
    pub const RESPONSE: Hooks = Hooks {
        on_request: false,
        on_response: true,
    };
    pub const NONE: Hooks = Hooks {
        on_request: false,
        on_response: false,
    };
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks::BOTH
    }
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn all_headers<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

pub(crate) fn lower(mut s: String) -> String {
    s.make_ascii_lowercase();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(authority: &str, query: Option<&str>, client: &str) -> RequestInfo {
        RequestInfo {
            authority: authority.into(),
            query: query.map(Into::into),
            client_addr: client.into(),
            ..RequestInfo::default()
        }
    }

    #[test]
    fn host_strips_port() {
        assert_eq!(info("example.org:8443", None, "").host(), "example.org");
        assert_eq!(info("example.org", None, "").host(), "example.org");
        assert_eq!(info("[::1]:80", None, "").host(), "[::1]");
        assert_eq!(info("[::1]", None, "").host(), "[::1]");
    }

    #[test]
    fn client_ip_forms() {
        assert_eq!(
            info("", None, "10.0.0.1").client_ip(),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            info("", None, "[::1]:5").client_ip(),
            Some("::1".parse().unwrap())
        );
        assert_eq!(info("", None, "nope").client_ip(), None);
    }

    #[test]
    fn headers_case_insensitive() {
        let req = Request {
            headers: vec![Header::new("X-A", "1"), Header::new("x-a", "2")],
            ..Request::default()
        };
        assert_eq!(req.header("x-A"), Some("1"));
        assert_eq!(req.header_all("X-a").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(req.header("x-b"), None);
    }

    #[test]
    fn name_and_value_validity() {
        assert!(Header::is_valid_name("x-api-key"));
        assert!(!Header::is_valid_name("x api"));
        assert!(!Header::is_valid_name(""));
        assert!(!Header::is_valid_name(":path"));
        assert!(Header::is_valid_value("a\tb"));
        assert!(!Header::is_valid_value("a\r\nb"));
    }

    #[test]
    fn apply_ops() {
        let mut h = vec![Header::new("a", "1"), Header::new("b", "2")];
        HeaderOp::apply_all(
            &mut h,
            &[
                HeaderOp::set("A", "x"),
                HeaderOp::append("b", "3"),
                HeaderOp::remove("c"),
            ],
        );
        assert_eq!(
            h,
            vec![
                Header::new("b", "2"),
                Header::new("a", "x"),
                Header::new("b", "3")
            ]
        );
    }
}
