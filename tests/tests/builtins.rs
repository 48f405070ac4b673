//! The built-in plugins end to end (each also has unit tests through the SDK's native harness).

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::{get, send};
use wasmgate_tests::proxy::{app_config, Proxy};

async fn start(b: &Backend, plugins: &str, extra: &str, files: &[(&str, &[u8])]) -> Proxy {
    let config = app_config(
        extra,
        &format!(
            r#"
[[site.route]]
path = "/"
backend = "{b}/"

[[site.route]]
path = "/guarded"
backend = "{b}/guarded"
{plugins}"#,
            b = b.url()
        ),
    );
    Proxy::start(&config, files).await
}

fn with_headers(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = Request::get(path).header("host", "app.test");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn headers_sets_appends_removes_and_fills_variables() {
    let b = Backend::start().await;
    let p = start(&b, r#"
[[site.route.plugin]]
builtin = "headers"
config.request = { set = { "x-a" = "1", "x-client" = "{client_addr} {scheme} {host}" }, append = { "x-b" = "2" }, remove = ["x-c"] }
config.response = { set = { "x-served-by" = "wasmgate", "x-id" = "{request_id}" }, remove = ["x-backend"] }
"#, "", &[]).await;
    let r = send(
        p.addr("web"),
        with_headers("/guarded/x", &[("x-b", "0"), ("x-c", "gone")]),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = b.last();
    assert_eq!(seen.header("x-a"), Some("1"));
    assert_eq!(seen.header("x-client"), Some("127.0.0.1 http app.test"));
    let xb: Vec<_> = seen
        .headers
        .get_all("x-b")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(xb, vec!["0", "2"]);
    assert!(seen.header("x-c").is_none());
    assert_eq!(r.header("x-served-by"), Some("wasmgate"));
    assert_eq!(
        r.header("x-id"),
        seen.header("x-request-id"),
        "{{request_id}} is the id the backend got"
    );
    assert!(r.header("x-backend").is_none());
}

#[tokio::test]
async fn ip_allow_lets_loopback_in_and_keeps_others_out() {
    let b = Backend::start().await;
    let p = start(
        &b,
        r#"
[[site.route.plugin]]
builtin = "ip-allow"
config = { allow = ["127.0.0.0/8", "::1/128"], deny = [] }
"#,
        "",
        &[],
    )
    .await;
    assert_eq!(get(p.addr("web"), "app.test", "/guarded").await.status, 200);
    drop(p);

    let p = start(
        &b,
        r#"
[[site.route.plugin]]
builtin = "ip-allow"
config = { allow = ["10.0.0.0/8"] }
"#,
        "",
        &[],
    )
    .await;
    assert_eq!(get(p.addr("web"), "app.test", "/guarded").await.status, 403);
    // A client cannot talk its way in with X-Forwarded-For: 127.0.0.1 is not a trusted proxy here.
    let r = send(
        p.addr("web"),
        with_headers("/guarded", &[("x-forwarded-for", "10.1.2.3")]),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        get(p.addr("web"), "app.test", "/open").await.status,
        200,
        "only the route is guarded"
    );

    // Behind a trusted proxy, the address it reports is the one checked.
    let p = start(
        &b,
        r#"
[[site.route.plugin]]
builtin = "ip-allow"
config = { allow = ["10.0.0.0/8"] }
"#,
        "trusted_proxies = [\"127.0.0.1\"]",
        &[],
    )
    .await;
    let r = send(
        p.addr("web"),
        with_headers("/guarded", &[("x-forwarded-for", "10.1.2.3")]),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn basic_auth_challenges_refuses_and_admits() {
    let b = Backend::start().await;
    let hash = bcrypt::hash_with_salt("s3cret", 5, [7u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let htpasswd = format!("alice:{hash}\n");
    let p = start(
        &b,
        r#"
[[site.route.plugin]]
builtin = "basic-auth"
config = { htpasswd = "users.htpasswd", realm = "chat", forward_user = "x-user" }
"#,
        "",
        &[("users.htpasswd", htpasswd.as_bytes())],
    )
    .await;
    let addr = p.addr("web");
    let r = get(addr, "app.test", "/guarded").await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic realm=\"chat\""));
    // alice:wrong
    let r = send(
        addr,
        with_headers("/guarded", &[("authorization", "Basic YWxpY2U6d3Jvbmc=")]),
    )
    .await;
    assert_eq!(r.status, 401);
    // alice:s3cret
    let r = send(
        addr,
        with_headers("/guarded", &[("authorization", "Basic YWxpY2U6czNjcmV0")]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.last().header("x-user"), Some("alice"));
}

#[tokio::test]
async fn require_header_and_token_auth_in_one_chain() {
    let b = Backend::start().await;
    let p = start(
        &b,
        r#"
[[site.route.plugin]]
builtin = "require-header"
config = { name = "x-api-key", values = ["k1", "k2"] }

[[site.route.plugin]]
builtin = "token-auth"
config = { tokens = ["s3cret"] }
"#,
        "",
        &[],
    )
    .await;
    let addr = p.addr("web");
    assert_eq!(
        get(addr, "app.test", "/guarded").await.status,
        401,
        "no key"
    );
    assert_eq!(
        send(addr, with_headers("/guarded", &[("x-api-key", "nope")]))
            .await
            .status,
        403,
        "wrong key"
    );
    assert_eq!(
        send(addr, with_headers("/guarded", &[("x-api-key", "k2")]))
            .await
            .status,
        401,
        "key but no token"
    );
    let r = send(
        addr,
        with_headers(
            "/guarded",
            &[("x-api-key", "k1"), ("authorization", "Bearer wrong")],
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        addr,
        with_headers(
            "/guarded",
            &[("x-api-key", "k1"), ("authorization", "Bearer s3cret")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_bad_builtin_config_is_refused_with_the_field() {
    let b = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[site]]\nname = \"a\"\nlisteners = [\"web\"]\ndefault = true\n\
         [[site.plugin]]\nbuiltin = \"ip-allow\"\nconfig = {{ allow = [\"10.0.0.300/8\"] }}\n[[site.route]]\npath = \"/\"\nbackend = \"{}\"\n",
        b.url()
    );
    std::fs::write(&path, config).unwrap();
    let err = match wasmgate_control::Server::start(wasmgate_config::Config::load(&path).unwrap())
        .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a bad CIDR was accepted"),
    };
    assert!(
        err.contains("wasmgate.toml:8:1: plugin `ip-allow` (builtin ip-allow)"),
        "{err}"
    );
    assert!(
        err.contains("allow") && err.contains("10.0.0.300/8"),
        "{err}"
    );
}

/// token-auth declares a decision cache: a refusal replayed from it is the same response — status,
/// challenge and body — and a cached refusal for one credential never answers another.
#[tokio::test]
async fn cached_refusals_replay_the_whole_response() {
    let b = Backend::start().await;
    let p = start(
        &b,
        r#"
[[site.route.plugin]]
builtin = "token-auth"
config = { tokens = ["s3cret"], realm = "cached" }
"#,
        "workers = 1\n",
        &[],
    )
    .await;
    let addr = p.addr("web");
    for round in 0..3 {
        let r = get(addr, "app.test", "/guarded").await;
        assert_eq!(r.status, 401, "round {round}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"cached\""),
            "round {round}"
        );
        assert_eq!(r.text(), "missing token\n", "round {round}");
        let r = send(
            addr,
            with_headers("/guarded", &[("authorization", "Bearer no")]),
        )
        .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (http::StatusCode::FORBIDDEN, "invalid token\n"),
            "round {round}"
        );
        let r = send(
            addr,
            with_headers("/guarded", &[("authorization", "Bearer s3cret")]),
        )
        .await;
        assert_eq!(r.status, 200, "round {round}");
    }
    assert_eq!(b.count(), 3, "only the valid token reached the backend");
}

/// A chain whose response edits are all fixed (no `on-response` call): they apply to the backend's
/// answers and to a later plugin's refusal, for every plugin whose `on-request` ran.
#[tokio::test]
async fn fixed_response_edits_apply_without_a_call() {
    let b = Backend::start().await;
    let p = start(
        &b,
        r#"
[[site.route.plugin]]
builtin = "headers"
config.response = { set = { "x-frame-options" = "DENY" }, remove = ["x-backend"] }

[[site.route.plugin]]
builtin = "token-auth"
config = { tokens = ["s3cret"] }
"#,
        "",
        &[],
    )
    .await;
    let addr = p.addr("web");
    let r = send(
        addr,
        with_headers("/guarded", &[("authorization", "Bearer s3cret")]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("x-backend").is_none(), "{:?}", r.headers);
    let r = get(addr, "app.test", "/guarded").await;
    assert_eq!(r.status, 401, "token-auth refuses");
    assert_eq!(
        r.header("x-frame-options"),
        Some("DENY"),
        "headers ran before the refusal, so its edits apply to it"
    );
}
