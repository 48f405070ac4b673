//! Site and route for a request: Host (agreeing with the TLS connection's site), then the route by
//! longest prefix, refused when lenient backends would read the path as another route's; and nginx's
//! redirect from `/ops` to a route written `/ops/`.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};

use wasmgate_core::body::{full, ProxyBody};
use wasmgate_core::conn::ConnInfo;
use wasmgate_core::error::ProxyError;
use wasmgate_core::path::{lenient_reading, normalize_path};
use wasmgate_runtime::router::{normalise_host, Pick};
use wasmgate_runtime::{Runtime, Site};

/// Site by Host (agreeing with SNI on TLS listeners), then route by longest prefix.
pub(super) fn select(
    rt: &Runtime,
    conn: &ConnInfo,
    authority: &str,
    path: &str,
) -> Result<(Arc<Site>, Pick), ProxyError> {
    let listener = &rt.listeners[conn.listener];
    let host = normalise_host(authority);
    let site_idx = listener
        .hosts
        .lookup(&host)
        .ok_or_else(|| ProxyError::UnknownHost(host.to_string()))?;
    if let Some(tls) = &conn.tls {
        // A connection reaches only the site whose certificate it got: an h2 connection coalesced
        // for another name, or one without SNI, must not skip that site's TLS requirements.
        match tls.sni.as_deref() {
            Some(sni) if listener.tls_site(Some(sni)) != Some(site_idx) => {
                return Err(ProxyError::Misdirected {
                    sni: sni.to_string(),
                    host: host.into_owned(),
                });
            }
            None if listener.no_sni_site != Some(site_idx) => {
                return Err(ProxyError::MisdirectedNoSni {
                    site: listener
                        .no_sni_site
                        .map_or_else(|| "-".into(), |s| rt.sites[s].name.to_string()),
                    host: host.into_owned(),
                });
            }
            _ => {}
        }
    }
    let site = rt.sites[site_idx].clone();
    let pick = site.pick(path);
    Ok((site, pick))
}

/// Refuse a path that a lenient backend would read as belonging to another route (see
/// [`wasmgate_core::path::lenient_reading`]): `/ADMIN/users`, `/admin./users`, `/admin%20/users`,
/// `/admin%2Fusers` or `/x;a/../admin` must not reach the `/` route's backend, which may read them as
/// `/admin/users`, past the `/admin` route's plugins. Paths that stay on their route under that reading
/// (`/api/Projects`, `/api/projects/group%2Fname`) pass unchanged. A plain lower-case path costs one
/// scan of its bytes here.
pub(super) fn ensure_unambiguous_route(
    site: &Site,
    pick: Pick,
    path: &str,
) -> Result<(), ProxyError> {
    let read = lenient_reading(path);
    let borrowed = matches!(read, Cow::Borrowed(_));
    let agrees = if borrowed {
        site.lenient_agrees(path, true, pick)
    } else {
        normalize_path(&read).is_ok_and(|n| site.lenient_agrees(&n, false, pick))
    };
    if agrees {
        return Ok(());
    }
    Err(ProxyError::AmbiguousPath {
        path: path.to_string(),
        read: read.into_owned(),
        route: site
            .route(pick)
            .map_or_else(|| "(none)".into(), |r| r.name.to_string()),
    })
}

/// nginx's answer to `/ops` when a route is written `/ops/` (and none `/ops`): 301 to the route's
/// spelling, query kept. Relative, so it stays on whatever scheme and host the client used.
pub(super) fn add_slash(
    path: &str,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let location = match query {
        Some(q) => format!("{path}/?{q}"),
        None => format!("{path}/"),
    };
    let value = header::HeaderValue::try_from(location)
        .map_err(|_| ProxyError::BadRequest("request target cannot be redirected"))?;
    let mut resp = Response::new(full(Bytes::from_static(b"301 Moved Permanently\n")));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let headers = resp.headers_mut();
    headers.insert(header::LOCATION, value);
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}
