//! One reading of a path: with `/admin` guarded by a plugin and `/` open, no spelling that a lenient
//! backend (IIS, Express, Spring, Tomcat) reads as `/admin` reaches the open route's backend — over
//! HTTP/1.1 (raw bytes, exactly as written) and HTTP/2 (TLS, ALPN). Paths that are different but stay
//! on their route pass; `/ops` is redirected to a route written `/ops/`; a `case_insensitive` route
//! takes the paths that only differ from it in case.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use wasmgate_tests::backend::Backend;
use wasmgate_tests::certs::TestCa;
use wasmgate_tests::client::{read, tls_config, tls_connect};
use wasmgate_tests::proxy::Proxy;
use wasmgate_tests::wire::{exchange, Wait};

/// The backends, one per route; `/admin`'s must never see a request (its plugin refuses them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Public,
    Api,
    Ops,
    Docs,
}

#[derive(Clone, Copy, Debug)]
enum Want {
    /// 400 from the proxy; no backend sees it.
    Refused,
    /// 401 from the `/admin` route's plugin; no backend sees it.
    Guarded,
    /// 301 with this Location; no backend sees it.
    Redirect(&'static str),
    /// 200 from this backend, which saw this request target.
    Served(Which, &'static str),
}

use Want::*;
use Which::*;

const CASES: &[(&str, Want)] = &[
    // Case, as IIS and case-insensitive routers read it.
    ("/ADMIN", Refused),
    ("/ADMIN/x", Refused),
    ("/Admin/x", Refused),
    ("/aDmIn/users", Refused),
    ("/%41dmin/x", Refused),
    ("/%41DMIN/x", Refused),
    ("/%61DMIN/x", Refused),
    ("/API/x", Refused),
    // Trailing dots and whitespace, raw or encoded, as Windows and Spring's trimTokens read it.
    ("/admin./x", Refused),
    ("/admin../x", Refused),
    ("/admin.", Refused),
    ("/admin%2e/x", Refused),
    ("/admin%2E/x", Refused),
    ("/admin%2e%2e/x", Refused),
    ("/admin%20/x", Refused),
    ("/admin%20", Refused),
    ("/admin%09/x", Refused),
    ("/admin.%20/x", Refused),
    ("/admin%20./x", Refused),
    ("/%20admin/x", Refused),
    ("/%09admin", Refused),
    ("/x/..%20/admin", Refused),
    ("/x/%2e%2e%20/admin", Refused),
    // NTFS streams, as IIS reads them.
    ("/admin::$DATA/x", Refused),
    ("/ADMIN::$INDEX_ALLOCATION/x", Refused),
    ("/admin%3A%3A%24DATA/x", Refused),
    ("/files/a:b", Served(Public, "/files/a:b")),
    // Separators and parameters.
    ("/admin%2Fx", Refused),
    ("/admin%5Cx", Refused),
    ("/x%5C..%5Cadmin", Refused),
    ("/admin;x/y", Refused),
    ("/admin\\x", Refused),
    ("/x\\..\\admin", Refused),
    ("/ADMIN\\x", Refused),
    ("/files/a\\b", Served(Public, "/files/a%5Cb")),
    // Encodings that decoders disagree on.
    ("/%C0%AE%C0%AE/admin", Refused),
    ("/x/%C0%AE%C0%AE/admin", Refused),
    ("/x/%E0%80%AE%E0%80%AE/admin", Refused),
    ("/%C0%AFadmin", Refused),
    ("/%u0061dmin/x", Refused),
    ("/%FF/x", Refused),
    ("/%ED%A0%80", Refused),
    // A missing trailing slash, and the lenient spellings of it.
    ("/ops", Redirect("/ops/")),
    ("/ops?a=1&b=%2F", Redirect("/ops/?a=1&b=%2F")),
    ("/OPS", Refused),
    ("/Ops/x", Refused),
    ("/ops.", Refused),
    ("/ops%20", Refused),
    // Case-insensitive matching is what `case_insensitive` asks for; trimming still is not.
    ("/docs/a", Served(Docs, "/docs/a")),
    ("/DOCS/a", Served(Docs, "/docs/a")),
    ("/Docs", Served(Docs, "/docs")),
    ("/%64ocs/A", Served(Docs, "/docs/A")),
    ("/docs./a", Refused),
    ("/DOCS%20/a", Refused),
    // The guarded route itself, by its own and by normalised spellings.
    ("/admin", Guarded),
    ("/admin/x", Guarded),
    ("/x/../admin/x", Guarded),
    ("/x/%2e%2e/admin", Guarded),
    ("/%61dmin", Guarded),
    // Different paths that stay on their route pass as they are.
    ("/", Served(Public, "/")),
    ("/files/a.b", Served(Public, "/files/a.b")),
    ("/files/report.", Served(Public, "/files/report.")),
    ("/administrator", Served(Public, "/administrator")),
    ("/public/ADMIN", Served(Public, "/public/ADMIN")),
    ("/files/a%2Fb", Served(Public, "/files/a%2Fb")),
    ("/files/a%20b", Served(Public, "/files/a%20b")),
    ("/files/a;v=1", Served(Public, "/files/a;v=1")),
    ("/caf%C3%A9", Served(Public, "/caf%C3%A9")),
    ("/api/Projects", Served(Api, "/api/Projects")),
    (
        "/api/projects/group%2Fname",
        Served(Api, "/api/projects/group%2Fname"),
    ),
    ("/ops/", Served(Ops, "/ops/")),
    ("/ops/x", Served(Ops, "/ops/x")),
];

struct Setup {
    ca: TestCa,
    public: Backend,
    api: Backend,
    admin: Backend,
    ops: Backend,
    docs: Backend,
    proxy: Proxy,
}

impl Setup {
    fn backend(&self, w: Which) -> &Backend {
        match w {
            Public => &self.public,
            Api => &self.api,
            Ops => &self.ops,
            Docs => &self.docs,
        }
    }

    fn counts(&self) -> [usize; 5] {
        [
            self.public.count(),
            self.api.count(),
            self.ops.count(),
            self.docs.count(),
            self.admin.count(),
        ]
    }
}

async fn setup() -> Setup {
    let ca = TestCa::new("paths CA");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(&["app.test"])
        .write(&dir.path().join("certs"), "app");
    let deny = std::fs::read(wasmgate_tests::fixture("deny")).unwrap();
    wasmgate_tests::proxy::write(dir.path(), "plugins/deny.wasm", &deny);
    let (public, api, admin, ops, docs) = (
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    );
    let config = format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[site]]
name = "app"
listeners = ["web", "tls"]
hosts = ["app.test"]
tls = {{ cert = "certs/app.crt", key = "certs/app.key" }}

[[site.route]]
path = "/"
backend = "{public}/"

[[site.route]]
path = "/api"
backend = "{api}/api"

[[site.route]]
path = "/admin"
backend = "{admin}/admin"

[[site.route.plugin]]
wasm = "plugins/deny.wasm"

[[site.route]]
path = "/ops/"
backend = "{ops}/ops/"

[[site.route]]
path = "/docs"
backend = "{docs}/docs"
case_insensitive = true
"#,
        public = public.url(),
        api = api.url(),
        admin = admin.url(),
        ops = ops.url(),
        docs = docs.url(),
    );
    let proxy = Proxy::start_in(dir, &config).await;
    Setup {
        ca,
        public,
        api,
        admin,
        ops,
        docs,
        proxy,
    }
}

/// What one case got: status, Location.
struct Got {
    status: u16,
    location: Option<String>,
}

/// Check one answer against the table, and which backends saw what.
fn judge(
    s: &Setup,
    proto: &str,
    path: &str,
    want: Want,
    got: &Got,
    before: [usize; 5],
) -> Option<String> {
    let after = s.counts();
    let grown: Vec<usize> = (0..5).filter(|&i| after[i] != before[i]).collect();
    let fail = |why: String| Some(format!("{proto} {path}: {why}"));
    let none_saw = || {
        if grown.is_empty() {
            None
        } else {
            fail(format!("a backend saw it (counts {before:?} -> {after:?})"))
        }
    };
    match want {
        Refused if got.status == 400 => none_saw(),
        Guarded if got.status == 401 => none_saw(),
        Redirect(to) if got.status == 301 => match got.location.as_deref() {
            Some(l) if l == to => none_saw(),
            other => fail(format!("Location {other:?}, want {to:?}")),
        },
        Served(which, uri) if got.status == 200 => {
            let index = [Public, Api, Ops, Docs]
                .iter()
                .position(|w| *w == which)
                .unwrap();
            if grown != [index] {
                return fail(format!(
                    "want only {which:?} to see it (counts {before:?} -> {after:?})"
                ));
            }
            let seen = s.backend(which).last().uri;
            (seen != uri).then(|| format!("{proto} {path}: {which:?} saw `{seen}`, want `{uri}`"))
        }
        _ => fail(format!("status {}, want {want:?}", got.status)),
    }
}

const QUICK: Wait = Wait {
    first: Duration::from_secs(3),
    more: Duration::from_millis(1),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_guarded_path_reaches_the_open_route_over_h1_and_h2() {
    let (_guard, logs) = wasmgate_tests::capture_logs();
    let s = setup().await;
    let mut failures = Vec::new();

    // HTTP/1.1: the request line exactly as the table writes it.
    let web = s.proxy.addr("web");
    for &(path, want) in CASES {
        let before = s.counts();
        let ex = exchange(
            web,
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            QUICK,
        )
        .await;
        let Some(r) = ex.responses.first() else {
            failures.push(format!("h1 {path}: no response"));
            continue;
        };
        let got = Got {
            status: r.status,
            location: r.header("location").map(str::to_string),
        };
        failures.extend(judge(&s, "h1", path, want, &got, before));
    }

    // HTTP/2 over TLS: every case on one connection, as a browser would send them.
    let tls = tls_connect(
        s.proxy.addr("tls"),
        "app.test",
        tls_config(s.ca.roots(), &[b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for &(path, want) in CASES {
        let before = s.counts();
        let req = http::Request::get(format!("https://app.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap_or_else(|e| panic!("{path} is not a URI for the h2 client: {e}"));
        let r = read(sender.send_request(req).await.expect("h2 request")).await;
        let got = Got {
            status: r.status.as_u16(),
            location: r.header("location").map(str::to_string),
        };
        failures.extend(judge(&s, "h2", path, want, &got, before));
    }

    assert_eq!(
        s.admin.count(),
        0,
        "the /admin backend is only reachable through its plugin"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The operator can see why: which route the path was for, and how it reads.
    let text = logs.text();
    assert!(
        text.contains(
            "path `/ADMIN/x` is routed to `/`, but lenient backends read it as `/admin/x`"
        ),
        "no reason in the log:\n{text}"
    );
}

/// With a route written `/ops` next to `/ops/`, `/ops` is that route's (nginx's exact-match rule), and a
/// redirect never carries a client's header into the answer.
#[tokio::test]
async fn an_exact_route_wins_over_the_slash_redirect() {
    let exact = Backend::start().await;
    let slash = Backend::start().await;
    let cfg = wasmgate_tests::proxy::app_config(
        "",
        &format!(
            r#"
[[site.route]]
path = "/ops/"
backend = "{}/"

[[site.route]]
path = "/ops"
backend = "{}/exact"
"#,
            slash.url(),
            exact.url()
        ),
    );
    let p = Proxy::start(&cfg, &[]).await;
    let r = wasmgate_tests::client::get(p.addr("web"), "app.test", "/ops").await;
    assert_eq!(r.status, 200);
    assert_eq!(exact.last().uri, "/exact");
    let r = wasmgate_tests::client::get(p.addr("web"), "app.test", "/ops/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(slash.last().uri, "/x");
    assert_eq!(exact.count(), 1);
}

/// `case_insensitive` on two routes that differ only in case is refused: no path could choose.
#[test]
fn case_insensitive_twins_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(
        &path,
        wasmgate_tests::proxy::app_config(
            "",
            r#"
[[site.route]]
path = "/api"
backend = "http://127.0.0.1:9/"

[[site.route]]
path = "/API"
backend = "http://127.0.0.1:9/"
case_insensitive = true
"#,
        ),
    )
    .unwrap();
    let err = wasmgate_config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("differ only in case"), "{err}");
    assert!(err.contains("wasmgate.toml:"), "{err}");
}
