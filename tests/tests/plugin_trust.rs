//! Plugins that can be trusted (issue 15, items 2–4): the decision cache never lies, failing open is
//! the operator's explicit choice and never passes a client's identity claim on, password hashing
//! runs in the host (all htpasswd hash kinds, throttled), and a credential file with a bad line
//! applies line by line — revocations included.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::{get, send, Reply};
use wasmgate_tests::proxy::{app_config, write, Proxy};

fn req(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = Request::get(path).header("host", "app.test");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::new())).unwrap()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

/// Standard base64 (the tests crate has no base64 dependency; this is all a Basic header needs).
fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The issue's reproduction: token-auth with `query` + `strip` as a site plugin, an `/admin` route
/// guarded by its own plugin. `/hello?token=T` after `/admin/users?token=T` used to reach the backend
/// as `GET /admin/users` — the cached "continue, rewrite the path" answer, past `/admin`'s plugin.
#[tokio::test]
async fn a_path_rewrite_is_never_replayed_from_the_cache() {
    let b = Backend::start().await;
    let config = app_config(
        "workers = 1\n",
        &format!(
            r#"
[[site.plugin]]
builtin = "token-auth"
config = {{ tokens = ["T1"], query = "token", query_always = true, strip = true }}

[[site.route]]
path = "/"
backend = "{b}/"

[[site.route]]
path = "/admin"
backend = "{b}/admin"

[[site.route.plugin]]
builtin = "require-header"
config = {{ name = "x-admin-key", values = ["let-me-in"] }}
"#,
            b = b.url()
        ),
    );
    let p = Proxy::start(&config, &[]).await;
    let addr = p.addr("web");
    let r = send(
        addr,
        req("/admin/users?token=T1", &[("x-admin-key", "let-me-in")]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.last().uri, "/admin/users");
    for _ in 0..3 {
        let r = send(addr, req("/hello?token=T1&a=1", &[])).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            b.last().uri,
            "/hello?a=1",
            "the backend got another request's path"
        );
    }
    // And the other way round: the guarded route still needs its key.
    let r = send(addr, req("/admin/users?token=T1", &[])).await;
    assert_eq!(r.status, 401);
}

fn sign(secret: &str, subject: &str, expiry: u64) -> String {
    // `hmac_sha256(secret, "<subject>.<expiry>")`, as `openssl dgst -sha256 -hmac` computes it.
    let payload = format!("{subject}.{expiry}");
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-hex"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(payload.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl");
    let text = String::from_utf8(out.stdout).unwrap();
    format!("{payload}.{}", text.trim().rsplit(' ').next().unwrap())
}

/// A signed token's cached acceptance ends at the token's expiry, not a second later.
#[tokio::test]
async fn a_signed_token_is_refused_as_soon_as_it_expires() {
    let secret = "0123456789abcdef0123456789abcdef";
    let b = Backend::start().await;
    let config = app_config(
        "workers = 1\n",
        &format!(
            r#"
[[site.plugin]]
builtin = "token-auth"
config = {{ hmac = {{ secret = "{secret}" }}, forward_subject = "x-auth-subject" }}

[[site.route]]
path = "/"
backend = "{b}/"
"#,
            b = b.url()
        ),
    );
    let p = Proxy::start(&config, &[]).await;
    let addr = p.addr("web");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let expiry = now.as_secs() + 2;
    let token = format!("Bearer {}", sign(secret, "ann", expiry));
    // Warm the cache while the token is valid (keep well clear of the expiry itself).
    let deadline = std::time::UNIX_EPOCH + Duration::from_secs(expiry) - Duration::from_millis(400);
    let mut served = 0;
    while std::time::SystemTime::now() < deadline && served < 20 {
        let r = send(addr, req("/", &[("authorization", &token)])).await;
        assert_eq!(r.status, 200);
        assert_eq!(b.last().header("x-auth-subject"), Some("ann"));
        served += 1;
    }
    assert!(served > 0, "the machine is too slow for this test");
    let wait = (std::time::UNIX_EPOCH + Duration::from_secs(expiry))
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let r = send(addr, req("/", &[("authorization", &token)])).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (403, "token expired\n")
    );
}

fn load_err(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, config).unwrap();
    match wasmgate_config::Config::load(&path) {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    }
}

/// `on_error = "allow"` on an access-control built-in is refused with file:line and a reason,
/// unless the operator opts in by name; on other plugins it stays a plain choice.
#[tokio::test]
async fn fail_open_on_an_auth_plugin_needs_an_explicit_opt_in() {
    for builtin in ["token-auth", "basic-auth", "ip-allow", "require-header"] {
        let config = app_config(
            "",
            &format!(
                "[[site.plugin]]\nbuiltin = \"{builtin}\"\non_error = \"allow\"\n\n[[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n"
            ),
        );
        let err = load_err(&config);
        let line = config
            .lines()
            .position(|l| l.starts_with("on_error"))
            .unwrap()
            + 1;
        assert!(
            err.contains(&format!("wasmgate.toml:{line}:")),
            "{builtin}: {err}"
        );
        assert!(err.contains("site[0].plugin[0].on_error"), "{err}");
        assert!(
            err.contains("i_understand_this_disables_auth = true"),
            "{err}"
        );
        let opted = config.replace(
            "on_error = \"allow\"",
            "on_error = \"allow\"\ni_understand_this_disables_auth = true",
        );
        assert_eq!(load_err(&opted), "", "{builtin} with the opt-in");
    }
    // Not an access-control plugin: allowed as before.
    let config = app_config(
        "",
        "[[site.plugin]]\nbuiltin = \"headers\"\non_error = \"allow\"\n\n[[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n",
    );
    assert_eq!(load_err(&config), "");
    // The opt-in without fail-open is a mistake worth pointing out.
    let config = app_config(
        "",
        "[[site.plugin]]\nbuiltin = \"ip-allow\"\ni_understand_this_disables_auth = true\n\n[[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n",
    );
    assert!(load_err(&config).contains("only meaningful with `on_error = \"allow\"`"));
}

/// The issue's reproduction: a wrong password against a slow bcrypt hash used to exceed the plugin's
/// time limit, and with `on_error = "allow"` the request went on carrying the client's own
/// `x-remote-user: admin`. Hashing is the host's now: the wrong password is a 401, the right one a
/// 200 with the real user, both within a 5 ms plugin limit.
#[tokio::test]
async fn a_slow_hash_no_longer_makes_basic_auth_fail_open() {
    let b = Backend::start().await;
    let hash = bcrypt::hash_with_salt("s3cret", 10, [9u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let config = app_config(
        "",
        &format!(
            r#"
[[site.plugin]]
builtin = "basic-auth"
config = {{ htpasswd = "users.htpasswd", forward_user = "x-remote-user" }}
on_error = "allow"
i_understand_this_disables_auth = true
limits = {{ time = "5ms" }}

[[site.route]]
path = "/"
backend = "{b}/"
"#,
            b = b.url()
        ),
    );
    let htpasswd = format!("admin:{hash}\n");
    let p = Proxy::start(&config, &[("users.htpasswd", htpasswd.as_bytes())]).await;
    let addr = p.addr("web");
    let spoof = ("x-remote-user", "admin");
    let r = send(
        addr,
        req("/", &[("authorization", &basic("admin", "wrong")), spoof]),
    )
    .await;
    assert_eq!(r.status, 401, "a wrong password is refused, not skipped");
    assert_eq!(b.count(), 0);
    let r = send(
        addr,
        req(
            "/",
            &[
                ("authorization", &basic("admin", "s3cret")),
                ("x-remote-user", "mallory"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.last().header("x-remote-user"), Some("admin"));
}

/// When a plugin is skipped after a failure (`on_error = "allow"`), the identity headers it declared
/// are removed: the backend never sees the client's own claim in the plugin's stead.
#[tokio::test]
async fn a_skipped_plugin_s_identity_headers_are_removed() {
    let b = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        wasmgate_tests::fixture("trap"),
        dir.path().join("trap.wasm"),
    )
    .unwrap();
    let config = app_config(
        "",
        &format!(
            r#"
[[site.plugin]]
wasm = "trap.wasm"
config = {{ identity = ["x-remote-user", "X-Auth-Subject"] }}
on_error = "allow"

[[site.route]]
path = "/"
backend = "{b}/"
"#,
            b = b.url()
        ),
    );
    let p = Proxy::start_in(dir, &config).await;
    let addr = p.addr("web");
    let claims = [
        ("x-remote-user", "admin"),
        ("x-auth-subject", "root"),
        ("x-other", "kept"),
    ];
    let r = send(addr, req("/trap/x", &claims)).await;
    assert_eq!(r.status, 200, "skipped");
    let seen = b.last();
    assert_eq!(seen.header("x-remote-user"), None);
    assert_eq!(seen.header("x-auth-subject"), None);
    assert_eq!(seen.header("x-other"), Some("kept"));
    // When the plugin runs, they are the plugin's business (this one leaves them alone).
    send(addr, req("/fine", &claims)).await;
    assert_eq!(b.last().header("x-remote-user"), Some("admin"));
}

/// Every hash kind an htpasswd file may hold, accepted with its password and refused without, end to
/// end. Lines from `openssl passwd` (OpenSSL 3.0) and glibc's crypt(3).
#[tokio::test]
async fn every_htpasswd_hash_kind_is_checked_by_the_host() {
    let b = Backend::start().await;
    let bcrypt_line = bcrypt::hash_with_salt("bpw", 5, [3u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let users: &[(&str, &str, &str)] = &[
        ("apr", "$apr1$hZ3lWQ1N$l3hlBtp6A/IH5Yl8u6YYE/", "secret"),
        ("md5", "$1$5pZSV9va$azfrPr6af3Fc7dLblQXVa0", "password"),
        ("s256", "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA", "secret"),
        ("s512", "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1", "secret"),
        ("des", "aZGJuE6EXrjEE", "test"),
        ("sha", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "password"),
        ("bc", &bcrypt_line, "bpw"),
    ];
    let file: String = users.iter().map(|(u, h, _)| format!("{u}:{h}\n")).collect();
    let config = app_config(
        // Trusted, so each wrong password below can come from its own address (no throttle here).
        "trusted_proxies = [\"127.0.0.1\"]\n",
        &format!(
            r#"
[[site.plugin]]
builtin = "basic-auth"
config = {{ htpasswd = "users.htpasswd", forward_user = "x-user" }}

[[site.route]]
path = "/"
backend = "{b}/"
"#,
            b = b.url()
        ),
    );
    let p = Proxy::start(&config, &[("users.htpasswd", file.as_bytes())]).await;
    let addr = p.addr("web");
    for (i, (user, _, password)) in users.iter().enumerate() {
        let from = format!("198.51.100.{}", i + 1);
        let r = send(
            addr,
            req(
                "/",
                &[
                    ("authorization", &basic(user, password)),
                    ("x-forwarded-for", &from),
                ],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{user}");
        assert_eq!(b.last().header("x-user"), Some(*user));
        let r = send(
            addr,
            req(
                "/",
                &[
                    ("authorization", &basic(user, "wrong")),
                    ("x-forwarded-for", &from),
                ],
            ),
        )
        .await;
        assert_eq!(r.status, 401, "{user} with a wrong password");
    }
}

/// After a few failures from one address, its checks are answered 429 without hashing — even the
/// right password — until the window passes; other addresses are not affected.
#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() {
    let b = Backend::start().await;
    let config = app_config(
        "trusted_proxies = [\"127.0.0.1\"]\n",
        &format!(
            r#"
[[site.plugin]]
builtin = "basic-auth"
config = {{ htpasswd = "users.htpasswd" }}

[[site.route]]
path = "/"
backend = "{b}/"
"#,
            b = b.url()
        ),
    );
    let file = "ann:$apr1$hZ3lWQ1N$l3hlBtp6A/IH5Yl8u6YYE/\n";
    let p = Proxy::start(&config, &[("users.htpasswd", file.as_bytes())]).await;
    let addr = p.addr("web");
    let as_user = |user: &'static str, ip: &'static str, pw: &str| {
        let auth = basic(user, pw);
        async move {
            send(
                addr,
                req("/", &[("authorization", &auth), ("x-forwarded-for", ip)]),
            )
            .await
        }
    };
    let from = |ip: &'static str, pw: &'static str| as_user("ann", ip, pw);
    assert_eq!(from("203.0.113.5", "secret").await.status, 200);
    for _ in 0..5 {
        assert_eq!(from("203.0.113.5", "guess").await.status, 401);
    }
    let r: Reply = from("203.0.113.5", "secret").await;
    assert_eq!(r.status, 429, "throttled even with the right password");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        from("203.0.113.6", "secret").await.status,
        200,
        "another address"
    );
    // Guessing user names costs the same: logins as users who do not exist count as failures.
    for user in ["bob", "carol", "dave", "erin", "frank"] {
        assert_eq!(as_user(user, "203.0.113.7", "x").await.status, 401);
    }
    assert_eq!(
        from("203.0.113.7", "secret").await.status,
        429,
        "throttled after five unknown users"
    );
}

async fn status_json(p: &Proxy) -> serde_json::Value {
    get(p.addr("admin"), "localhost", "/status").await.json()
}

/// The issue's reproduction: an edit of the tokens file that removes a token but has one bad line
/// used to be refused as a whole, so the revoked token kept working. Now the bad line is reported
/// (file:line in `/status`, a metric) and grants nothing, and the removal takes effect at once —
/// also for a token whose acceptance was in the decision cache.
#[tokio::test]
async fn a_bad_line_does_not_keep_a_revoked_token_alive() {
    let b = Backend::start().await;
    let config = app_config(
        "workers = 1\n[admin]\nbind = \"127.0.0.1:0\"\n",
        &format!(
            r#"
[[site.plugin]]
builtin = "token-auth"
config = {{ tokens_file = "tokens.txt" }}

[[site.route]]
path = "/"
backend = "{b}/"
"#,
            b = b.url()
        ),
    );
    let p = Proxy::start(&config, &[("tokens.txt", b"alpha\nbeta\n")]).await;
    let addr = p.addr("web");
    let with = |t: &'static str| async move {
        send(addr, req("/", &[("authorization", &format!("Bearer {t}"))]))
            .await
            .status
    };
    for _ in 0..3 {
        assert_eq!(with("beta").await, 200, "warm the decision cache");
    }
    assert_eq!(
        status_json(&p).await["plugins"][0]["config_problems"],
        serde_json::json!([])
    );

    // Revoke beta, with a typo on the next line.
    write(p.dir.path(), "tokens.txt", b"alpha\ngam ma\n");
    p.reload(&config).expect("the reload is accepted");
    let t0 = Instant::now();
    assert_eq!(with("beta").await, 403, "revoked");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(with("alpha").await, 200);
    assert_eq!(with("gam").await, 403, "a refused line grants nothing");

    let status = status_json(&p).await;
    let problems = &status["plugins"][0]["config_problems"];
    let tokens = p.path("tokens.txt").display().to_string();
    assert_eq!(problems[0]["file"], tokens.as_str(), "{status}");
    assert_eq!(problems[0]["line"], 2);
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("without spaces"),
        "{problems}"
    );
    let metrics = get(p.addr("admin"), "localhost", "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wasmgate_plugin_config_problems{")
                && l.contains("site=\"app\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // A file whose last token is gone refuses everyone rather than keeping the old tokens.
    write(p.dir.path(), "tokens.txt", b"# nobody\n");
    p.reload(&config).expect("accepted");
    assert_eq!(with("alpha").await, 403);
}

/// The same for an htpasswd file: the removal of a user applies despite a bad line elsewhere.
#[tokio::test]
async fn a_bad_htpasswd_line_does_not_keep_a_removed_user() {
    let b = Backend::start().await;
    let config = app_config(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        &format!(
            r#"
[[site.plugin]]
builtin = "basic-auth"
config = {{ htpasswd = "users.htpasswd" }}

[[site.route]]
path = "/"
backend = "{b}/"
"#,
            b = b.url()
        ),
    );
    let sha = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
    let before = format!("ann:{sha}\nbob:{sha}\n");
    let p = Proxy::start(&config, &[("users.htpasswd", before.as_bytes())]).await;
    let addr = p.addr("web");
    let login = |u: &'static str| async move {
        send(addr, req("/", &[("authorization", &basic(u, "password"))]))
            .await
            .status
    };
    assert_eq!(login("bob").await, 200);
    write(
        p.dir.path(),
        "users.htpasswd",
        format!("ann:{sha}\ncarl:plain-text\n").as_bytes(),
    );
    p.reload(&config).expect("accepted");
    assert_eq!(login("bob").await, 401, "removed");
    assert_eq!(login("ann").await, 200);
    assert_eq!(login("carl").await, 401);
    let status = status_json(&p).await;
    assert_eq!(
        status["plugins"][0]["config_problems"][0]["line"], 2,
        "{status}"
    );
}

/// A plugin built against `wasmgate:plugin@0.2.0` (token-auth as main built it, before 0.2.1 added
/// host imports) still loads and works: the additions are new functions only.
#[tokio::test]
async fn a_plugin_built_for_0_2_0_still_loads() {
    let b = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let frozen = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/frozen/token_auth-plugin-0.2.0.wasm");
    std::fs::copy(frozen, dir.path().join("old.wasm")).unwrap();
    let config = app_config(
        "",
        &format!(
            "[[site.plugin]]\nwasm = \"old.wasm\"\nconfig = {{ tokens = [\"s3cret\"] }}\n\n[[site.route]]\npath = \"/\"\nbackend = \"{}/\"\n",
            b.url()
        ),
    );
    let p = Proxy::start_in(dir, &config).await;
    let addr = p.addr("web");
    assert_eq!(send(addr, req("/", &[])).await.status, 401);
    assert_eq!(
        send(addr, req("/", &[("authorization", "Bearer s3cret")]))
            .await
            .status,
        200
    );
}
