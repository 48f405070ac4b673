//! ProxyPassReverse: `rewrite_url` and `apply` on arbitrary backend/route/public triples and header
//! values. Never panics; a rewritten URL is a valid header value and points at the public origin.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderValue, CONTENT_LOCATION, LOCATION, SET_COOKIE};
use libfuzzer_sys::fuzz_target;
use wasmgate_config::Backend;
use wasmgate_proxy::reverse::ReverseMap;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    host: &'a str,
    port: u16,
    tls: bool,
    backend_path: &'a str,
    route_path: &'a str,
    public_https: bool,
    public_authority: &'a str,
    preserve_host: bool,
    url: &'a str,
    cookie: &'a str,
    cookies: bool,
}

fn absolute(p: &str) -> String {
    if p.starts_with('/') { p.to_string() } else { format!("/{p}") }
}

fuzz_target!(|i: Input<'_>| {
    let backend_path = absolute(i.backend_path);
    let route_path = absolute(i.route_path);
    let backend = Backend {
        url: format!("http://{}:{}{}", i.host, i.port, backend_path),
        tls: i.tls,
        websocket_scheme: false,
        authority: format!("{}:{}", i.host, i.port),
        host: i.host.to_string(),
        port: i.port,
        path: backend_path,
        ca: None,
    };
    let scheme = if i.public_https { "https" } else { "http" };
    let map = ReverseMap {
        backend: &backend,
        route_path: &route_path,
        public_scheme: scheme,
        public_authority: i.public_authority,
        preserve_host: i.preserve_host,
    };
    if let Some(new) = map.rewrite_url(i.url) {
        if !i.url.starts_with('/') {
            assert!(new.starts_with(&format!("{scheme}://{}", i.public_authority)), "{i:?} -> {new}");
        }
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(i.url) {
        headers.insert(LOCATION, v.clone());
        headers.insert(CONTENT_LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(i.cookie) {
        headers.append(SET_COOKIE, v.clone());
        headers.append(SET_COOKIE, v);
    }
    let cookies_before = headers.get_all(SET_COOKIE).iter().count();
    map.apply(&mut headers, i.cookies);
    assert_eq!(headers.get_all(SET_COOKIE).iter().count(), cookies_before, "Set-Cookie lines lost or added");
});
