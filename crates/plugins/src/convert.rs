//! Between the proxy's HTTP types and the WIT records, with the guard that keeps plugins from
//! setting headers that would break framing or routing (like wasi-http's forbidden headers).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use std::net::IpAddr;

use super::bindings::{
    Header, HeaderOp, HttpVersion, IpAddress, Method, Request, RequestAction, RequestInfo, Scheme,
    TlsInfo,
};
use wasmgate_core::body::{full, ProxyBody};
use wasmgate_core::request::RequestState;

/// Headers no plugin may set, append or remove: they describe the connection or the framing, and the
/// proxy owns them. `host` is routing: a plugin that wants another backend host uses the route config.
const FORBIDDEN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

pub fn is_forbidden(name: &str) -> bool {
    FORBIDDEN.iter().any(|f| f.eq_ignore_ascii_case(name)) || name.starts_with(':')
}

/// The headers a hook gets: all of them, or only those it declared (see `registration` in the WIT).
pub fn headers(map: &HeaderMap, declared: Option<&[HeaderName]>) -> Vec<Header> {
    let one = |(n, v): (&HeaderName, &HeaderValue)| Header {
        name: n.as_str().to_string(),
        value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
    };
    match declared {
        None => map.iter().map(one).collect(),
        Some(names) => names
            .iter()
            .flat_map(|n| map.get_all(n).iter().map(move |v| one((n, v))))
            .collect(),
    }
}

/// Header names from a plugin's registration; a name that is not a valid header name cannot match
/// any header, so it is an error in the plugin.
pub fn declared_names(names: Option<Vec<String>>) -> Result<Option<Vec<HeaderName>>, String> {
    names
        .map(|names| {
            names
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("declares `{n}`, which is not a header name"))
                })
                .collect()
        })
        .transpose()
}

pub fn info(s: &RequestState) -> RequestInfo {
    RequestInfo {
        id: s.id.clone(),
        method: method(&s.method),
        scheme: match s.scheme {
            wasmgate_core::conn::Scheme::Https => Scheme::Https,
            wasmgate_core::conn::Scheme::Http => Scheme::Http,
        },
        authority: s.authority.clone(),
        path: s.path.clone(),
        query: s.query.clone(),
        client_addr: match s.client {
            IpAddr::V4(a) => {
                let [a, b, c, d] = a.octets();
                IpAddress::Ipv4((a, b, c, d))
            }
            IpAddr::V6(a) => {
                let [a, b, c, d, e, f, g, h] = a.segments();
                IpAddress::Ipv6((a, b, c, d, e, f, g, h))
            }
        },
        route: s.route.to_string(),
        websocket: s.websocket,
    }
}

fn method(m: &http::Method) -> Method {
    match *m {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::POST => Method::Post,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::CONNECT => Method::Connect,
        http::Method::OPTIONS => Method::Options,
        http::Method::TRACE => Method::Trace,
        http::Method::PATCH => Method::Patch,
        ref other => Method::Other(other.as_str().to_string()),
    }
}

pub fn request(s: &RequestState, map: &HeaderMap, declared: Option<&[HeaderName]>) -> Request {
    Request {
        info: info(s),
        version: match s.version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => HttpVersion::Http10,
            http::Version::HTTP_2 => HttpVersion::Http2,
            _ => HttpVersion::Http11,
        },
        headers: headers(map, declared),
        tls: s.tls.as_ref().map(|t| TlsInfo {
            sni: t.sni.clone(),
            alpn: t.alpn.clone(),
            version: t.version.to_string(),
        }),
    }
}

/// One checked header edit.
#[derive(Clone)]
pub enum Edit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl Edit {
    /// Refuse edits of forbidden or malformed headers, with the reason.
    fn check(op: HeaderOp) -> Result<Edit, String> {
        let (name, value) = match &op {
            HeaderOp::Set(h) | HeaderOp::Append(h) => (h.name.as_str(), Some(h.value.as_str())),
            HeaderOp::Remove(n) => (n.as_str(), None),
        };
        if is_forbidden(name) {
            return Err(format!("may not change `{name}`"));
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let value = value
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| format!("invalid value for `{name}`"))?;
        Ok(match (op, value) {
            (HeaderOp::Set(_), Some(v)) => Edit::Set(name, v),
            (HeaderOp::Append(_), Some(v)) => Edit::Append(name, v),
            _ => Edit::Remove(name),
        })
    }

    fn put(self, map: &mut HeaderMap) {
        match self {
            Edit::Set(n, v) => {
                map.insert(n, v);
            }
            Edit::Append(n, v) => {
                map.append(n, v);
            }
            Edit::Remove(n) => {
                map.remove(n);
            }
        }
    }

    /// Apply a kept edit (fixed, or from a cached decision): name and value are reference-counted.
    pub fn apply(&self, map: &mut HeaderMap) {
        self.clone().put(map)
    }
}

/// Check header edits in order: the ones that pass, and a complaint for the log about each of the
/// others (forbidden or malformed headers).
fn check_all(ops: Vec<HeaderOp>) -> (Vec<Edit>, Vec<String>) {
    let mut refused = Vec::new();
    let edits = ops
        .into_iter()
        .filter_map(|op| Edit::check(op).map_err(|why| refused.push(why)).ok())
        .collect();
    (edits, refused)
}

/// Apply header edits in order. Edits of forbidden or malformed headers are skipped and returned as
/// a list of complaints for the log.
pub fn apply(ops: Vec<HeaderOp>, map: &mut HeaderMap) -> Vec<String> {
    let (edits, refused) = check_all(ops);
    for edit in edits {
        edit.put(map);
    }
    refused
}

/// A plugin's fixed response edits: checked once at load (a bad one refuses the plugin), applied
/// natively to every response.
#[derive(Default)]
pub struct FixedEdits(Vec<Edit>);

impl FixedEdits {
    pub fn new(ops: Vec<HeaderOp>) -> Result<FixedEdits, String> {
        ops.into_iter()
            .map(|op| Edit::check(op).map_err(|why| format!("fixed response edit refused: {why}")))
            .collect::<Result<_, _>>()
            .map(FixedEdits)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn apply(&self, map: &mut HeaderMap) {
        for edit in &self.0 {
            edit.apply(map);
        }
    }
}

/// An `on-request` answer, checked once: a decision-cache hit replays it without lifting or
/// re-validating anything.
pub enum Decision {
    Continue {
        edits: Vec<Edit>,
        /// The rewritten path (and query), as the plugin gave it.
        path: Option<String>,
        refused: Vec<String>,
    },
    /// The plugin's own response. An impossible status became 500; forbidden headers were dropped.
    Respond {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        refused: Vec<String>,
    },
}

impl Decision {
    pub fn check(action: RequestAction) -> Decision {
        match action {
            RequestAction::Continue(c) => {
                let (edits, refused) = check_all(c.headers);
                Decision::Continue {
                    edits,
                    path: c.path,
                    refused,
                }
            }
            RequestAction::Respond(r) => {
                let mut refused = Vec::new();
                let status = match StatusCode::from_u16(r.status) {
                    Ok(s) if s.as_u16() >= 200 => s,
                    _ => {
                        refused.push(format!("status {} is not a final status", r.status));
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                };
                let mut headers = HeaderMap::new();
                let ops = r.headers.into_iter().map(HeaderOp::Append).collect();
                refused.extend(apply(ops, &mut headers));
                Decision::Respond {
                    status,
                    headers,
                    body: Bytes::from(r.body),
                    refused,
                }
            }
        }
    }

    /// True for a `continue` that gives the request a new path.
    pub fn rewrites_path(&self) -> bool {
        matches!(self, Decision::Continue { path: Some(_), .. })
    }

    /// Edits the log should hear about.
    pub fn refused(&self) -> &[String] {
        match self {
            Decision::Continue { refused, .. } | Decision::Respond { refused, .. } => refused,
        }
    }
}

/// The response a `Respond` decision stands for (a cheap copy: the body is shared).
pub fn response(status: StatusCode, headers: &HeaderMap, body: &Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body.clone()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers.clone();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &str, v: &str) -> HeaderOp {
        HeaderOp::Set(Header {
            name: n.into(),
            value: v.into(),
        })
    }

    #[test]
    fn declared_headers_only() {
        let mut map = HeaderMap::new();
        map.insert("authorization", HeaderValue::from_static("Bearer t"));
        map.insert("cookie", HeaderValue::from_static("c"));
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let names = declared_names(Some(vec!["X-A".into(), "authorization".into()]))
            .unwrap()
            .unwrap();
        let seen: Vec<(String, String)> = headers(&map, Some(&names))
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect();
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            seen,
            [
                pair("x-a", "1"),
                pair("x-a", "2"),
                pair("authorization", "Bearer t")
            ]
        );
        assert_eq!(headers(&map, None).len(), 4);
        assert!(declared_names(Some(vec!["bad name".into()])).is_err());
    }

    #[test]
    fn fixed_edits_are_checked_once() {
        let fixed = FixedEdits::new(vec![
            set("x-frame-options", "DENY"),
            HeaderOp::Remove("server".into()),
        ])
        .unwrap();
        let mut map = HeaderMap::new();
        map.insert("server", HeaderValue::from_static("backend"));
        fixed.apply(&mut map);
        assert_eq!(map.get("x-frame-options").unwrap(), "DENY");
        assert!(map.get("server").is_none());
        let err = FixedEdits::new(vec![set("content-length", "0")])
            .err()
            .unwrap();
        assert!(err.contains("may not change `content-length`"), "{err}");
        assert!(FixedEdits::new(vec![set("x-a", "bad\nvalue")]).is_err());
    }
}
