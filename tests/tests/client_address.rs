//! One client address: behind a trusted proxy, what `ip-allow` decides on, what plugins see as
//! `{client_addr}`, what the access log says and what the backend is told in `X-Forwarded-For` all
//! come from one derivation — across several `X-Forwarded-For` lines, entries with ports, `unknown`
//! and garbage entries, and RFC 7239 `Forwarded`.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::capture_logs;
use wasmgate_tests::client::send;
use wasmgate_tests::proxy::{app_config, Proxy};

/// `/guarded` lets in 192.0.2.0/24 and 2001:db8::/32 only; `/open` lets everyone in. Both tell the
/// backend which client the plugins saw, in `x-client`.
async fn start(b: &Backend, top: &str) -> Proxy {
    let seen = r#"
[[site.route.plugin]]
builtin = "headers"
config.request = { set = { "x-client" = "{client_addr}" } }
"#;
    let config = app_config(
        &format!("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n{top}"),
        &format!(
            r#"
[[site.route]]
path = "/open"
backend = "{b}/open"
{seen}
[[site.route]]
path = "/guarded"
backend = "{b}/guarded"

[[site.route.plugin]]
builtin = "ip-allow"
config = {{ allow = ["192.0.2.0/24", "2001:db8::/32"] }}
{seen}"#,
            b = b.url()
        ),
    );
    Proxy::start(&config, &[]).await
}

/// One request to `path` with `headers` (each pair one line, in order): its status, and what the
/// backend got as `x-client` and `x-forwarded-for` (`None`s when it got nothing).
async fn ask(
    p: &Proxy,
    b: &Backend,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<(String, String)>) {
    let before = b.count();
    let mut r = Request::get(path).header("host", "app.test");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let reply = send(p.addr("web"), r.body(Full::new(Bytes::new())).unwrap()).await;
    let seen = (b.count() > before).then(|| {
        let s = b.last();
        let xff: Vec<&str> = s
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(xff.len(), 1, "one X-Forwarded-For line: {xff:?}");
        (
            s.header("x-client").unwrap().to_string(),
            xff[0].to_string(),
        )
    });
    (reply.status.as_u16(), seen)
}

/// (what, request headers, `/guarded`'s status, the client, the chain the backend is told)
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str, &'a str);

/// For each case: `/guarded` answers `status` (ip-allow's decision on `client`), and `/open` shows
/// the backend `client` both as the plugins' `{client_addr}` and as the first entry of the chain it
/// is told.
async fn check(p: &Proxy, b: &Backend, cases: &[Case<'_>]) {
    for (what, headers, status, client, chain) in cases {
        let (got, _) = ask(p, b, "/guarded", headers).await;
        assert_eq!(got, *status, "{what}: ip-allow");
        let (got, seen) = ask(p, b, &format!("/open/{}", what.replace(' ', "-")), headers).await;
        assert_eq!(got, 200, "{what}");
        let (x_client, xff) = seen.expect("the backend was asked");
        assert_eq!(&x_client, client, "{what}: the plugins' client");
        assert_eq!(&xff, chain, "{what}: the chain the backend is told");
        assert_eq!(
            xff.split(", ").next(),
            Some(*client),
            "{what}: the backend's left-most entry is the plugins' client"
        );
    }
}

#[tokio::test]
async fn ip_allow_and_the_backend_agree_on_x_forwarded_for() {
    let (_guard, logs) = capture_logs();
    let b = Backend::start().await;
    let p = start(&b, "").await;
    let xff = "x-forwarded-for";
    check(
        &p,
        &b,
        &[
            ("no header", &[], 403, "127.0.0.1", "127.0.0.1"),
            (
                "one entry",
                &[(xff, "192.0.2.1")],
                200,
                "192.0.2.1",
                "192.0.2.1, 127.0.0.1",
            ),
            // Two lines are one list: the second line's entry is the right-most.
            (
                "two lines",
                &[(xff, "6.6.6.6"), (xff, "192.0.2.1, 10.0.0.9")],
                200,
                "192.0.2.1",
                "192.0.2.1, 10.0.0.9, 127.0.0.1",
            ),
            (
                "two lines reversed",
                &[(xff, "192.0.2.1"), (xff, "6.6.6.6")],
                403,
                "6.6.6.6",
                "6.6.6.6, 127.0.0.1",
            ),
            // Ports (Azure, RFC 7239 style) are dropped, not a reason to skip the entry.
            (
                "v4 with port",
                &[(xff, "6.6.6.6, 192.0.2.1:5678")],
                200,
                "192.0.2.1",
                "192.0.2.1, 127.0.0.1",
            ),
            (
                "v6 with port",
                &[(xff, "6.6.6.6, [2001:db8::1]:443")],
                200,
                "2001:db8::1",
                "2001:db8::1, 127.0.0.1",
            ),
            (
                "attacker behind a port form",
                &[(xff, "192.0.2.1, 6.6.6.6:80")],
                403,
                "6.6.6.6",
                "6.6.6.6, 127.0.0.1",
            ),
            // `unknown` and garbage stop the walk: the client is the last trusted hop, never the
            // left-hand entry the client may have written.
            (
                "unknown",
                &[(xff, "192.0.2.1, unknown")],
                403,
                "127.0.0.1",
                "127.0.0.1",
            ),
            (
                "unknown behind a trusted hop",
                &[(xff, "192.0.2.1, unknown, 10.0.0.9")],
                403,
                "10.0.0.9",
                "10.0.0.9, 127.0.0.1",
            ),
            (
                "obfuscated",
                &[(xff, "192.0.2.1, _hidden")],
                403,
                "127.0.0.1",
                "127.0.0.1",
            ),
            (
                "garbage",
                &[(xff, "192.0.2.1, <script>")],
                403,
                "127.0.0.1",
                "127.0.0.1",
            ),
            // Forwarded is not read unless configured: it cannot smuggle a second opinion in.
            (
                "forwarded ignored",
                &[("forwarded", "for=192.0.2.1")],
                403,
                "127.0.0.1",
                "127.0.0.1",
            ),
        ],
    )
    .await;
    // The access log names the same client.
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("GET /open/two-lines "))
        .unwrap_or_else(|| panic!("no access line for /open/two-lines:\n{text}"));
    assert!(line.contains("client=192.0.2.1 "), "{line}");
    p.shutdown().await;
}

#[tokio::test]
async fn forwarded_is_read_when_configured_and_x_forwarded_for_then_is_not() {
    let b = Backend::start().await;
    let p = start(&b, "client_address_header = \"forwarded\"").await;
    let fwd = "forwarded";
    check(
        &p,
        &b,
        &[
            (
                "fwd quoted v6 with port",
                &[(
                    fwd,
                    "for=6.6.6.6, For=\"[2001:db8:cafe::17]:4711\";proto=https",
                )],
                200,
                "2001:db8:cafe::17",
                "2001:db8:cafe::17, 127.0.0.1",
            ),
            (
                "fwd two lines",
                &[
                    (fwd, "for=6.6.6.6"),
                    (fwd, "for=192.0.2.60;by=10.0.0.1, for=10.0.0.9"),
                ],
                200,
                "192.0.2.60",
                "192.0.2.60, 10.0.0.9, 127.0.0.1",
            ),
            (
                "fwd unknown",
                &[(fwd, "for=192.0.2.1, for=unknown")],
                403,
                "127.0.0.1",
                "127.0.0.1",
            ),
            (
                "fwd element without for",
                &[(fwd, "for=192.0.2.1, proto=https")],
                403,
                "127.0.0.1",
                "127.0.0.1",
            ),
            (
                "fwd x-forwarded-for ignored",
                &[("x-forwarded-for", "192.0.2.1")],
                403,
                "127.0.0.1",
                "127.0.0.1",
            ),
        ],
    )
    .await;
    // The backend's Forwarded is the believed chain too, with our hop last.
    ask(
        &p,
        &b,
        "/open/fwd",
        &[(fwd, "for=6.6.6.6, for=\"192.0.2.1:80\"")],
    )
    .await;
    assert_eq!(
        b.last().header("forwarded"),
        Some("for=192.0.2.1, for=127.0.0.1;proto=http")
    );
    p.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_peer_is_the_client_whatever_it_claims() {
    let b = Backend::start().await;
    let config = app_config(
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &format!(
            "[[site.route]]\npath = \"/\"\nbackend = \"{}/\"\n\n[[site.route.plugin]]\nbuiltin = \"ip-allow\"\nconfig = {{ allow = [\"192.0.2.0/24\"] }}\n",
            b.url()
        ),
    );
    let p = Proxy::start(&config, &[]).await;
    for (k, v) in [
        ("x-forwarded-for", "192.0.2.1"),
        ("forwarded", "for=192.0.2.1"),
    ] {
        let r = Request::get("/")
            .header("host", "app.test")
            .header(k, v)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(p.addr("web"), r).await.status, 403, "{k}");
    }
    p.shutdown().await;
}
