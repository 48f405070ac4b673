//! Operations end to end: the admin endpoint (metrics, health, readiness, status) and the Kubernetes
//! ConfigMap symlink swap.

use std::time::{Duration, Instant};

use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::get;
use wasmgate_tests::fixture;
use wasmgate_tests::proxy::{write, Proxy};

fn config(b: &Backend, site: &str, extra_site: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "{site}"
listeners = ["web"]
hosts = ["app.test"]
{extra_site}

[[site.plugin]]
wasm = "plugins/add-header.wasm"
config = {{ name = "x-a", value = "1" }}

[[site.route]]
path = "/"
backend = "{b}/"

[[site.route]]
path = "/dead"
backend = "http://127.0.0.1:9/"
"#,
        b = b.url()
    )
}

/// A directory with the plugin `config` names.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "plugins/add-header.wasm",
        &std::fs::read(fixture("add-header")).unwrap(),
    );
    dir
}

/// Start `cfg` (a variation of [`config`]) in a [`plugin_dir`].
async fn start_config(cfg: &str) -> Proxy {
    Proxy::start_in(plugin_dir(), cfg).await
}

async fn start(b: &Backend, site: &str) -> Proxy {
    start_config(&config(b, site, "")).await
}

async fn admin(p: &Proxy, path: &str) -> wasmgate_tests::client::Reply {
    get(p.addr("admin"), "localhost", path).await
}

fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_errors_plugins_and_reloads() {
    let b = Backend::start().await;
    let p = start(&b, "metrics-site").await;
    let addr = p.addr("web");
    for _ in 0..3 {
        assert_eq!(get(addr, "app.test", "/ok").await.status, 200);
    }
    assert_eq!(get(addr, "app.test", "/dead").await.status, 502);
    let reloader = p.server().reloader(&p.path("wasmgate.toml"));
    assert!(reloader.reload_and_log("test").await);

    let m = admin(&p, "/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    let site = "site=\"metrics-site\"";
    assert_eq!(
        metric_value(
            &text,
            "wasmgate_requests_total",
            &[site, "class=\"2xx\"", "route=\"/\""]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "wasmgate_requests_total", &[site, "class=\"5xx\""]),
        1.0
    );
    assert!(metric_value(&text, "wasmgate_request_duration_seconds_count", &[site]) >= 4.0);
    assert!(metric_value(&text, "wasmgate_response_bytes_total", &[site]) > 0.0);
    assert!(
        metric_value(
            &text,
            "wasmgate_upstream_errors_total",
            &["kind=\"upstream_connect\""]
        ) >= 1.0
    );
    assert!(
        metric_value(
            &text,
            "wasmgate_plugin_calls_total",
            &[site, "plugin=\"add-header\""]
        ) >= 8.0,
        "{text}"
    );
    assert!(metric_value(&text, "wasmgate_reloads_total", &["result=\"ok\""]) >= 1.0);
    assert!(
        text.contains("wasmgate_plugin_info{") && text.contains("wasmgate_config_info{digest=\"")
    );
    assert!(text.contains("wasmgate_connections_open"));
}

#[tokio::test]
async fn health_readiness_and_status() {
    let b = Backend::start().await;
    let mut p = start(&b, "status-site").await;
    assert_eq!(admin(&p, "/healthz").await.status, 200);
    assert_eq!(admin(&p, "/readyz").await.status, 200);

    // A broken reload shows up in /status, with the live digest unchanged.
    let before = admin(&p, "/status").await.json();
    let digest = before["config"]["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64);
    assert_eq!(before["plugins"][0]["plugin"], "add-header");
    assert_eq!(before["plugins"][0]["digest"].as_str().unwrap().len(), 12);
    std::fs::write(
        p.path("wasmgate.toml"),
        config(&b, "status-site", "timeout = \"soon\""),
    )
    .unwrap();
    assert!(
        !p.server()
            .reloader(&p.path("wasmgate.toml"))
            .reload_and_log("test")
            .await
    );
    let after = admin(&p, "/status").await.json();
    assert_eq!(after["reloads"]["failed"], 1);
    assert!(
        after["reloads"]["last_error"]
            .as_str()
            .unwrap()
            .contains("site[0].timeout"),
        "{after}"
    );
    assert_eq!(
        after["config"]["digest"],
        digest.as_str(),
        "the refused file is not live"
    );

    // While draining, readiness fails (so load balancers move away) but the process is healthy.
    let addr = p.addr("admin");
    let web = p.addr("web");
    let held = tokio::spawn(async move { get(web, "app.test", "/slow?ms=800").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = p.server.take().unwrap();
    let drain = tokio::spawn(server.shutdown_with_grace(Duration::from_secs(5)));
    wasmgate_tests::eventually("readiness fails while draining", || async {
        get(addr, "localhost", "/readyz").await.status == 503
    })
    .await;
    assert_eq!(get(addr, "localhost", "/healthz").await.status, 200);
    assert_eq!(held.await.unwrap().status, 200);
    drain.await.unwrap();
}

/// A reload that changes settings only a restart applies says which, applies the rest, and keeps
/// saying so (in `/status` too) until the file agrees with the running process again.
#[tokio::test]
async fn restart_only_settings_are_named_and_not_applied() {
    let (_g, logs) = wasmgate_tests::capture_logs();
    let b = Backend::start().await;
    let base = config(&b, "lifetimes-site", "");
    let p = start_config(&base).await;
    let changed = format!(
        "workers = 3\n[timeouts]\nkeepalive = \"7s\"\n{}",
        config(&b, "lifetimes-site", "timeout = \"9s\"")
    );
    std::fs::write(p.path("wasmgate.toml"), &changed).unwrap();
    let reloader = p.server().reloader(&p.path("wasmgate.toml"));
    assert!(reloader.reload_and_log("test").await);
    let status = admin(&p, "/status").await.json();
    assert_eq!(
        status["reloads"]["restart_pending"],
        serde_json::json!(["workers", "timeouts.keepalive"]),
        "{status}"
    );
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("not applied until a restart")
            && l.contains("workers, timeouts.keepalive")),
        "{text}"
    );
    // The site's own timeout is live (a reloadable setting in the same file)…
    assert_eq!(
        p.server().runtime().sites[0].routes[0]
            .cfg
            .timeouts
            .response,
        Duration::from_secs(9)
    );
    // …and a second reload of the same file still reports what was never applied.
    assert_eq!(
        p.reload(&changed).unwrap(),
        vec!["workers", "timeouts.keepalive"]
    );
    // Back to the values the process started with: nothing is pending.
    std::fs::write(p.path("wasmgate.toml"), &base).unwrap();
    assert!(reloader.reload_and_log("test").await);
    let status = admin(&p, "/status").await.json();
    assert_eq!(
        status["reloads"]["restart_pending"],
        serde_json::json!([]),
        "{status}"
    );
}

/// Kubernetes mounts a ConfigMap as `..data -> ..<timestamp>/` plus one symlink per key, and updates
/// it by writing a new timestamp dir and renaming a new `..data` symlink over the old one.
#[tokio::test]
async fn a_configmap_symlink_swap_reloads_the_config() {
    let b = Backend::start().await;
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    let version = |n: u32, host: &str| {
        let dir = m.join(format!("..2026_11_25_10_00_0{n}.000"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("wasmgate.toml"), config(&b, "cm-site", "").replace("app.test", host).replace(
            "[[site.plugin]]\nwasm = \"plugins/add-header.wasm\"\nconfig = { name = \"x-a\", value = \"1\" }\n",
            "",
        ))
        .unwrap();
        dir
    };
    let first = version(1, "v1.test");
    std::os::unix::fs::symlink(first.file_name().unwrap(), m.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/wasmgate.toml", m.join("wasmgate.toml")).unwrap();
    let path = m.join("wasmgate.toml");
    let server = wasmgate_control::Server::start(wasmgate_config::Config::load(&path).unwrap())
        .await
        .unwrap();
    server.reloader(&path).watch().await.unwrap();
    let addr = server.addr("web").unwrap();
    assert_eq!(get(addr, "v1.test", "/").await.status, 200);

    // The swap, as kubelet does it.
    let second = version(2, "v2.test");
    std::os::unix::fs::symlink(second.file_name().unwrap(), m.join("..data_tmp")).unwrap();
    std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();

    let deadline = Instant::now() + wasmgate_tests::STATE_CHANGE;
    while get(addr, "v2.test", "/").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the swapped ConfigMap was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(addr, "v1.test", "/").await.status, 404);
    server.shutdown_with_grace(Duration::from_secs(1)).await;
}

/// With `token_file`, `/metrics` and `/status` need the bearer token (read on every request, so a
/// rotated token takes effect at once); the probes stay open for load balancers.
#[tokio::test]
async fn the_admin_endpoint_wants_its_bearer_token() {
    let b = Backend::start().await;
    let dir = plugin_dir();
    write(dir.path(), "admin.token", b"s3cret\n");
    let cfg = config(&b, "a", "").replace(
        "bind = \"127.0.0.1:0\"\n\n[[listener]]",
        "bind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n[[listener]]",
    );
    assert!(cfg.contains("token_file"), "{cfg}");
    let p = Proxy::start_in(dir, &cfg).await;
    let addr = p.addr("admin");
    let with = |token: Option<&str>, path: &str| {
        let mut req = http::Request::get(path.to_string()).header("host", "localhost");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        wasmgate_tests::client::send(
            addr,
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
    };
    for path in ["/metrics", "/status"] {
        let r = with(None, path).await;
        assert_eq!(r.status, 401, "{path} without a token");
        assert!(r.headers.contains_key("www-authenticate"), "{path}");
        assert_eq!(
            with(Some("wrong"), path).await.status,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            with(Some("s3cret"), path).await.status,
            200,
            "{path} with the token"
        );
    }
    assert_eq!(with(None, "/healthz").await.status, 200);
    assert_eq!(with(None, "/readyz").await.status, 200);
    // Rotation: the old token stops working on the next request.
    write(p.dir.path(), "admin.token", b"n3w\n");
    assert_eq!(with(Some("s3cret"), "/status").await.status, 401);
    assert_eq!(with(Some("n3w"), "/status").await.status, 200);
}

/// The admin listener is bounded like the proxy's: a connection that sends no head is closed after
/// `header_timeout`, one that keeps asking is closed after `lifetime`, and beyond `max_connections`
/// new ones are closed on accept — until the others are gone.
#[tokio::test]
async fn the_admin_endpoint_times_out_and_caps_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start().await;
    let cfg = config(&b, "a", "").replace(
        "bind = \"127.0.0.1:0\"\n\n[[listener]]",
        "bind = \"127.0.0.1:0\"\nheader_timeout = \"400ms\"\nlifetime = \"1500ms\"\nmax_connections = 3\n\n[[listener]]",
    );
    assert!(cfg.contains("max_connections = 3"), "{cfg}");
    let p = start_config(&cfg).await;
    let addr = p.addr("admin");
    // Closed by the server: EOF (or a reset) within `within`.
    async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    // A head that never comes.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "closed after {took:?}"
    );

    // Three connections hold the cap; the fourth is closed at once, long before any timeout.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(300), fourth.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty(),
        "the fourth connection was served: {}",
        String::from_utf8_lossy(&buf)
    );
    // The held ones time out (no head), and the endpoint answers again.
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(3)).await);
    }
    assert_eq!(admin(&p, "/healthz").await.status, 200);

    // A client that keeps its connection busy is still cut at the lifetime.
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut answered = 0;
    loop {
        let sent = busy
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 1024];
        let got = tokio::time::timeout(Duration::from_secs(1), busy.read(&mut buf)).await;
        match (sent, got) {
            (Ok(()), Ok(Ok(n))) if n > 0 => {
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                answered += 1;
            }
            _ => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a busy admin connection outlived its lifetime"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lived = started.elapsed();
    assert!(answered >= 5, "only {answered} answers before the cut");
    assert!(
        lived >= Duration::from_millis(1400) && lived < Duration::from_secs(3),
        "lived {lived:?}"
    );
}

/// `socket = "..."` serves the admin endpoint on a unix socket (access is the file's mode, 0660)
/// and opens no TCP port.
#[tokio::test]
async fn the_admin_endpoint_can_be_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start().await;
    let cfg = config(&b, "a", "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"",
        "[admin]\nsocket = \"admin.sock\"",
    );
    assert!(cfg.contains("socket = "), "{cfg}");
    let p = start_config(&cfg).await;
    assert!(p.server().addr("admin").is_none(), "no TCP admin port");
    let sock = p.path("admin.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    for (path, want) in [("/healthz", "200"), ("/status", "200"), ("/nope", "404")] {
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {want}")),
            "{path}: {out}"
        );
        if path == "/status" {
            assert!(out.contains("\"sites\"") || out.contains("digest"), "{out}");
        }
    }
}

/// The admin endpoint names sites, tenants and errors: beyond loopback it needs a token (or a unix
/// socket), and `check` says so; with the token file it starts.
#[tokio::test]
async fn a_public_admin_endpoint_needs_a_token() {
    let b = Backend::start().await;
    let dir = plugin_dir();
    let public = config(&b, "a", "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"",
        "[admin]\nbind = \"0.0.0.0:0\"",
    );
    write(dir.path(), "wasmgate.toml", public.as_bytes());
    let err = wasmgate_config::Config::load(&dir.path().join("wasmgate.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wasmgate.toml:3:8: admin.bind") && err.contains("token_file"),
        "{err}"
    );
    // An empty token file is no token.
    write(dir.path(), "admin.token", b"\n");
    let with_token = public.replace(
        "bind = \"0.0.0.0:0\"",
        "bind = \"0.0.0.0:0\"\ntoken_file = \"admin.token\"",
    );
    write(dir.path(), "wasmgate.toml", with_token.as_bytes());
    let err = wasmgate_config::Config::load(&dir.path().join("wasmgate.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no token"), "{err}");
    write(dir.path(), "admin.token", b"t0ken\n");
    assert!(wasmgate_config::Config::load(&dir.path().join("wasmgate.toml")).is_ok());
    // Zero connections would be no endpoint at all.
    let zero = with_token.replace("token_file", "max_connections = 0\ntoken_file");
    write(dir.path(), "wasmgate.toml", zero.as_bytes());
    let err = wasmgate_config::Config::load(&dir.path().join("wasmgate.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.max_connections"), "{err}");
}
