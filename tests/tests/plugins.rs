//! The plugin runtime end to end: real components (the fixtures in `tests/plugins/`) in the real proxy.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::get;
use wasmgate_tests::proxy::{app_config, write, Proxy};
use wasmgate_tests::{capture_logs, fixture};

fn copy_fixture(dir: &std::path::Path, name: &str, as_file: &str) {
    write(dir, as_file, &std::fs::read(fixture(name)).unwrap());
}

/// A site whose chain is `site_plugins`, with routes `/` and `/other` carrying `route_plugins`.
fn config(b: &Backend, site_plugins: &str, route_plugins: &str) -> String {
    app_config(
        "",
        &format!(
            r#"{site_plugins}

[[site.route]]
path = "/"
backend = "{b}/"

[[site.route]]
path = "/other"
backend = "{b}/other"
{route_plugins}"#,
            b = b.url()
        ),
    )
}

async fn start(b: &Backend, site_plugins: &str, route_plugins: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "add-header",
        "deny",
        "trap",
        "spin",
        "hog",
        "recurse",
        "init-fail",
    ] {
        copy_fixture(dir.path(), f, &format!("plugins/{f}.wasm"));
    }
    copy_fixture(dir.path(), "trap", "plugins/live.wasm");
    Proxy::start_in(dir, &config(b, site_plugins, route_plugins)).await
}

#[tokio::test]
async fn a_plugin_adds_headers_both_ways() {
    let b = Backend::start().await;
    let p = start(
        &b,
        r#"
[[site.plugin]]
wasm = "plugins/add-header.wasm"
config = { name = "x-added", value = "v1" }
"#,
        "",
    )
    .await;
    let r = get(p.addr("web"), "app.test", "/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(b.last().header("x-added"), Some("v1"));
    assert_eq!(r.header("x-plugin-version"), Some("v1"));
}

/// A plugin that declares a decision cache is called once per distinct key and TTL; the host answers
/// the rest (the fixture numbers its real calls in the header it sets).
#[tokio::test]
async fn declared_decision_caches_answer_equal_requests_without_a_call() {
    let b = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path(), "add-header", "plugins/add-header.wasm");
    let site = r#"
[[site.plugin]]
wasm = "plugins/add-header.wasm"
config = { name = "x-added", value = "v", cache_on = "x-key", cache_ttl_ms = 400 }
"#;
    // One worker: one cache and one instance, so the call numbers are predictable.
    let cfg = format!("workers = 1\n{}", config(&b, site, ""));
    let p = Proxy::start_in(dir, &cfg).await;
    let addr = p.addr("web");
    let seen = |key: Option<&str>| {
        let b = &b;
        let key = key.map(str::to_owned);
        async move {
            let mut req = http::Request::get("/c").header("host", "app.test");
            if let Some(k) = key {
                req = req.header("x-key", k);
            }
            let r = wasmgate_tests::client::send(
                addr,
                req.body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 200);
            b.last().header("x-added").unwrap().to_owned()
        }
    };
    assert_eq!(seen(Some("a")).await, "v#0");
    assert_eq!(seen(Some("a")).await, "v#0", "same key: the cached answer");
    assert_eq!(seen(Some("b")).await, "v#1", "another key: a call");
    assert_eq!(seen(None).await, "v#2", "no header is a key of its own");
    assert_eq!(seen(None).await, "v#2");
    assert_eq!(seen(Some("a")).await, "v#0");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen(Some("a")).await, "v#3", "past the TTL: a call again");
    // Operators see the reuse: three answers came from the cache.
    let text = p.server().metrics().encode();
    let hits: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("wasmgate_plugin_cache_hits_total{")
                && l.contains("plugin=\"add-header\"")
                && l.contains("site=\"app\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no cache-hit metric:\n{text}"));
    assert_eq!(hits, 3.0);
}

/// A reload keeps a plugin whose entry, wasm and read files did not change — its warm instance
/// (with its state) and its decision cache — and gives a changed one a fresh start: editing a
/// tokens file re-initialises only the plugin that reads it.
#[tokio::test]
async fn unchanged_plugins_are_kept_across_a_reload_with_their_instances() {
    let b = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path(), "add-header", "plugins/add-header.wasm");
    write(dir.path(), "tokens.txt", b"first\n");
    let site = |value: &str| {
        format!(
            "[[site.plugin]]\nwasm = \"plugins/add-header.wasm\"\n\
             config = {{ name = \"x-added\", value = \"{value}\", cache_on = \"x-key\" }}\n"
        )
    };
    let route = "[[site.route.plugin]]\nbuiltin = \"token-auth\"\nconfig = { tokens_file = \"tokens.txt\" }\n";
    // One worker: one instance and one cache, so the call numbers are predictable.
    let cfg = |value: &str, other: &str| {
        format!("workers = 1\n{}", config(&b, &site(value), route)).replace(
            &format!("{}/other\"", b.url()),
            &format!("{}/{other}\"", b.url()),
        )
    };
    let p = Proxy::start_in(dir, &cfg("v", "other")).await;
    let addr = p.addr("web");
    let request = |path: &str, headers: &[(&str, &str)]| {
        let mut r = http::Request::get(path).header("host", "app.test");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let seen = |key: &'static str| {
        let (b, req) = (&b, request("/c", &[("x-key", key)]));
        async move {
            assert_eq!(wasmgate_tests::client::send(addr, req).await.status, 200);
            b.last().header("x-added").unwrap().to_owned()
        }
    };
    let token = |t: &'static str| {
        let req = request("/other", &[("authorization", t)]);
        async move { wasmgate_tests::client::send(addr, req).await.status }
    };
    assert_eq!(seen("a").await, "v#0");
    assert_eq!(token("Bearer first").await, 200);

    // Another route's backend changes: both plugins stay as they are.
    p.reload(&cfg("v", "elsewhere")).unwrap();
    // (The /other request passed the site's add-header too, without x-key: call #1.)
    assert_eq!(
        seen("b").await,
        "v#2",
        "the same instance: its call count goes on"
    );
    assert_eq!(seen("a").await, "v#0", "the same decision cache");

    // Lines added above its entry: still kept, and cited (logs, `/status`) where it now is.
    let location = |p: &Proxy| p.server().runtime().sites[0].plugins.plugins()[0].location();
    let was = location(&p);
    p.reload(&format!("# moved down\n\n{}", cfg("v", "elsewhere")))
        .unwrap();
    // `file:line:column`
    let mut at = was.rsplitn(3, ':');
    let (column, line, file) = (at.next().unwrap(), at.next().unwrap(), at.next().unwrap());
    let line: u32 = line.parse().unwrap();
    assert_eq!(&*location(&p), format!("{file}:{}:{column}", line + 2));
    assert_eq!(seen("a").await, "v#0", "kept: the same decision cache");

    // The tokens file changes: token-auth starts afresh with it, add-header is kept.
    std::fs::write(p.path("tokens.txt"), "second\n").unwrap();
    p.reload(&cfg("v", "elsewhere")).unwrap();
    assert_eq!(token("Bearer second").await, 200);
    assert_eq!(
        token("Bearer first").await,
        403,
        "the revoked token is gone"
    );
    assert_eq!(seen("c").await, "v#3");

    // The plugin's own config changes: a fresh plugin, with an empty cache and a new count.
    p.reload(&cfg("w", "elsewhere")).unwrap();
    assert_eq!(seen("a").await, "w#0");
}

#[tokio::test]
async fn a_plugin_can_deny_and_route_chains_have_their_own_config() {
    let b = Backend::start().await;
    let p = start(
        &b,
        r#"
[[site.plugin]]
wasm = "plugins/add-header.wasm"
config = { name = "x-site", value = "site" }
"#,
        r#"
[[site.route.plugin]]
wasm = "plugins/add-header.wasm"
config = { name = "x-route", value = "route" }

[[site.route.plugin]]
wasm = "plugins/deny.wasm"
"#,
    )
    .await;
    let addr = p.addr("web");
    let r = get(addr, "app.test", "/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(b.last().header("x-site"), Some("site"));
    assert!(
        b.last().header("x-route").is_none(),
        "route plugins only run on their route"
    );

    let before = b.count();
    let r = get(addr, "app.test", "/other/x").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        b.count(),
        before,
        "a denied request never reaches the backend"
    );
    // on-response runs for the plugins that ran, last first: the route's add-header wrote last.
    assert_eq!(r.header("x-plugin-version"), Some("site"));
}

async fn contained(path: &str, limits: &str, kind: &str) {
    contained_after(Duration::ZERO, path, limits, kind).await
}

/// `idle`: wait this long after start before the bad request (the epoch ticker sleeps when no call is
/// in flight; the call that follows must wake it, or a runaway guest would never be stopped).
async fn contained_after(idle: Duration, path: &str, limits: &str, kind: &str) {
    let b = Backend::start().await;
    let (_guard, logs) = capture_logs();
    let plugin = match path {
        "/trap" => "trap",
        "/spin" => "spin",
        "/hog" => "hog",
        _ => "recurse",
    };
    let p = start(
        &b,
        &format!("[[site.plugin]]\nwasm = \"plugins/{plugin}.wasm\"\nlimits = {limits}\n"),
        "",
    )
    .await;
    let addr = p.addr("web");
    tokio::time::sleep(idle).await;
    let started = Instant::now();
    let (bad, good) = tokio::join!(get(addr, "app.test", path), get(addr, "app.test", "/fine"));
    assert_eq!(bad.status, 500, "{path} must fail closed");
    assert_eq!(good.status, 200, "a concurrent request is unaffected");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{path} took {:?}",
        started.elapsed()
    );
    // The plugin is still usable afterwards: its broken instance was discarded.
    assert_eq!(get(addr, "app.test", "/after").await.status, 200);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("plugin failed") && l.contains(&format!("plugin={plugin} ")))
        .unwrap_or_else(|| panic!("no failure logged:\n{text}"));
    assert!(line.contains(&format!("plugin={plugin}")), "{line}");
    assert!(line.contains("digest="), "{line}");
    assert!(line.contains(&format!("kind={kind}")), "{line}");
    if kind != "memory" {
        assert!(text.contains("wasm backtrace"), "{text}");
        // Function names from the guest's name section, demangled.
        assert!(
            text.contains(&format!("fixture_{plugin}::")),
            "no guest function names in:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_trap_is_contained_and_logged_with_a_backtrace() {
    contained("/trap", "{}", "trap").await;
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline() {
    contained("/spin", "{ time = \"20ms\" }", "deadline").await;
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline_after_the_proxy_idled() {
    contained_after(
        Duration::from_millis(300),
        "/spin",
        "{ time = \"20ms\" }",
        "deadline",
    )
    .await;
}

#[tokio::test]
async fn a_1gib_allocation_hits_the_memory_limit() {
    contained("/hog", "{ memory = \"16MiB\" }", "memory").await;
}

#[tokio::test]
async fn deep_recursion_hits_the_stack_limit() {
    contained("/recurse", "{}", "stack").await;
}

#[tokio::test]
async fn fail_open_skips_a_broken_plugin() {
    let b = Backend::start().await;
    let p = start(
        &b,
        "[[site.plugin]]\nwasm = \"plugins/trap.wasm\"\non_error = \"allow\"\n",
        "",
    )
    .await;
    assert_eq!(get(p.addr("web"), "app.test", "/trap").await.status, 200);
}

#[tokio::test]
async fn plugins_that_cannot_start_are_refused_with_the_reason() {
    let b = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path(), "init-fail", "plugins/init-fail.wasm");
    write(dir.path(), "plugins/garbage.wasm", b"\0asm not really");
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, config(&b, "[[site.plugin]]\nwasm = \"plugins/init-fail.wasm\"\n\n[[site.plugin]]\nwasm = \"plugins/garbage.wasm\"\n", "")).unwrap();
    let cfg = wasmgate_config::Config::load(&path).unwrap();
    let err = match wasmgate_control::Server::start(cfg).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started with broken plugins"),
    };
    assert!(
        err.contains("wasmgate.toml:10:1: plugin `init-fail`"),
        "{err}"
    );
    assert!(err.contains("fixture refuses to start"), "{err}");
    assert!(
        err.contains("plugin `garbage`") && err.contains("does not compile"),
        "{err}"
    );
}

#[tokio::test]
async fn reloading_a_plugin_twenty_times_under_load_drops_nothing() {
    let b = Backend::start().await;
    let site = |v: usize| {
        format!("[[site.plugin]]\nwasm = \"plugins/add-header.wasm\"\nconfig = {{ name = \"x-v\", value = \"v{v}\" }}\n")
    };
    let p = Arc::new(start(&b, &site(0), "").await);
    let addr = p.addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(addr, "app.test", "/load").await;
                if r.status == 200 && r.header("x-plugin-version").is_some() {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for v in 1..=20 {
        // A new digest each time too: the same component with a custom section appended.
        let mut bytes = std::fs::read(fixture("add-header")).unwrap();
        bytes.extend_from_slice(&custom_section(&format!("v{v}")));
        write(p.dir.path(), "plugins/add-header.wasm", &bytes);
        let (proxy, cfg) = (p.clone(), config(&b, &site(v), ""));
        tokio::task::spawn_blocking(move || proxy.reload(&cfg))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let r = get(addr, "app.test", "/check").await;
        assert_eq!(
            r.header("x-plugin-version"),
            Some(format!("v{v}").as_str()),
            "the new version serves"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too little load to mean anything"
    );
}

/// A wasm custom section (id 0) named `name` with an empty payload.
fn custom_section(name: &str) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    let mut s = vec![0u8, body.len() as u8];
    s.extend(body);
    s
}

#[tokio::test]
async fn a_broken_wasm_dropped_in_is_refused_and_the_old_plugin_keeps_answering() {
    let b = Backend::start().await;
    let (_guard, logs) = capture_logs();
    let p = start(&b, "[[site.plugin]]\nwasm = \"plugins/live.wasm\"\n", "").await;
    // `start` copied the `trap` fixture (it allows everything but /trap) as `live.wasm`.
    let path = p.path("wasmgate.toml");
    p.server().reloader(&path).watch().await.unwrap();
    let addr = p.addr("web");
    assert_eq!(get(addr, "app.test", "/trap").await.status, 500);

    // Truncated mid-copy: refused, the old one keeps serving.
    let good = std::fs::read(fixture("trap")).unwrap();
    write(p.dir.path(), "plugins/live.wasm", &good[..good.len() / 2]);
    wait_for(&logs, "reload refused").await;
    assert!(logs.text().contains("live.wasm"), "{}", logs.text());
    assert_eq!(get(addr, "app.test", "/").await.status, 200);
    assert_eq!(
        get(addr, "app.test", "/trap").await.status,
        500,
        "the old plugin still runs"
    );

    // A working plugin dropped in replaces it.
    let tmp = p.path("plugins/.live.wasm.tmp");
    std::fs::write(&tmp, std::fs::read(fixture("deny")).unwrap()).unwrap();
    std::fs::rename(&tmp, p.path("plugins/live.wasm")).unwrap();
    wait_for(&logs, "configuration reloaded").await;
    assert_eq!(get(addr, "app.test", "/").await.status, 401);
}

async fn wait_for(logs: &wasmgate_tests::LogBuffer, needle: &str) {
    let deadline = Instant::now() + wasmgate_tests::STATE_CHANGE;
    while !logs.text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
