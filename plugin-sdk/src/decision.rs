//! What `on_request` returns: go on (with edits) or answer the client here.
//!
//! An enum rather than a bool, so "already responded" can never be confused with "allowed".
//! Every constructor returns a [`Decision`] so match arms line up without `.into()`:
//!
//! ```
//! use wasmgate_plugin_sdk::Decision;
//! let ok = Decision::allow().set_header("x-user", "ann").rewrite_path("/v2/items");
//! let no = Decision::respond(401).header("www-authenticate", "Bearer").body("who are you?");
//! let go = Decision::redirect(301, "https://example.org/");
//! # let _ = (ok, no, go);
//! ```

use crate::types::{Header, HeaderOp};

/// The decision of an `on_request` hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on to the next plugin, then the backend, with these edits applied.
    Continue(RequestEdits),
    /// Stop and send this response. No later plugin and no backend sees the request.
    Respond(Response),
}

/// Changes to the request before it goes on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// Header edits, applied in order.
    pub headers: Vec<HeaderOp>,
    /// A new path (optionally with `?query`) for the rest of the chain and the backend; starts with `/`.
    pub path: Option<String>,
}

/// A response a plugin sends instead of the backend's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Add a header (keeps headers of the same name already added).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Set a plain-text body and its `content-type`.
    pub fn text(self, body: impl Into<String>) -> Self {
        self.header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

impl From<Response> for Decision {
    fn from(r: Response) -> Self {
        Decision::Respond(r)
    }
}

impl From<RequestEdits> for Decision {
    fn from(e: RequestEdits) -> Self {
        Decision::Continue(e)
    }
}

impl Default for Decision {
    fn default() -> Self {
        Decision::allow()
    }
}

impl Decision {
    /// Let the request go on unchanged (add edits with the methods below).
    pub fn allow() -> Self {
        Decision::Continue(RequestEdits::default())
    }

    /// Answer the client with this status (add headers and a body with the methods below).
    pub fn respond(status: u16) -> Self {
        Decision::Respond(Response::new(status))
    }

    /// Answer with a redirect: `status` (301, 302, 303, 307, 308) and a `location` header.
    pub fn redirect(status: u16, location: impl Into<String>) -> Self {
        Decision::Respond(Response::new(status).header("location", location))
    }

    /// Add a header to what goes on: the response for `respond`/`redirect`, the request for `allow`
    /// (there it is the same as [`Decision::append_header`]).
    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.append_header(name, value)
    }

    /// Set the response body. Only meaningful for `respond`: on `allow` it is a bug, caught by a
    /// debug assertion (so in unit tests) and ignored in release builds.
    pub fn body(self, body: impl Into<Vec<u8>>) -> Self {
        match self {
            Decision::Respond(r) => Decision::Respond(r.body(body)),
            other => {
                debug_assert!(
                    false,
                    "Decision::body on allow(): a request body cannot be set"
                );
                other
            }
        }
    }

    /// Set a plain-text response body and its `content-type` (see [`Decision::body`]).
    pub fn text(self, body: impl Into<String>) -> Self {
        self.set_header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// Replace every header of that name (request headers for `allow`, response headers otherwise).
    pub fn set_header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.op(HeaderOp::set(name, value))
    }

    /// Add a header, keeping those already there.
    pub fn append_header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.op(HeaderOp::append(name, value))
    }

    /// Remove every header of that name.
    pub fn remove_header(self, name: impl Into<String>) -> Self {
        self.op(HeaderOp::remove(name))
    }

    /// Send the request on with a new path (and optional `?query`); it must start with `/`. Only
    /// meaningful for `allow` (a debug assertion catches other uses).
    pub fn rewrite_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        debug_assert!(
            path.starts_with('/'),
            "rewrite_path({path:?}) must start with '/'"
        );
        match self {
            Decision::Continue(mut e) => {
                e.path = Some(path);
                Decision::Continue(e)
            }
            other => {
                debug_assert!(false, "Decision::rewrite_path on a response");
                other
            }
        }
    }

    fn op(self, op: HeaderOp) -> Self {
        match self {
            Decision::Continue(mut e) => {
                e.headers.push(op);
                Decision::Continue(e)
            }
            Decision::Respond(mut r) => {
                HeaderOp::apply_all(&mut r.headers, &[op]);
                Decision::Respond(r)
            }
        }
    }

    /// True when the request goes on.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Continue(_))
    }

    /// The response status, or `None` when the request goes on.
    pub fn status(&self) -> Option<u16> {
        self.response().map(|r| r.status)
    }

    /// The response, when this decision answers the client.
    pub fn response(&self) -> Option<&Response> {
        match self {
            Decision::Respond(r) => Some(r),
            Decision::Continue(_) => None,
        }
    }

    /// The edits, when the request goes on.
    pub fn edits(&self) -> Option<&RequestEdits> {
        match self {
            Decision::Continue(e) => Some(e),
            Decision::Respond(_) => None,
        }
    }

    /// The first value of response header `name`, if this decision answers the client.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response().and_then(|r| r.get(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_with_edits() {
        let d = Decision::allow()
            .set_header("X-A", "1")
            .append_header("x-b", "2")
            .remove_header("x-c")
            .rewrite_path("/new?q=1");
        let e = d.edits().expect("continue");
        assert_eq!(
            e.headers,
            vec![
                HeaderOp::set("x-a", "1"),
                HeaderOp::append("x-b", "2"),
                HeaderOp::remove("x-c")
            ]
        );
        assert_eq!(e.path.as_deref(), Some("/new?q=1"));
        assert!(d.is_allow());
        assert_eq!(d.status(), None);
    }

    #[test]
    fn respond_builder() {
        let d = Decision::respond(401)
            .header("WWW-Authenticate", "Bearer")
            .body("no");
        assert_eq!(d.status(), Some(401));
        assert_eq!(d.response_header("www-authenticate"), Some("Bearer"));
        assert_eq!(d.response().map(|r| r.body.as_slice()), Some(&b"no"[..]));
        let r: Decision = Response::new(403).text("nope").into();
        assert_eq!(
            r.response_header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }

    #[test]
    fn redirect_sets_location() {
        let d = Decision::redirect(301, "https://x/");
        assert_eq!(d.status(), Some(301));
        assert_eq!(d.response_header("location"), Some("https://x/"));
    }
}
