//! Between the proxy's HTTP types and the WIT records, with the guard that keeps plugins from
//! setting headers that would break framing or routing (like wasi-http's forbidden headers).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::bindings::{Header, HeaderOp, Request, RequestInfo, TlsInfo};
use super::RequestState;
use crate::proxy::body::{full, ProxyBody};

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

pub fn headers(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(n, v)| Header {
            name: n.as_str().to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect()
}

pub fn info(s: &RequestState) -> RequestInfo {
    RequestInfo {
        id: s.id.clone(),
        method: s.method.clone(),
        scheme: s.scheme.to_string(),
        authority: s.authority.clone(),
        path: s.path.clone(),
        query: s.query.clone(),
        client_addr: s.client.to_string(),
        site: s.site.to_string(),
        route: s.route.to_string(),
        websocket: s.websocket,
    }
}

pub fn request(s: &RequestState, map: &HeaderMap) -> Request {
    Request {
        info: info(s),
        version: s.version.to_string(),
        headers: headers(map),
        tls: s.tls.as_ref().map(|t| TlsInfo {
            sni: t.sni.clone(),
            alpn: t.alpn.clone(),
            version: t.version.to_string(),
        }),
    }
}

/// Apply header edits in order. Edits of forbidden or malformed headers are skipped and returned as
/// a list of complaints for the log.
pub fn apply(ops: Vec<HeaderOp>, map: &mut HeaderMap) -> Vec<String> {
    let mut refused = Vec::new();
    for op in ops {
        let (name, value) = match &op {
            HeaderOp::Set(h) | HeaderOp::Append(h) => (h.name.as_str(), Some(h.value.as_str())),
            HeaderOp::Remove(n) => (n.as_str(), None),
        };
        if is_forbidden(name) {
            refused.push(format!("may not change `{name}`"));
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            refused.push(format!("`{name}` is not a header name"));
            continue;
        };
        let value = match value.map(HeaderValue::from_str) {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                refused.push(format!("invalid value for `{name}`"));
                continue;
            }
            None => None,
        };
        match (op, value) {
            (HeaderOp::Set(_), Some(v)) => {
                map.insert(name, v);
            }
            (HeaderOp::Append(_), Some(v)) => {
                map.append(name, v);
            }
            _ => {
                map.remove(name);
            }
        }
    }
    refused
}

/// A plugin's own response. An impossible status becomes 500; forbidden headers are dropped.
pub fn response(r: super::bindings::Response) -> (Response<ProxyBody>, Vec<String>) {
    let mut refused = Vec::new();
    let status = match StatusCode::from_u16(r.status) {
        Ok(s) if s.as_u16() >= 200 => s,
        _ => {
            refused.push(format!("status {} is not a final status", r.status));
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let mut map = HeaderMap::new();
    let ops = r.headers.into_iter().map(HeaderOp::Append).collect();
    refused.extend(apply(ops, &mut map));
    let mut resp = Response::new(full(Bytes::from(r.body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = map;
    (resp, refused)
}
