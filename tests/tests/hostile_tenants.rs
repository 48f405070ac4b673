//! Hostile tenants (issue 14, items 1, 4, 5, 6): in every test tenant `A` (the attacker) edits only its
//! own directory while tenant `B` (the victim) and the operator serve real traffic; `A` is refused or
//! contained with a clear reason, and `B` and the operator keep serving and can still reload. Where
//! directory order could matter, the attacker is tried both sorting before (`aaa`) and after (`zzz`)
//! the victim (`mmm`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::{get, send};
use wasmgate_tests::proxy::{write, Proxy};
use wasmgate_tests::{capture_logs, fixture};

const VICTIM: &str = "mmm";
const ATTACKERS: [&str; 2] = ["aaa", "zzz"];

/// The operator's file: two listeners, its own exact host, a platform wildcard and the default site.
fn operator(b: &Backend, top: &str) -> String {
    // The backends are on loopback, which tenant egress refuses unless the operator allows it.
    let allow = "backends = [\"127.0.0.0/8\"]";
    let top = if top.contains("[tenant_limits.default]") {
        top.replace(
            "[tenant_limits.default]",
            &format!("[tenant_limits.default]\n{allow}"),
        )
    } else {
        format!("{top}\n[tenant_limits.default]\n{allow}\n")
    };
    format!(
        r#"
tenants_dir = "tenants"
state_dir = "state"
{top}

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[listener]]
name = "alt"
bind = "127.0.0.1:0"

[[site]]
name = "platform"
listeners = ["web", "alt"]
hosts = ["ops.test", "*.platform.test"]
default = true

[[site.route]]
path = "/"
backend = "{b}/operator"
"#,
        b = b.url()
    )
}

/// A tenant file: one site `shop` on `listeners` for `hosts` (written as given), `extra` in the site.
fn tenant_on(listeners: &str, hosts: &str, b: &Backend, extra: &str) -> String {
    format!(
        r#"[[site]]
name = "shop"
listeners = [{listeners}]
hosts = [{hosts}]
{extra}

[[site.route]]
path = "/"
backend = "{b}/"
"#,
        b = b.url()
    )
}

fn tenant(hosts: &str, b: &Backend) -> String {
    tenant_on("\"web\"", hosts, b, "")
}

async fn start_in(dir: tempfile::TempDir, b: &Backend, top: &str) -> Proxy {
    Proxy::start_in(dir, &operator(b, top)).await
}

fn prepare(tenants: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tenants")).unwrap();
    for (name, text) in tenants {
        write(
            dir.path(),
            &format!("tenants/{name}/tenant.toml"),
            text.as_bytes(),
        );
    }
    dir
}

/// The victim, the attacker (on its own host) and the operator, serving.
async fn platform(b: &Backend, attacker: &str, top: &str) -> Proxy {
    let dir = prepare(&[
        (VICTIM, tenant("\"victim.test\", \"bücher.test\"", b)),
        (attacker, tenant("\"own.test\"", b)),
    ]);
    let p = start_in(dir, b, top).await;
    assert_everyone_serves(&p).await;
    p
}

/// The victim on both of its hosts (one IDN), the attacker's previous version, the operator's exact
/// host, wildcard and default site.
async fn assert_everyone_serves(p: &Proxy) {
    let web = p.addr("web");
    for (host, operator) in [
        ("victim.test", false),
        ("xn--bcher-kva.test", false),
        ("own.test", false),
        ("ops.test", true),
        ("other.platform.test", true),
        ("nobody.test", true),
    ] {
        assert_eq!(by_operator(web, host).await, operator, "{host}");
    }
}

/// Whether `host` is answered (200) by the operator's site rather than a tenant's.
async fn by_operator(addr: std::net::SocketAddr, host: &str) -> bool {
    let r = get(addr, host, "/").await;
    assert_eq!(r.status, 200, "{host}");
    r.json()["uri"].as_str().unwrap().starts_with("/operator")
}

fn reload(p: &Proxy, b: &Backend, top: &str) {
    p.reload(&operator(b, top))
        .unwrap_or_else(|e| panic!("the operator's config was refused:\n{e}"));
}

fn error_of(p: &Proxy, tenant: &str) -> String {
    p.server()
        .runtime()
        .tenant_errors
        .get(tenant)
        .cloned()
        .unwrap_or_else(|| panic!("tenant {tenant} was not refused"))
}

/// The victim can still change its own files: a reload after the attack takes its new host.
async fn victim_can_still_reload(p: &Proxy, b: &Backend, top: &str) {
    write(
        p.dir.path(),
        &format!("tenants/{VICTIM}/tenant.toml"),
        tenant("\"victim.test\", \"bücher.test\", \"new.victim.test\"", b).as_bytes(),
    );
    reload(p, b, top);
    assert_eq!(get(p.addr("web"), "new.victim.test", "/").await.status, 200);
    assert!(!p.server().runtime().tenant_errors.contains_key(VICTIM));
}

async fn status(p: &Proxy) -> serde_json::Value {
    get(p.addr("admin"), "localhost", "/status").await.json()
}

#[tokio::test]
async fn a_served_host_stays_its_owners_whichever_name_sorts_first() {
    let b = Backend::start().await;
    for attacker in ATTACKERS {
        let (_guard, logs) = capture_logs();
        let p = platform(&b, attacker, "").await;
        let digest = p
            .server()
            .runtime()
            .tenant(attacker)
            .unwrap()
            .fingerprint
            .clone();
        // The same host written five ways, and on the other listener.
        for (listeners, claim, owner) in [
            ("\"web\"", "\"victim.test\"", "tenant `mmm`"),
            ("\"web\"", "\"VICTIM.Test.\"", "tenant `mmm`"),
            ("\"web\"", "\"xn--bcher-kva.test\"", "tenant `mmm`"),
            ("\"web\"", "\"BÜCHER.test\"", "tenant `mmm`"),
            ("\"web\"", "\"*.test\"", "the operator (`ops.test`)"),
            ("\"alt\"", "\"victim.test\"", "tenant `mmm`"),
            ("\"web\"", "\"ops.test\"", "the operator"),
            (
                "\"alt\"",
                "\"login.platform.test\"",
                "the operator (`*.platform.test`)",
            ),
        ] {
            write(
                p.dir.path(),
                &format!("tenants/{attacker}/tenant.toml"),
                tenant_on(listeners, &format!("\"own.test\", {claim}"), &b, "").as_bytes(),
            );
            reload(&p, &b, "");
            let err = error_of(&p, attacker);
            assert!(
                err.contains(&format!(
                    "tenants/{attacker}/tenant.toml:4:22: its new version: host `"
                )) && err.contains(&format!("belongs to {owner}"))
                    && err.ends_with("(its previous version keeps serving)"),
                "{claim} on {listeners}: {err}"
            );
            let rt = p.server().runtime();
            assert_eq!(
                rt.tenant(attacker).unwrap().fingerprint,
                digest,
                "the previous version serves"
            );
            assert!(!rt.tenant_errors.contains_key(VICTIM));
            assert_everyone_serves(&p).await;
        }
        // The log says what happened, and it is true: the attacker's old version is what serves.
        let text = logs.text();
        assert!(
            text.lines().any(
                |l| l.contains("tenant refused; its previous version keeps serving")
                    && l.contains(&format!("tenant={attacker}"))
            ),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.contains("belongs to tenant `mmm`")
                && l.contains(&format!("tenant={attacker}"))),
            "{text}"
        );
        // So does /status.
        let st = status(&p).await;
        let t = st["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == attacker)
            .unwrap()
            .clone();
        assert_eq!(t["digest"], digest.as_str());
        assert!(
            t["error"]
                .as_str()
                .unwrap()
                .contains("belongs to the operator"),
            "{t}"
        );
        victim_can_still_reload(&p, &b, "").await;
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_grant_hands_one_host_of_the_operators_wildcard_to_a_tenant_and_nothing_else() {
    let b = Backend::start().await;
    for attacker in ATTACKERS {
        let grant = format!(
            "[tenant_limits.{attacker}]\nhosts = [\"own.test\", \"shop.platform.test\", \"ops.test\", \"*.{attacker}.test\"]"
        );
        let p = platform(&b, attacker, &grant).await;
        write(
            p.dir.path(),
            &format!("tenants/{attacker}/tenant.toml"),
            tenant(
                &format!("\"own.test\", \"shop.platform.test\", \"www.{attacker}.test\""),
                &b,
            )
            .as_bytes(),
        );
        reload(&p, &b, &grant);
        assert!(!p.server().runtime().tenant_errors.contains_key(attacker));
        let web = p.addr("web");
        assert!(!by_operator(web, "shop.platform.test").await);
        assert_eq!(
            get(web, &format!("www.{attacker}.test"), "/").await.status,
            200
        );
        assert!(by_operator(web, "else.platform.test").await);

        // Outside the grant: refused where it is written, with the grant in the message.
        write(
            p.dir.path(),
            &format!("tenants/{attacker}/tenant.toml"),
            tenant("\"own.test\", \"login.platform.test\"", &b).as_bytes(),
        );
        reload(&p, &b, &grant);
        let err = error_of(&p, attacker);
        assert!(
            err.contains(&format!("tenants/{attacker}/tenant.toml:4:22: site[0].hosts[1]: `login.platform.test` is outside the hosts the operator granted this tenant (own.test, shop.platform.test, ops.test, *.{attacker}.test)")),
            "{err}"
        );
        // A grant overrides the operator's wildcard, never its exact host.
        write(
            p.dir.path(),
            &format!("tenants/{attacker}/tenant.toml"),
            tenant("\"own.test\", \"ops.test\"", &b).as_bytes(),
        );
        reload(&p, &b, &grant);
        assert!(error_of(&p, attacker).contains("host `ops.test` belongs to the operator"));
        assert!(by_operator(web, "ops.test").await);
        assert!(
            !by_operator(web, "shop.platform.test").await,
            "the previous version serves"
        );
        victim_can_still_reload(&p, &b, &grant).await;
        p.shutdown().await;
    }
}

#[tokio::test]
async fn tenants_may_not_claim_addresses_localhost_or_the_default_site() {
    let b = Backend::start().await;
    let p = platform(&b, "aaa", "").await;
    for (extra, claim, expected) in [
        (
            "",
            "\"127.0.0.1\"",
            "site[0].hosts[1]: a tenant may not claim an IP address",
        ),
        (
            "",
            "\"::1\"",
            "site[0].hosts[1]: a tenant may not claim an IP address",
        ),
        (
            "",
            "\"LocalHost.\"",
            "site[0].hosts[1]: a tenant may not claim localhost",
        ),
        (
            "",
            "\"api.localhost\"",
            "site[0].hosts[1]: a tenant may not claim localhost",
        ),
        (
            "default = true",
            "\"x.test\"",
            "site[0].default: only the operator's config may set default = true",
        ),
    ] {
        write(
            p.dir.path(),
            "tenants/aaa/tenant.toml",
            tenant_on("\"web\"", &format!("\"own.test\", {claim}"), &b, extra).as_bytes(),
        );
        reload(&p, &b, "");
        let err = error_of(&p, "aaa");
        assert!(
            err.contains("tenants/aaa/tenant.toml:") && err.contains(expected),
            "{claim}: {err}"
        );
        assert_everyone_serves(&p).await;
    }
    victim_can_still_reload(&p, &b, "").await;
}

/// Restarts (and SIGUSR2 handovers, which start a new process the same way) remember nothing but the
/// state directory: the recorded owner keeps a contested host; with no record, no one gets it; an
/// operator's grant decides over both.
#[tokio::test]
async fn ownership_survives_a_restart_and_a_contest_nobody_owns_goes_to_no_one() {
    let b = Backend::start().await;
    for attacker in ATTACKERS {
        let dir = prepare(&[(VICTIM, tenant("\"shared.test\"", &b))]);
        let mut p = start_in(dir, &b, "").await;
        assert_eq!(get(p.addr("web"), "shared.test", "/").await.status, 200);
        p.server.take().unwrap().shutdown().await;
        let dir = p.dir;
        assert!(std::fs::read_dir(dir.path().join("state")).unwrap().count() == 1);

        // While it was down, the attacker appeared claiming the host.
        write(
            dir.path(),
            &format!("tenants/{attacker}/tenant.toml"),
            tenant("\"own.test\", \"shared.test\"", &b).as_bytes(),
        );
        let p = start_in(dir, &b, "").await;
        let rt = p.server().runtime();
        assert!(rt.tenant(VICTIM).is_some() && rt.tenant(attacker).is_none());
        let err = error_of(&p, attacker);
        assert!(
            err.contains("host `shared.test` belongs to tenant `mmm` (it already owns it")
                && err.ends_with("(it is not served)"),
            "{err}"
        );
        assert_eq!(get(p.addr("web"), "shared.test", "/").await.status, 200);
        assert!(by_operator(p.addr("web"), "own.test").await);

        // No record (a new state directory): the host goes to no one, the operator serves on.
        let top = "state_dir = \"state2\"";
        let mut p = p;
        p.server.take().unwrap().shutdown().await;
        let text = operator(&b, "").replace("state_dir = \"state\"", top);
        let p = Proxy::start_in(p.dir, &text).await;
        let rt = p.server().runtime();
        assert!(rt.tenant(VICTIM).is_none() && rt.tenant(attacker).is_none());
        for t in [VICTIM, attacker] {
            assert!(
                error_of(&p, t).contains("neither has a grant nor owns it, so it goes to neither"),
                "{}",
                error_of(&p, t)
            );
        }
        assert!(by_operator(p.addr("web"), "shared.test").await);
        assert_eq!(get(p.addr("web"), "ops.test", "/").await.status, 200);

        // The operator decides: a grant gives the host to the attacker, and the victim is refused.
        let granted = format!(
            "{text}\n[tenant_limits.{attacker}]\nhosts = [\"own.test\", \"shared.test\"]\n"
        );
        p.reload(&granted).unwrap();
        let rt = p.server().runtime();
        assert!(rt.tenant(attacker).is_some() && rt.tenant(VICTIM).is_none());
        assert!(error_of(&p, VICTIM).contains(&format!(
            "belongs to tenant `{attacker}` (the operator granted it"
        )));
        p.shutdown().await;
    }
}

/// Counts inotify watches of this process (`/proc/self/fdinfo` of every inotify fd).
fn inotify_watches() -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_inotify =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("inotify"));
        if is_inotify {
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            n += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

#[tokio::test]
async fn hostile_files_are_refused_unread_and_the_rest_serves() {
    let b = Backend::start().await;
    for attacker in ATTACKERS {
        let p = platform(&b, attacker, "").await;
        let root = p.path(&format!("tenants/{attacker}"));
        let secret = p.path("operator-secret.txt");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let fifo = root.join("fifo.pem");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/proc/self/pagemap", root.join("pagemap.wasm")).unwrap();
        std::os::unix::fs::symlink(&secret, root.join("tokens.txt")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(p.dir.path(), root.join("sub/up")).unwrap();
        let own = |extra: &str| tenant_on("\"web\"", "\"own.test\"", &b, extra);
        for (extra, expected) in [
            (
                "[[site.plugin]]\nwasm = \"pagemap.wasm\"",
                "`pagemap.wasm` is or passes through a symbolic link",
            ),
            (
                "[[site.plugin]]\nwasm = \"sub/up/operator-secret.txt\"",
                "`sub/up/operator-secret.txt` is or passes through a symbolic link",
            ),
            (
                "[[site.plugin]]\nbuiltin = \"token-auth\"\nconfig = { tokens_file = \"tokens.txt\" }",
                "symbolic link",
            ),
            (
                "[[site.plugin]]\nwasm = \"../../operator-secret.txt\"",
                "is outside the tenant's directory",
            ),
            (
                "[[site.plugin]]\nwasm = \"fifo.pem\"",
                "`fifo.pem` is not a regular file",
            ),
            // A backend's CA bundle is one of its files too.
            (
                "[[site.route]]\npath = \"/tls\"\nbackend = \"https://localhost:1/\"\nca = \"tokens.txt\"",
                "symbolic link",
            ),
            (
                "[[site.route]]\npath = \"/tls\"\nbackend = \"https://localhost:1/\"\nca = \"fifo.pem\"",
                "`fifo.pem` is not a regular file",
            ),
        ] {
            let started = Instant::now();
            write(p.dir.path(), &format!("tenants/{attacker}/tenant.toml"), own(extra).as_bytes());
            reload(&p, &b, "");
            assert!(started.elapsed() < Duration::from_secs(10), "{extra}");
            let err = error_of(&p, attacker);
            assert!(err.contains(expected) && err.contains("previous version keeps serving"), "{extra}: {err}");
            assert_everyone_serves(&p).await;
        }
        std::fs::remove_file(&fifo).unwrap();

        // A 10 GiB sparse file anywhere in the directory: refused by its size, never read.
        write(
            p.dir.path(),
            &format!("tenants/{attacker}/tenant.toml"),
            own("").as_bytes(),
        );
        let huge = std::fs::File::create(root.join("huge.bin")).unwrap();
        huge.set_len(10 << 30).unwrap();
        let started = Instant::now();
        reload(&p, &b, "");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = error_of(&p, attacker);
        assert!(
            err.contains("`huge.bin` is 10.0 GiB; a tenant's file may be at most 32.0 MiB"),
            "{err}"
        );
        assert_everyone_serves(&p).await;
        std::fs::remove_file(root.join("huge.bin")).unwrap();
        reload(&p, &b, "");
        assert!(!p.server().runtime().tenant_errors.contains_key(attacker));
        victim_can_still_reload(&p, &b, "").await;
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_tenant_cannot_spend_everyones_inotify_watches() {
    let b = Backend::start().await;
    let p = platform(&b, "aaa", "").await;
    p.server()
        .reloader(&p.path("wasmgate.toml"))
        .watch()
        .await
        .unwrap();
    let before = inotify_watches();
    // 300 directories (the cap is 64), each one a watch for a naive recursive watcher.
    let root = p.path("tenants/aaa");
    for i in 0..300 {
        std::fs::create_dir_all(root.join(format!("d{}/e", i))).unwrap();
    }
    let deadline = Instant::now() + wasmgate_tests::STATE_CHANGE;
    while !p.server().runtime().tenant_errors.contains_key("aaa") {
        assert!(Instant::now() < deadline, "the directories were never seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        error_of(&p, "aaa").contains("more than 64 directories"),
        "{}",
        error_of(&p, "aaa")
    );
    let added = inotify_watches().saturating_sub(before);
    assert!(
        added <= 2,
        "{added} watches added for one tenant over its caps"
    );
    assert_everyone_serves(&p).await;
    // The victim's change is still seen by the watcher.
    write(
        p.dir.path(),
        &format!("tenants/{VICTIM}/tenant.toml"),
        tenant("\"victim.test\", \"bücher.test\", \"late.victim.test\"", &b).as_bytes(),
    );
    let deadline = Instant::now() + wasmgate_tests::STATE_CHANGE;
    while get(p.addr("web"), "late.victim.test", "/").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the victim's change was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tenants_text_cannot_forge_a_log_line() {
    let b = Backend::start().await;
    let p = platform(&b, "aaa", "").await;
    std::fs::copy(fixture("chatty"), p.path("tenants/aaa/chatty.wasm")).unwrap();
    let forged = "2026-01-01T00:00:00.000000Z  INFO wasmgate::access: GET /forged 200 tenant=mmm";
    let message = format!("hello\\n{forged}\\r\\u001b[2K");
    write(
        p.dir.path(),
        "tenants/aaa/tenant.toml",
        tenant_on(
            "\"web\"",
            "\"own.test\"",
            &b,
            &format!(
                "[[site.plugin]]\nwasm = \"chatty.wasm\"\nconfig = {{ message = \"{message}\" }}"
            ),
        )
        .as_bytes(),
    );
    reload(&p, &b, "");
    assert!(!p.server().runtime().tenant_errors.contains_key("aaa"));
    let (_guard, logs) = capture_logs();
    assert_eq!(get(p.addr("web"), "own.test", "/x").await.status, 200);
    assert_eq!(get(p.addr("web"), "own.test", "/panic").await.status, 500);
    let text = logs.text();
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line:\n{text}"
    );
    // log() arrives whole and escaped; stdout line by line, each line escaped; the trap too; all
    // tagged with the tenant that wrote them.
    let whole = format!("hello\\n{forged}\\r\\u{{1b}}[2K");
    let tail = format!("{forged}\\r\\u{{1b}}[2K");
    for (needle, what) in [
        (whole.as_str(), "WARN wasmgate::plugin"),
        (tail.as_str(), "stream=stdout"),
        ("plugin failed", "detail="),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(needle) && l.contains(what) && l.contains("tenant=aaa")),
            "{what}:\n{text}"
        );
    }

    // Names that go into log lines and metric labels are names.
    for (bad, expected) in [
        (
            tenant("\"own.test\"", &b).replace("name = \"shop\"", "name = \"shop\\nINFO x\""),
            "site[0].name: `shop\\nINFO x` is not a name",
        ),
        (
            tenant_on("\"web\"", "\"own.test\"", &b, "[[site.plugin]]\nwasm = \"chatty.wasm\"\nname = \"a b\"\nconfig = { message = \"x\" }"),
            "site[0].plugin[0].name: `a b` is not a name",
        ),
        (
            tenant("\"own.test\"", &b).replace("path = \"/\"", "path = \"/a\\r\\nb\""),
            "a route path starts with `/` and has no query, spaces or control characters",
        ),
    ] {
        write(p.dir.path(), "tenants/aaa/tenant.toml", bad.as_bytes());
        reload(&p, &b, "");
        let err = error_of(&p, "aaa");
        assert!(err.contains(expected), "{err}");
        assert!(!err.lines().any(|l| l.starts_with("INFO") || l == "b\""), "{err}");
    }
    // A directory whose name is not a name is not a tenant.
    write(
        p.dir.path(),
        "tenants/evil\nname/tenant.toml",
        tenant("\"evil.test\"", &b).as_bytes(),
    );
    reload(&p, &b, "");
    let rt = p.server().runtime();
    assert!(
        rt.tenant_errors.contains_key("evil\\nname"),
        "{:?}",
        rt.tenant_errors
    );
    assert!(by_operator(p.addr("web"), "evil.test").await);
    assert_everyone_serves(&p).await;
}

#[tokio::test]
async fn operator_changes_reach_unchanged_tenants() {
    let b = Backend::start().await;
    let p = platform(&b, "aaa", "").await;
    let web = p.addr("web");
    let post = |n: usize| {
        Request::post("/upload")
            .header("host", "victim.test")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    assert_eq!(send(web, post(4096)).await.status, 200);
    assert_eq!(get(web, "victim.test", "/slow?ms=400").await.status, 200);
    let before = p.server().runtime().tenant(VICTIM).unwrap().clone();

    // An operator change that does not touch tenants reuses them as they are.
    reload(&p, &b, "[limits]\nmax_connections = 5000");
    assert!(std::sync::Arc::ptr_eq(
        &before,
        p.server().runtime().tenant(VICTIM).unwrap()
    ));

    // Limits and default timeouts do reach the unchanged tenant.
    let top = "timeout = \"150ms\"\n[tenant_limits.default]\nmax_body_bytes = \"1KiB\"";
    reload(&p, &b, top);
    let after = p.server().runtime().tenant(VICTIM).unwrap().clone();
    assert_eq!(
        after.fingerprint, before.fingerprint,
        "its files did not change"
    );
    assert!(!std::sync::Arc::ptr_eq(&before, &after));
    assert_eq!(send(web, post(4096)).await.status, 413);
    assert_eq!(get(web, "victim.test", "/slow?ms=400").await.status, 504);
    assert_eq!(send(web, post(512)).await.status, 200);
    // And back.
    reload(&p, &b, "");
    assert_eq!(send(web, post(4096)).await.status, 200);
    assert_everyone_serves(&p).await;
}
