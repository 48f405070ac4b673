//! What forwarding and tunnelling share: the backend URI for a request, the request headers a
//! backend gets (hop-by-hop stripped, forwarding headers added), and the response a client gets
//! back (reverse-mapped, hop-by-hop stripped).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;

use super::ctx::RequestCtx;
use super::headers::{add_forwarding, has_token, Forwarding};
use wasmgate_core::body::{BoxError, ProxyBody};
use wasmgate_core::error::ProxyError;
use wasmgate_core::request::RequestState;
use wasmgate_runtime::router::map_path;
use wasmgate_runtime::Route;

/// HTTP/1.1 `Upgrade: websocket` or HTTP/2 extended CONNECT with `:protocol websocket`. Other upgrade
/// tokens (`h2c`, …) are never tunnelled: their headers are hop-by-hop and get stripped.
pub fn is_websocket_request<B>(req: &Request<B>) -> bool {
    match req.version() {
        Version::HTTP_2 => {
            req.method() == Method::CONNECT
                && req
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        }
        _ => {
            req.method() == Method::GET
                && has_token(req.headers(), &header::CONNECTION, "upgrade")
                && has_token(req.headers(), &header::UPGRADE, "websocket")
        }
    }
}

/// The request target (origin-form, `/path?query`) for the backend of `route`, from the (normalised,
/// possibly plugin-rewritten) path.
pub fn backend_uri(route: &Route, state: &RequestState) -> Result<Uri, ProxyError> {
    let b = &route.cfg.backend;
    let mut target = map_path(&route.cfg.path, &b.path, &state.path);
    if let Some(q) = &state.query {
        target.push('?');
        target.push_str(q);
    }
    Uri::try_from(target)
        .map_err(|_| ProxyError::BadRequest("request target cannot be mapped to the backend"))
}

/// Request headers as the backend must see them.
pub fn upstream_headers(
    headers: &mut http::HeaderMap,
    cx: &RequestCtx,
    route: &Route,
    state: &RequestState,
) {
    let (conn, client) = (&cx.conn, &cx.client);
    // Room for the forwarding headers added below, so the map grows once (not once per insert).
    headers.reserve(6);
    super::headers::strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    super::headers::join_cookies(headers);
    let host = if route.cfg.preserve_host {
        state.authority.as_str()
    } else {
        route.cfg.backend.authority.as_str()
    };
    // The client's own `Host` stays as it is when it already says `host` (no copy, no validation).
    let unchanged = headers
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes() == host.as_bytes());
    if !unchanged {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, v);
        }
    }
    add_forwarding(
        headers,
        &Forwarding {
            client,
            scheme: conn.scheme(),
            authority: &state.authority,
            request_id: &state.id,
            via_version: if state.version == Version::HTTP_2 {
                "2"
            } else {
                "1.1"
            },
            peer_text: (conn.peer.ip().to_canonical() == client.peer).then_some(&conn.peer_text),
        },
    );
}

/// The backend's response as the client must see it: hop-by-hop headers gone, backend URLs mapped back.
pub fn downstream_response<B>(
    resp: Response<B>,
    route: &Route,
    state: &RequestState,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    super::headers::strip_hop_by_hop(&mut parts.headers);
    if route.cfg.reverse {
        super::reverse::ReverseMap {
            backend: &route.cfg.backend,
            route_path: &route.cfg.path,
            public_scheme: state.scheme.as_str(),
            public_authority: &state.authority,
            preserve_host: route.cfg.preserve_host,
        }
        .apply(&mut parts.headers, route.cfg.reverse_cookie_path);
    }
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}
