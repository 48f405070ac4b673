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

async fn start(b: &Backend, site: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "plugins/add-header.wasm",
        &std::fs::read(fixture("add-header")).unwrap(),
    );
    Proxy::start_in(dir, &config(b, site, "")).await
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(addr, "localhost", "/readyz").await.status, 503);
    assert_eq!(get(addr, "localhost", "/healthz").await.status, 200);
    assert_eq!(held.await.unwrap().status, 200);
    drain.await.unwrap();
}

#[tokio::test]
async fn the_admin_endpoint_stays_off_public_addresses_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    let text =
        "[admin]\nbind = \"0.0.0.0:9901\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n";
    std::fs::write(&path, text).unwrap();
    let err = wasmgate::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("w.toml:2:8: admin.bind") && err.contains("allow_public"),
        "{err}"
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
    let server = wasmgate::Server::start(wasmgate::Config::load(&path).unwrap())
        .await
        .unwrap();
    server.reloader(&path).watch().unwrap();
    let addr = server.addr("web").unwrap();
    assert_eq!(get(addr, "v1.test", "/").await.status, 200);

    // The swap, as kubelet does it.
    let second = version(2, "v2.test");
    std::os::unix::fs::symlink(second.file_name().unwrap(), m.join("..data_tmp")).unwrap();
    std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
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
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "admin.token", b"s3cret\n");
    let cfg = config(&b, "a", "").replace(
        "bind = \"127.0.0.1:0\"\n\n[[listener]]",
        "bind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n[[listener]]",
    );
    assert!(cfg.contains("token_file"), "{cfg}");
    write(
        dir.path(),
        "plugins/add-header.wasm",
        &std::fs::read(fixture("add-header")).unwrap(),
    );
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
