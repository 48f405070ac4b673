//! Multi-tenancy end to end: tenant directories, confinement, local conflicts and errors, independent
//! reloads, per-tenant limits, and isolation from a hostile neighbour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::{get, send, ws_connect};
use wasmgate_tests::proxy::{write, Proxy};
use wasmgate_tests::{capture_logs, fixture};

/// Tests run every backend on loopback, which a tenant may reach only when the operator allows it.
const LOOPBACK: &str = "backends = [\"127.0.0.1/32\"]";

fn operator(limits: &str) -> String {
    let limits = if limits.contains("backends = ") {
        limits.to_string()
    } else if limits.contains("[tenant_limits.default]") {
        limits.replace(
            "[tenant_limits.default]",
            &format!("[tenant_limits.default]\n{LOOPBACK}"),
        )
    } else {
        format!("{limits}\n[tenant_limits.default]\n{LOOPBACK}\n")
    };
    format!(
        r#"
tenants_dir = "tenants"
{limits}

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "operator"
listeners = ["web"]
hosts = ["ops.test"]

[[site.route]]
path = "/"
backend = "http://127.0.0.1:9/"
"#
    )
}

fn tenant(host: &str, b: &Backend, extra: &str) -> String {
    format!(
        r#"
[[site]]
name = "shop"
listeners = ["web"]
hosts = ["{host}"]
{extra}

[[site.route]]
path = "/"
backend = "{b}/"

[[site.route]]
path = "/socket"
backend = "ws://{a}/socket"
"#,
        b = b.url(),
        a = b.addr
    )
}

async fn start(_b: &Backend, limits: &str, tenants: &[(&str, String)]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tenants")).unwrap();
    for (name, text) in tenants {
        write(
            dir.path(),
            &format!("tenants/{name}/tenant.toml"),
            text.as_bytes(),
        );
    }
    for f in ["spin", "trap"] {
        for (name, _) in tenants {
            write(
                dir.path(),
                &format!("tenants/{name}/plugins/{f}.wasm"),
                &std::fs::read(fixture(f)).unwrap(),
            );
        }
    }
    Proxy::start_in(dir, &operator(limits)).await
}

#[tokio::test]
async fn tenants_serve_their_hosts_and_are_named_in_the_log() {
    let b = Backend::start().await;
    let (_guard, logs) = capture_logs();
    let p = start(
        &b,
        "",
        &[
            ("acme", tenant("acme.test", &b, "")),
            ("globex", tenant("globex.test", &b, "")),
        ],
    )
    .await;
    let addr = p.addr("web");
    assert_eq!(get(addr, "acme.test", "/a").await.status, 200);
    assert_eq!(get(addr, "globex.test", "/g").await.status, 200);
    assert_eq!(b.last().uri, "/g");
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("GET /a 200") && l.contains("tenant=acme")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("GET /g 200") && l.contains("tenant=globex")),
        "{text}"
    );
}

#[tokio::test]
async fn a_tenant_cannot_reach_outside_its_directory_nor_define_listeners() {
    let b = Backend::start().await;
    let outside = tenant(
        "evil.test",
        &b,
        "tls = { cert = \"../acme/plugins/spin.wasm\", key = \"/etc/hostname\" }",
    );
    let listener = format!(
        "[[listener]]\nname = \"mine\"\nbind = \"127.0.0.1:0\"\n{}",
        tenant("evil2.test", &b, "")
    );
    let (_guard, logs) = capture_logs();
    let p = start(
        &b,
        "",
        &[
            ("acme", tenant("acme.test", &b, "")),
            ("evil", outside),
            ("evil2", listener),
        ],
    )
    .await;
    let rt = p.server().runtime();
    assert!(rt.tenant("acme").is_some());
    assert!(rt.tenant("evil").is_none() && rt.tenant("evil2").is_none());
    assert!(
        rt.tenant_errors["evil"].contains("outside the tenant's directory"),
        "{}",
        rt.tenant_errors["evil"]
    );
    assert!(
        rt.tenant_errors["evil2"].contains("unknown field `listener`"),
        "{}",
        rt.tenant_errors["evil2"]
    );
    assert!(logs.text().contains("tenant refused"));
    assert_eq!(get(p.addr("web"), "acme.test", "/").await.status, 200);
    assert_eq!(get(p.addr("web"), "evil.test", "/").await.status, 404);
}

#[tokio::test]
async fn host_conflicts_and_broken_files_refuse_only_that_tenants_change() {
    let b = Backend::start().await;
    let p = start(
        &b,
        "",
        &[
            ("acme", tenant("acme.test", &b, "")),
            ("globex", tenant("globex.test", &b, "")),
        ],
    )
    .await;
    let addr = p.addr("web");
    // globex tries to take acme's host, then the operator's: refused, globex keeps its old version.
    write(
        p.dir.path(),
        "tenants/globex/tenant.toml",
        tenant("acme.test", &b, "").as_bytes(),
    );
    p.reload(&operator("")).unwrap();
    let rt = p.server().runtime();
    assert!(
        rt.tenant_errors["globex"].contains("belongs to tenant `acme`"),
        "{:?}",
        rt.tenant_errors
    );
    assert_eq!(
        get(addr, "globex.test", "/").await.status,
        200,
        "globex's previous version serves"
    );
    write(
        p.dir.path(),
        "tenants/globex/tenant.toml",
        tenant("ops.test", &b, "").as_bytes(),
    );
    p.reload(&operator("")).unwrap();
    assert!(p.server().runtime().tenant_errors["globex"].contains("belongs to the operator"));
    // A syntax error: same.
    write(
        p.dir.path(),
        "tenants/globex/tenant.toml",
        b"[[site]\nname = ",
    );
    p.reload(&operator("")).unwrap();
    let err = &p.server().runtime().tenant_errors["globex"];
    assert!(err.contains("tenants/globex/tenant.toml:1:"), "{err}");
    assert_eq!(get(addr, "globex.test", "/").await.status, 200);
    assert_eq!(get(addr, "acme.test", "/").await.status, 200);
}

#[tokio::test]
async fn a_change_under_one_tenant_reloads_that_tenant_only_and_drops_nothing() {
    let b = Backend::start().await;
    let p = Arc::new(
        start(
            &b,
            "",
            &[
                ("acme", tenant("acme.test", &b, "")),
                ("globex", tenant("globex.test", &b, "")),
            ],
        )
        .await,
    );
    let addr = p.addr("web");
    let before = p.server().runtime();
    let inflight = tokio::spawn(async move { get(addr, "globex.test", "/slow?ms=600").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(
        p.dir.path(),
        "tenants/acme/tenant.toml",
        tenant("acme.test", &b, "")
            .replace("acme.test\"]", "acme.test\", \"www.acme.test\"]")
            .as_bytes(),
    );
    let proxy = p.clone();
    tokio::task::spawn_blocking(move || proxy.reload(&operator("")))
        .await
        .unwrap()
        .unwrap();
    let after = p.server().runtime();
    assert!(
        Arc::ptr_eq(
            before.tenant("globex").unwrap(),
            after.tenant("globex").unwrap()
        ),
        "globex was rebuilt"
    );
    assert!(!Arc::ptr_eq(
        before.tenant("acme").unwrap(),
        after.tenant("acme").unwrap()
    ));
    assert_eq!(get(addr, "www.acme.test", "/").await.status, 200);
    let r = inflight.await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "slow".to_string()),
        "in flight across the reload"
    );
}

/// A tenant's unchanged plugin is kept when its tenant is rebuilt, warm instance and all; a change
/// of what the tenant is granted (its egress allowances) gets it a fresh one; and a neighbour with
/// the very same entry, on a site of the same name, never shares it.
#[tokio::test]
async fn a_tenants_unchanged_plugin_is_kept_across_a_reload_and_never_shared() {
    let b = Backend::start().await;
    let plugin = "[[site.plugin]]\nwasm = \"plugins/add-header.wasm\"\nconfig = { name = \"x-added\", value = \"v\", cache_on = \"x-key\" }\n";
    // One worker: one instance per plugin, so its call count tells instances apart.
    let limits = |extra_net: &str| {
        format!("workers = 1\n[tenant_limits.default]\nbackends = [\"127.0.0.1/32\"{extra_net}]\n")
    };
    let p = start(
        &b,
        &limits(""),
        &[
            ("acme", tenant("acme.test", &b, plugin)),
            ("globex", tenant("globex.test", &b, plugin)),
        ],
    )
    .await;
    for t in ["acme", "globex"] {
        write(
            p.dir.path(),
            &format!("tenants/{t}/plugins/add-header.wasm"),
            &std::fs::read(fixture("add-header")).unwrap(),
        );
    }
    p.reload(&operator(&limits(""))).unwrap();
    let addr = p.addr("web");
    // A new cache key each time: every request is a real call.
    let keys = std::sync::atomic::AtomicU32::new(0);
    let seen = |host: &'static str| {
        let (b, key) = (&b, keys.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        async move {
            let req = Request::get("/")
                .header("host", host)
                .header("x-key", key.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(send(addr, req).await.status, 200, "{host}");
            b.last().header("x-added").unwrap().to_owned()
        }
    };
    assert_eq!(seen("acme.test").await, "v#0");
    assert_eq!(seen("acme.test").await, "v#1");
    assert_eq!(
        seen("globex.test").await,
        "v#0",
        "globex has its own instance"
    );

    // acme's file changes elsewhere: acme is rebuilt, its plugin kept.
    write(
        p.dir.path(),
        "tenants/acme/tenant.toml",
        tenant("acme.test", &b, plugin)
            .replace("acme.test\"]", "acme.test\", \"www.acme.test\"]")
            .as_bytes(),
    );
    let before = p.server().runtime();
    p.reload(&operator(&limits(""))).unwrap();
    assert!(!Arc::ptr_eq(
        before.tenant("acme").unwrap(),
        p.server().runtime().tenant("acme").unwrap()
    ));
    assert_eq!(seen("www.acme.test").await, "v#2", "the same warm instance");
    assert_eq!(seen("globex.test").await, "v#1");

    // The tenants' egress allowances change: what their plugins were granted changed, so each
    // gets a fresh plugin.
    p.reload(&operator(&limits(", \"10.9.0.0/16\""))).unwrap();
    assert_eq!(
        seen("acme.test").await,
        "v#0",
        "a fresh plugin for a new grant"
    );
    assert_eq!(seen("globex.test").await, "v#0");
}

#[tokio::test]
async fn tenants_come_and_go_live() {
    let b = Backend::start().await;
    let p = start(&b, "", &[("acme", tenant("acme.test", &b, ""))]).await;
    let addr = p.addr("web");
    p.server()
        .reloader(&p.path("wasmgate.toml"))
        .watch()
        .await
        .unwrap();
    assert_eq!(get(addr, "new.test", "/").await.status, 404);
    write(
        p.dir.path(),
        "tenants/newco/tenant.toml",
        tenant("new.test", &b, "").as_bytes(),
    );
    wait_status(addr, "new.test", 200).await;
    std::fs::remove_dir_all(p.path("tenants/newco")).unwrap();
    wait_status(addr, "new.test", 404).await;
    assert_eq!(get(addr, "acme.test", "/").await.status, 200);
}

#[tokio::test]
async fn per_tenant_limits_give_clear_statuses_and_are_counted() {
    let b = Backend::start().await;
    let limits = r#"
[tenant_limits.default]
max_requests = 100

[tenant_limits.acme]
max_requests = 1
max_tunnels = 1
max_body_bytes = "1KiB"
plugin_time = "20ms"
"#;
    let acme = tenant("acme.test", &b, "").replace(
        &format!("backend = \"{}/\"\n", b.url()),
        &format!("backend = \"{}/\"\n[[site.route.plugin]]\nwasm = \"plugins/spin.wasm\"\nlimits = {{ time = \"5s\" }}\n", b.url()),
    );
    let p = start(
        &b,
        limits,
        &[("acme", acme), ("globex", tenant("globex.test", &b, ""))],
    )
    .await;
    let addr = p.addr("web");

    let held = tokio::spawn(async move { get(addr, "acme.test", "/slow?ms=500").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(addr, "acme.test", "/x").await;
    assert_eq!(
        r.status, 503,
        "second concurrent request of a max_requests = 1 tenant"
    );
    assert_eq!(
        get(addr, "globex.test", "/x").await.status,
        200,
        "other tenants are not limited by it"
    );
    assert_eq!(held.await.unwrap().status, 200);

    let big = Request::post("/upload")
        .header("host", "acme.test")
        .body(Full::new(Bytes::from(vec![0u8; 2048])))
        .unwrap();
    assert_eq!(send(addr, big).await.status, 413);

    // The tenant's plugin asked for 5 s per call; the operator's cap is 20 ms.
    let started = Instant::now();
    assert_eq!(get(addr, "acme.test", "/spin").await.status, 500);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "plugin_time cap not applied: {:?}",
        started.elapsed()
    );

    let (_one, _) = ws_connect(addr, "acme.test", "/socket", &[]).await.unwrap();
    match ws_connect(addr, "acme.test", "/socket", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503 beyond max_tunnels, got {other:?}"),
    }
    let shared = p.server().runtime().tenant("acme").unwrap().shared.clone();
    assert_eq!(
        shared
            .refused_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        shared
            .refused_tunnels
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_neighbour_does_not_hurt_another_tenant() {
    let b = Backend::start().await;
    let hostile = tenant(
        "a.test",
        &b,
        "[[site.plugin]]\nwasm = \"plugins/spin.wasm\"\nlimits = { time = \"50ms\" }",
    );
    let p = start(&b, "", &[("a", hostile), ("b", tenant("b.test", &b, ""))]).await;
    let addr = p.addr("web");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // 500 when the deadline traps the spin; 503 once the tenant is far over its
                // plugin CPU budget (its calls are refused without running).
                let status = get(addr, "a.test", "/spin").await.status;
                assert!(status == 500 || status == 503, "{status}");
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut worst = Duration::ZERO;
    for i in 0..100 {
        let t = Instant::now();
        let r = get(addr, "b.test", &format!("/b{i}")).await;
        assert_eq!(r.status, 200);
        worst = worst.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hostile_calls = 0;
    for a in attackers {
        hostile_calls += a.await.unwrap();
    }
    assert!(hostile_calls >= 8, "the neighbour was not actually busy");
    // Each of A's calls spins 50 ms; B's requests must not queue behind them for long.
    assert!(
        worst < Duration::from_millis(500),
        "tenant b's worst latency {worst:?}"
    );
}

async fn wait_status(addr: std::net::SocketAddr, host: &str, status: u16) {
    let deadline = Instant::now() + wasmgate_tests::STATE_CHANGE;
    loop {
        if get(addr, host, "/").await.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "{host} never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
