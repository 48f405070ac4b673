//! Hostile tenants, egress and resources (issue 14, items 2 and 3): tenant A edits only its own
//! directory to reach loopback, the metadata address, private ranges or wasmgate's own sockets
//! (literally, or through a name that resolves there only at connect time), to take more sites,
//! routes, plugins, instances and memory than the operator grants, or to burn the plugin CPU — while
//! tenant B and the operator serve real traffic and can still reload.

use std::time::{Duration, Instant};

use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::get;
use wasmgate_tests::proxy::{write, Proxy};
use wasmgate_tests::{capture_logs, fixture};

/// The operator: one listener, the admin endpoint, its own site, and `limits` for tenants.
fn operator(b: &Backend, limits: &str) -> String {
    format!(
        r#"
tenants_dir = "tenants"
{limits}

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "operator"
listeners = ["web"]
hosts = ["ops.test"]

[[site.route]]
path = "/"
backend = "{b}/"
"#,
        b = b.url()
    )
}

/// A tenant with one site on `host` whose routes go to `backends` (`path = backend` pairs), and
/// optional extra site-level TOML (plugins).
fn tenant(host: &str, routes: &[(&str, String)], extra: &str) -> String {
    let mut t = format!(
        "[[site]]\nname = \"s-{}\"\nlisteners = [\"web\"]\nhosts = [\"{host}\"]\n{extra}\n",
        host.replace('.', "-")
    );
    for (path, backend) in routes {
        t.push_str(&format!(
            "\n[[site.route]]\npath = \"{path}\"\nbackend = \"{backend}\"\n"
        ));
    }
    t
}

async fn start(b: &Backend, limits: &str, tenants: &[(&str, String)]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tenants")).unwrap();
    for (name, text) in tenants {
        write(
            dir.path(),
            &format!("tenants/{name}/tenant.toml"),
            text.as_bytes(),
        );
        write(
            dir.path(),
            &format!("tenants/{name}/plugins/spin.wasm"),
            &std::fs::read(fixture("spin")).unwrap(),
        );
    }
    Proxy::start_in(dir, &operator(b, limits)).await
}

fn set_tenant(p: &Proxy, name: &str, text: &str) {
    write(
        p.dir.path(),
        &format!("tenants/{name}/tenant.toml"),
        text.as_bytes(),
    );
    write(
        p.dir.path(),
        &format!("tenants/{name}/plugins/spin.wasm"),
        &std::fs::read(fixture("spin")).unwrap(),
    );
}

fn metric(p: &Proxy, name: &str, labels: &[&str]) -> f64 {
    p.server()
        .metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A name (not `localhost`, not a literal) that the resolver maps to loopback: the machine's host
/// name, as Debian's and most containers' `/etc/hosts` do.
async fn loopback_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let addrs: Vec<_> = tokio::net::lookup_host((name.as_str(), 80))
        .await
        .unwrap_or_else(|e| panic!("the host name `{name}` does not resolve: {e}"))
        .collect();
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
        "this test needs the host name `{name}` to resolve to loopback only (it resolves to {addrs:?})"
    );
    name
}

#[tokio::test]
async fn literal_forbidden_backends_are_refused_at_load_with_file_line_and_reason() {
    let b = Backend::start().await;
    let port = b.addr.port();
    let evil = tenant(
        "evil.test",
        &[
            ("/lo", format!("http://127.0.0.1:{port}/")),
            ("/lo6", format!("http://[::1]:{port}/")),
            ("/mapped", format!("http://[::ffff:127.0.0.1]:{port}/")),
            ("/nat64", "http://[64:ff9b::a9fe:a9fe]/".into()),
            ("/meta", "http://169.254.169.254/latest/meta-data/".into()),
            ("/private", "http://10.0.0.1/".into()),
            ("/zero", "http://0.0.0.0/".into()),
            ("/localhost", format!("http://localhost:{port}/")),
            ("/legacy", format!("http://127.1:{port}/")),
        ],
        "",
    );
    let limits = "[tenant_limits.victim]\nbackends = [\"127.0.0.1/32\"]\n";
    for (attacker, victim) in [("aaa", "victim"), ("zzz", "victim")] {
        let (_guard, logs) = capture_logs();
        let p = start(
            &b,
            &limits.replace("victim", victim),
            &[
                (attacker, evil.clone()),
                (victim, tenant("victim.test", &[("/", b.url())], "")),
            ],
        )
        .await;
        let rt = p.server().runtime();
        assert!(rt.tenant(attacker).is_none(), "the attacker is not served");
        let err = &rt.tenant_errors[attacker];
        let file = format!("tenants/{attacker}/tenant.toml:");
        for (reason, count) in [
            ("loopback", 3),
            ("IPv4-mapped", 1),
            ("NAT64", 1),
            ("metadata", 1),
            ("RFC 1918", 1),
            ("0.0.0.0/8", 1),
            ("legacy form", 1),
        ] {
            let lines: Vec<&str> = err.lines().filter(|l| l.contains(reason)).collect();
            assert!(lines.len() >= count, "{reason}: {err}");
            assert!(
                lines
                    .iter()
                    .all(|l| l.contains(&file) && l.contains("egress")),
                "{err}"
            );
        }
        assert_eq!(refusals(err), 9, "one refusal per route: {err}");
        assert!(logs.text().contains("tenant refused"));
        let addr = p.addr("web");
        assert_eq!(get(addr, "victim.test", "/v").await.status, 200);
        assert_eq!(get(addr, "ops.test", "/o").await.status, 200);
        assert_eq!(get(addr, "evil.test", "/lo").await.status, 404);
        // The victim can still reload.
        set_tenant(
            &p,
            victim,
            &tenant("victim.test", &[("/", b.url()), ("/two", b.url())], ""),
        );
        p.server()
            .reload(p.server().runtime().config.as_ref().clone())
            .unwrap();
        assert!(!p.server().runtime().tenant_errors.contains_key(victim));
        assert_eq!(get(addr, "victim.test", "/two").await.status, 200);
    }
}

#[tokio::test]
async fn allowing_loopback_does_not_open_the_proxys_own_listener_or_the_admin_endpoint() {
    let b = Backend::start().await;
    let p = start(
        &b,
        "[tenant_limits.default]\nbackends = [\"127.0.0.0/8\"]\n",
        &[("open", tenant("open.test", &[("/", b.url())], ""))],
    )
    .await;
    let web = p.addr("web");
    let admin = p.addr("admin");
    assert_eq!(
        get(web, "open.test", "/").await.status,
        200,
        "allowed range"
    );
    set_tenant(
        &p,
        "open",
        &tenant(
            "open.test",
            &[
                ("/", b.url()),
                ("/loop", format!("http://127.0.0.1:{}/", web.port())),
                (
                    "/admin",
                    format!("http://127.0.0.1:{}/metrics", admin.port()),
                ),
                ("/loop2", format!("http://localhost:{}/", web.port())),
            ],
            "",
        ),
    );
    p.server()
        .reload(p.server().runtime().config.as_ref().clone())
        .unwrap();
    let rt = p.server().runtime();
    let err = &rt.tenant_errors["open"];
    assert!(
        err.contains("own listener `web`") && err.contains("admin endpoint"),
        "{err}"
    );
    assert_eq!(refusals(err), 3, "{err}");
    assert!(err.contains("tenants/open/tenant.toml:"), "{err}");
    // Its previous version keeps serving.
    assert_eq!(get(web, "open.test", "/x").await.status, 200);
}

#[tokio::test]
async fn a_name_that_resolves_to_a_forbidden_address_is_refused_at_connect_time() {
    let name = loopback_name().await;
    let b = Backend::start().await;
    let port = b.addr.port();
    let (_guard, logs) = capture_logs();
    let p = start(
        &b,
        "[tenant_limits.egress-open]\nbackends = [\"127.0.0.0/8\"]\n",
        &[
            // No allowance: the name passes the load-time check, its resolution does not.
            (
                "egress-closed",
                tenant(
                    "closed.test",
                    &[("/", format!("http://{name}:{port}/"))],
                    "",
                ),
            ),
            // Loopback allowed, but the name is the proxy's own listener (its port is known only
            // once bound, so only the connect-time check can see it).
            (
                "egress-open",
                tenant(
                    "open.test",
                    &[
                        ("/", format!("http://{name}:{port}/")),
                        ("/loop", format!("http://{name}:{{WEB}}/")),
                    ],
                    "",
                ),
            ),
        ],
    )
    .await;
    let web = p.addr("web");
    // The port of the proxy was not known when the tenant was written: write it and reload.
    let open = std::fs::read_to_string(p.path("tenants/egress-open/tenant.toml"))
        .unwrap()
        .replace("{WEB}", &web.port().to_string());
    set_tenant(&p, "egress-open", &open);
    p.server()
        .reload(p.server().runtime().config.as_ref().clone())
        .unwrap();
    assert!(
        p.server().runtime().tenant_errors.is_empty(),
        "{:?}",
        p.server().runtime().tenant_errors
    );

    let before = b.count();
    let r = get(web, "closed.test", "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(b.count(), before, "nothing reached the backend");
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("refused by the egress policy")
                && l.contains("tenant=egress-closed")
                && l.contains("loopback")),
        "{text}"
    );
    assert_eq!(
        metric(
            &p,
            "wasmgate_tenant_egress_refused_total",
            &["tenant=\"egress-closed\""]
        ),
        1.0
    );
    // The same name through an allowance reaches the backend…
    assert_eq!(get(web, "open.test", "/").await.status, 200);
    // …but never the proxy itself.
    let r = get(web, "open.test", "/loop").await;
    assert_eq!(r.status, 502);
    assert!(logs
        .text()
        .lines()
        .any(|l| l.contains("tenant=egress-open") && l.contains("own listener `web`")));
    assert_eq!(get(web, "ops.test", "/").await.status, 200);
}

#[tokio::test]
async fn a_connection_pooled_for_the_operator_is_never_handed_to_a_tenant() {
    let name = loopback_name().await;
    let b = Backend::start().await;
    let backend = format!("http://{name}:{}/", b.addr.port());
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tenants/pool-t/tenant.toml",
        tenant("t.test", &[("/", backend.clone())], "").as_bytes(),
    );
    // The operator's route names the backend exactly as the tenant's does (same pool authority).
    // One worker: keep-alive pools are per worker thread.
    let cfg = operator(&b, "workers = 1").replace(&format!("{}/", b.url()), &backend);
    let p = Proxy::start_in(dir, &cfg).await;
    let web = p.addr("web");
    // The operator's request leaves a keep-alive connection to `name:port` in the pool.
    assert_eq!(get(web, "ops.test", "/").await.status, 200);
    assert_eq!(get(web, "t.test", "/").await.status, 502);
    assert_eq!(get(web, "ops.test", "/").await.status, 200);
    assert_eq!(
        b.connections(),
        1,
        "the operator's connection was kept and reused"
    );
}

#[tokio::test]
async fn tenant_resources_are_counted_before_the_config_is_accepted() {
    let b = Backend::start().await;
    let limits = r#"
[tenant_limits.default]
backends = ["127.0.0.1/32"]

[tenant_limits.greedy]
max_sites = 1
max_routes = 2
max_plugins = 1
max_instances = 4
max_plugin_memory = "32MiB"
"#;
    let plugin = "[[site.plugin]]\nwasm = \"plugins/spin.wasm\"\nlimits = { instances = 3, memory = \"16MiB\" }\n";
    let greedy = format!(
        "{}\n{}",
        tenant(
            "greedy.test",
            &[("/", b.url()), ("/a", b.url()), ("/b", b.url())],
            &format!("{plugin}{plugin}")
        ),
        tenant("greedy2.test", &[("/", b.url())], "")
    );
    let p = start(
        &b,
        limits,
        &[
            ("greedy", greedy),
            ("modest", tenant("modest.test", &[("/", b.url())], plugin)),
        ],
    )
    .await;
    let rt = p.server().runtime();
    assert!(rt.tenant("greedy").is_none());
    let err = &rt.tenant_errors["greedy"];
    for why in [
        "more than 1 sites",
        "more than 2 routes",
        "more than 1 plugin entries",
        "6 warm instances in all, more than 4",
        "48 MiB of plugin memory in all",
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(why) && l.contains("tenants/greedy/tenant.toml:")),
            "{why}: {err}"
        );
    }
    assert_eq!(get(p.addr("web"), "modest.test", "/").await.status, 200);

    // Operator caps are bounded too: no grant can take the pool's headroom.
    let bad = limits.replace("max_instances = 4", "max_instances = 100000");
    let path = p.path("wasmgate.toml");
    std::fs::write(&path, operator(&b, &bad)).unwrap();
    let e = wasmgate_config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tenant_limits.greedy.max_instances") && e.contains("between 1 and"),
        "{e}"
    );
}

#[tokio::test]
async fn the_tenants_together_cannot_take_the_instance_pool_and_incumbents_keep_theirs() {
    let b = Backend::start().await;
    // Each tenant asks for 64 × 2 warm instances ≈ 256 slots of quota; the tenants' share is 750.
    let heavy = |host: &str| {
        let plugin = "[[site.plugin]]\nwasm = \"plugins/spin.wasm\"\nlimits = { instances = 64, memory = \"2MiB\" }\n";
        tenant(host, &[("/", b.url())], &format!("{plugin}{plugin}"))
    };
    let limits = "[tenant_limits.default]\nbackends = [\"127.0.0.1/32\"]\nmax_instances = 128\n";
    let p = start(
        &b,
        limits,
        &[("m-one", heavy("one.test")), ("m-two", heavy("two.test"))],
    )
    .await;
    let web = p.addr("web");
    // Newcomers sorting before and after the incumbents: the tenants' share is taken, both are
    // refused, and the incumbents keep serving whatever the names' order.
    for newcomer in ["a-new", "z-new"] {
        set_tenant(&p, newcomer, &heavy(&format!("{newcomer}.test")));
    }
    p.server()
        .reload(p.server().runtime().config.as_ref().clone())
        .unwrap();
    let rt = p.server().runtime();
    assert!(
        rt.tenant("m-one").is_some() && rt.tenant("m-two").is_some(),
        "{:?}",
        rt.tenant_errors
    );
    for n in ["a-new", "z-new"] {
        let e = rt.tenant_errors.get(n).map(String::as_str).unwrap_or("");
        assert!(
            e.contains("instance pool") && e.contains(&format!("tenants/{n}/tenant.toml")),
            "{n}: {:?}",
            rt.tenant_errors
        );
    }
    assert_eq!(get(web, "one.test", "/").await.status, 200);
    assert_eq!(get(web, "two.test", "/").await.status, 200);
    // An incumbent can still reload (its own reservation is its room).
    set_tenant(
        &p,
        "m-one",
        &heavy("one.test").replace("one.test\"]", "one.test\", \"www.one.test\"]"),
    );
    p.server()
        .reload(p.server().runtime().config.as_ref().clone())
        .unwrap();
    assert!(!p.server().runtime().tenant_errors.contains_key("m-one"));
    assert_eq!(get(web, "www.one.test", "/").await.status, 200);
}

/// A tenant over its plugin CPU budget waits (or is parked mid-call); its neighbour's call, made at
/// the same instant on the same single worker, is served first and is never throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_cpu_budget_waits_and_its_neighbour_goes_first() {
    let b = Backend::start().await;
    let spin = "[[site.plugin]]\nwasm = \"plugins/spin.wasm\"\nlimits = { time = \"20ms\" }\n";
    let limits = r#"
workers = 1

[tenant_limits.default]
backends = ["127.0.0.1/32"]
# The spin plugin's own 20 ms limit (a tenant's limits.time is capped at plugin_time, 10 ms by default).
plugin_time = "20ms"

[tenant_limits.cpu-a]
plugin_cpu = "5%"
"#;
    let p = start(
        &b,
        limits,
        &[
            ("cpu-a", tenant("a.test", &[("/", b.url())], spin)),
            ("cpu-b", tenant("b.test", &[("/", b.url())], spin)),
        ],
    )
    .await;
    let web = p.addr("web");
    // A spins to its 20 ms deadline twice: 40 ms of guest CPU at 5 % of a core is ≈ 800 ms of
    // budget, of which an idle tenant has 400 ms in hand.
    for _ in 0..2 {
        assert_eq!(get(web, "a.test", "/spin").await.status, 500);
    }
    // What A ran is charged: at least one deadline's worth. (Not exactly two: once A is parked, each
    // stretch runs from its resumption to the next epoch tick, shorter than the tick the deadline
    // counts for it; and on a loaded machine, the worker's time is charged, late ticks included.)
    let charged = metric(
        &p,
        "wasmgate_tenant_plugin_cpu_seconds_total",
        &["tenant=\"cpu-a\""],
    );
    assert!(charged >= 0.018, "A charged {charged}s");
    // A call of A's waits before it starts (`delayed`) or, when its budget runs out mid-call, is
    // parked at its next epoch yield (`parked`): either way, A's throttling is counted.
    let throttled_a = || {
        metric(
            &p,
            "wasmgate_tenant_plugin_throttled_total",
            &["tenant=\"cpu-a\"", "what=\"delayed\""],
        ) + metric(
            &p,
            "wasmgate_tenant_plugin_throttled_total",
            &["tenant=\"cpu-a\"", "what=\"parked\""],
        )
    };
    let delayed_before = throttled_a();
    // At the same instant, one call each: B's runs first, A's waits for its budget.
    let t0 = Instant::now();
    let a = tokio::spawn(async move {
        let r = get(web, "a.test", "/spin").await;
        (r.status, t0.elapsed())
    });
    let b_call = tokio::spawn(async move {
        let r = get(web, "b.test", "/b").await;
        (r.status, t0.elapsed())
    });
    let (b_status, b_took) = b_call.await.unwrap();
    let (a_status, a_took) = a.await.unwrap();
    assert_eq!(b_status, 200);
    assert_eq!(a_status, 500, "A runs (and traps) once it is within budget");
    assert!(
        b_took < Duration::from_millis(150) && a_took > b_took + Duration::from_millis(100),
        "B took {b_took:?}, A {a_took:?}"
    );
    assert!(throttled_a() > delayed_before);
    assert_eq!(
        metric(
            &p,
            "wasmgate_tenant_plugin_throttled_total",
            &["tenant=\"cpu-b\""]
        ),
        0.0,
        "B is never throttled (nor sent to the lane)"
    );
}

/// A tenant whose guest ran a long stretch is *heavy*: for the next second its calls run on the
/// background lane, threads at `SCHED_IDLE`, so they never hold a worker its neighbours' requests
/// wait on. There a call still gets its whole time limit of CPU (a preempted lane thread's ticks do
/// not count against it), its neighbour's calls stay on the workers, and once it is quiet for a
/// second its calls come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_tenants_calls_run_at_idle_priority_and_still_get_their_time() {
    let b = Backend::start().await;
    let spin = "[[site.plugin]]\nwasm = \"plugins/spin.wasm\"\nlimits = { time = \"20ms\" }\n";
    let limits = r#"
[tenant_limits.default]
backends = ["127.0.0.1/32"]
plugin_time = "20ms"
plugin_cpu = "100%"
"#;
    let p = start(
        &b,
        limits,
        &[
            ("lane-a", tenant("a.test", &[("/", b.url())], spin)),
            ("lane-b", tenant("b.test", &[("/", b.url())], spin)),
        ],
    )
    .await;
    let web = p.addr("web");
    let on_lane = |t: &str| {
        metric(
            &p,
            "wasmgate_tenant_plugin_throttled_total",
            &[&format!("tenant=\"{t}\""), "what=\"background\""],
        )
    };
    let charged = || {
        metric(
            &p,
            "wasmgate_tenant_plugin_cpu_seconds_total",
            &["tenant=\"lane-a\""],
        )
    };
    // Warm both tenants' instances (a first call in a debug build can run for a while), then let
    // any heaviness that made expire.
    for _ in 0..3 {
        assert_eq!(get(web, "a.test", "/a").await.status, 200);
        assert_eq!(get(web, "b.test", "/b").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (base_a, base_b) = (on_lane("lane-a"), on_lane("lane-b"));
    // Cheap calls make no one heavy.
    assert_eq!(get(web, "a.test", "/a").await.status, 200);
    assert_eq!(on_lane("lane-a"), base_a, "a cheap call went to the lane");
    // A spins once on a worker: from now on it is heavy.
    assert_eq!(get(web, "a.test", "/spin").await.status, 500);
    assert_eq!(on_lane("lane-a"), base_a);
    let before = charged();
    assert_eq!(get(web, "a.test", "/spin").await.status, 500);
    assert_eq!(
        on_lane("lane-a"),
        base_a + 1.0,
        "A's second spin ran off the lane"
    );
    let ran = charged() - before;
    assert!(
        (0.019..0.5).contains(&ran),
        "a call on the lane ran {ran}s of CPU before its 20 ms limit stopped it"
    );
    // The lane's threads exist, and the one that ran A's call is at the kernel's lowest priority
    // (its idle workers and its blocking threads, where hashes run, are not).
    let lane_policies: Vec<u64> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            comm.starts_with("wasmgate-lane").then(|| {
                let stat = std::fs::read_to_string(t.join("stat")).unwrap();
                // Field 41, `policy`, counted after the `(comm)` field 2.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
            })
        })
        .collect();
    assert!(!lane_policies.is_empty(), "no lane threads");
    assert!(
        lane_policies.contains(&(libc::SCHED_IDLE as u64)),
        "lane thread policies {lane_policies:?}"
    );
    // A heavy tenant's cheap calls go to the lane too, and are answered; B's never do.
    assert_eq!(get(web, "a.test", "/a").await.status, 200);
    assert_eq!(on_lane("lane-a"), base_a + 2.0);
    for _ in 0..20 {
        assert_eq!(get(web, "b.test", "/b").await.status, 200);
    }
    assert_eq!(on_lane("lane-b"), base_b, "B was sent to the lane");
    // Quiet for a second: A is back on the workers.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(web, "a.test", "/a").await.status, 200);
    assert_eq!(
        on_lane("lane-a"),
        base_a + 2.0,
        "A stayed heavy after a quiet second"
    );
}

/// The refusal lines of a tenant's error, without the last one saying what became of the tenant
/// ("(its previous version keeps serving)").
fn refusals(err: &str) -> usize {
    err.lines().filter(|l| !l.starts_with('(')).count()
}
