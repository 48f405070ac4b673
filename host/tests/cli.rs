//! The `wasmgate` binary end to end: `check` on good and broken configs, `run` with port 0, the
//! access log, hot reload on file change and SIGHUP, and draining on SIGTERM.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::certs::TestCa;
use wasmgate_tests::client::{get, ws_connect};

mod support;

use support::{Running, BIN};

fn seed_config(backend: &str) -> String {
    format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[site]]
name = "chat"
listeners = ["tls"]
hosts = ["chat.example.org"]
tls = {{ cert = "certs/chat.crt", key = "certs/chat.key" }}
preserve_host = true
timeout = "3600s"

[[site.route]]
path = "/"
backend = "{backend}/"
reverse = true

[[site.route]]
path = "/socket"
backend = "ws://{host}/socket"
"#,
        host = backend.trim_start_matches("http://")
    )
}

#[tokio::test]
async fn check_prints_the_table_for_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    TestCa::new("ca")
        .leaf(&["chat.example.org"])
        .write(&dir.path().join("certs"), "chat");
    std::fs::write(
        dir.path().join("wasmgate.toml"),
        seed_config("http://127.0.0.1:3000"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path().join("wasmgate.toml"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("chat  hosts: chat.example.org  listeners: tls"),
        "{stdout}"
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("/socket ").contains("-> ws://127.0.0.1:3000/socket"),
        "{stdout}"
    );
    assert!(line("/ ").contains("-> http://127.0.0.1:3000/"), "{stdout}");
    assert!(
        line("/ ").contains("preserve_host reverse timeout=3600s"),
        "{stdout}"
    );
    assert!(stdout.contains("configuration OK"));
}

#[tokio::test]
async fn check_reports_every_error_with_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(dir.path().join("bad.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
    std::fs::write(
        &path,
        r#"[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[site]]
name = "a"
listeners = ["tls", "missing"]
hosts = ["a.test"]
tls = { cert = "nope.crt", key = "nope.key" }
timeout = "soon"

[[site.route]]
path = "/"
backend = "127.0.0.1:3000"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = path.display().to_string();
    for expected in [
        format!("{f}:8:13: site[0].listeners: no listener is named `missing`"),
        format!("{f}:10:16: site[0].tls.cert: file"),
        format!("{f}:10:34: site[0].tls.key: file"),
        format!("{f}:11:11: site[0].timeout: `soon` does not start with a number"),
        format!("{f}:15:11: site[0].route[0].backend"),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
    assert!(err.contains("error(s); the configuration was not accepted"));

    // Files that exist but do not parse are caught too, naming the file.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("nope.crt", "bad.crt")
        .replace("nope.key", "bad.key")
        .replace(", \"missing\"", "")
        .replace("soon", "5s")
        .replace("\"127.0.0.1:3000\"", "\"http://127.0.0.1:3000\"");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("site[0].tls") && err.contains("bad.crt"),
        "{err}"
    );
}

fn plain_config(backend: &Backend, extra: &str) -> String {
    wasmgate_tests::proxy::app_config(
        "",
        &format!(
            r#"{extra}

[[site.route]]
path = "/"
backend = "{b}/"

[[site.route]]
path = "/socket"
backend = "ws://{a}/socket"
"#,
            b = backend.url(),
            a = backend.addr
        ),
    )
}

#[tokio::test]
async fn run_logs_requests_and_tunnels_and_drains_on_sigterm() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, plain_config(&backend, "")).unwrap();
    let mut run = Running::start_in(Path::new("."), &path).await;
    let addr = run.addrs[0].1;

    let r = get(addr, "app.test", "/hello").await;
    assert_eq!(r.status, 200);
    let line = run.wait_for("GET /hello 200").await;
    for field in [
        "site=app",
        "route=/ ",
        "status=200",
        "bytes_out=",
        "duration_ms=",
        "client=127.0.0.1",
        "complete=true",
    ] {
        assert!(line.contains(field), "access line lacks {field}: {line}");
    }
    let r = get(addr, "nobody.test", "/").await;
    assert_eq!(r.status, 404);
    run.wait_for("GET / 404").await;

    let (mut ws, _) = ws_connect(addr, "app.test", "/socket", &[]).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("12345"))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap();
    // The client goes away without a close handshake: its side ended the tunnel.
    drop(ws);
    let line = run.wait_for("websocket closed").await;
    for field in [
        "status=101",
        "end=client_close",
        "bytes_in=11",
        "bytes_out=7",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "tunnel line lacks {field}: {line}");
    }
    // A close handshake: the server side closes TCP first (RFC 6455 §7.1.1).
    let (mut ws, _) = ws_connect(addr, "app.test", "/socket", &[]).await.unwrap();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let line = run.wait_for("websocket closed").await;
    assert!(line.contains("end=backend_close"), "{line}");

    run.signal("-TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), run.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn config_changes_reload_live_and_broken_ones_are_refused() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, plain_config(&backend, "")).unwrap();
    let mut run = Running::start_in(Path::new("."), &path).await;
    let addr = run.addrs[0].1;
    run.wait_for("watching configuration").await;
    assert_eq!(get(addr, "app.test", "/").await.status, 200);
    assert_eq!(get(addr, "new.test", "/").await.status, 404);

    // An editor-style save: write a temp file, rename it over the config.
    let tmp = dir.path().join(".wasmgate.toml.swp");
    std::fs::write(
        &tmp,
        plain_config(&backend, "").replace(
            "hosts = [\"app.test\"]",
            "hosts = [\"app.test\", \"new.test\"]",
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    run.wait_for("configuration reloaded").await;
    assert_eq!(get(addr, "new.test", "/").await.status, 200);

    // A broken file is refused, with file, place and reason, and the old config keeps serving.
    std::fs::write(&path, plain_config(&backend, "timeout = \"forever\"")).unwrap();
    let line = run.wait_for("reload refused").await;
    let mut detail = line.clone();
    if !detail.contains("timeout") {
        detail = run.wait_for("timeout").await;
    }
    assert!(
        detail.contains("wasmgate.toml:") && detail.contains("site[0].timeout"),
        "{line}\n{detail}"
    );
    assert_eq!(get(addr, "new.test", "/").await.status, 200);

    // SIGHUP reloads on demand.
    std::fs::write(&path, plain_config(&backend, "")).unwrap();
    run.signal("-HUP");
    run.wait_for("configuration reloaded").await;
    assert_eq!(get(addr, "new.test", "/").await.status, 404);
}

#[tokio::test]
async fn the_examples_pass_check() {
    let tenants = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tenants/wasmgate.toml"
    );
    let out = Command::new(BIN)
        .args(["check", "--config", tenants])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tenant acme") && stdout.contains("tenant globex"),
        "{stdout}"
    );

    // The seed example, with a certificate made by `wasmgate cert`.
    let dir = tempfile::tempdir().unwrap();
    for f in ["wasmgate.toml", "tokens.txt"] {
        std::fs::copy(
            format!("{}/../examples/seed/{f}", env!("CARGO_MANIFEST_DIR")),
            dir.path().join(f),
        )
        .unwrap();
    }
    let cert = Command::new(BIN)
        .args([
            "cert",
            "--host",
            "chat.example.org",
            "--host",
            "localhost",
            "--out",
        ])
        .arg(dir.path().join("certs/chat"))
        .output()
        .await
        .unwrap();
    assert!(cert.status.success());
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path().join("wasmgate.toml"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugins=[token-auth]"));
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// A new HTTP/1.1 client connection to `addr`, its driver spawned.
async fn h1_connect(addr: std::net::SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The request keep-alive clients repeat.
fn keepalive_request() -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get("/keepalive")
        .header("host", "app.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap()
}

/// One request on a fresh connection; any failure (refused, reset, bad status) is an `Err`.
async fn try_get(addr: std::net::SocketAddr, host: &str) -> Result<u16, String> {
    use http_body_util::BodyExt;
    let mut sender = h1_connect(addr).await?;
    let req = http::Request::get("/load")
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// Kills a process by pid when dropped (the successor is not our child).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_under_load_refuses_nothing_and_fails_nothing() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, plain_config(&backend, "")).unwrap();
    let mut run = Running::start_in(Path::new("."), &path).await;
    let addr = run.addrs[0].1;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match try_get(addr, "app.test").await {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.signal("-USR2");
    let line = run.wait_for("started a successor").await;
    let pid: u32 = line
        .split("successor=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let _successor = KillOnDrop(pid);
    run.wait_for("telling the predecessor to drain").await;
    let status = tokio::time::timeout(Duration::from_secs(10), run.child.wait())
        .await
        .expect("old process did not exit")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The successor alone now; keep the load on it for a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in load {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "too little load to mean anything: {ok}");
    assert_eq!(
        try_get(addr, "app.test").await,
        Ok(200),
        "the successor serves"
    );
}

/// Issue 14.1: a SIGUSR2 successor loads every tenant afresh and remembers no incumbent; only the
/// state directory does. An attacker that claimed the victim's host while the old process served
/// (refused there) is refused by the successor too, whichever of the two directory names sorts
/// first, and the victim's host never changes hands during the handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_keeps_a_contested_host_with_its_recorded_owner() {
    let backend = Backend::start().await;
    for attacker in ["aaa", "zzz"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let tenant = |path: &str| {
            format!(
                "[[site]]\nname = \"shop\"\nlisteners = [\"web\"]\nhosts = [\"shared.test\"]\n\n[[site.route]]\npath = \"/\"\nbackend = \"{}/{path}/\"\n",
                backend.url()
            )
        };
        write(
            "wasmgate.toml",
            &format!(
                r#"tenants_dir = "tenants"
state_dir = "state"

[tenant_limits.default]
backends = ["127.0.0.0/8"]

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "ops"
listeners = ["web"]
hosts = ["ops.test"]

[[site.route]]
path = "/"
backend = "{}/operator/"
"#,
                backend.url()
            ),
        );
        write("tenants/mmm/tenant.toml", &tenant("victim"));
        let mut run = Running::start_in(root, Path::new("wasmgate.toml")).await;
        let addr = run.addrs[0].1;
        // A file written before the watcher is set up would go unseen until the next change.
        run.wait_for("watching configuration for changes").await;
        let served_by = |body: &[u8]| String::from_utf8_lossy(body).contains("/victim/");
        assert!(served_by(&get(addr, "shared.test", "/").await.body));

        // The attacker claims the host while the old process serves: refused, the victim keeps it.
        write(
            &format!("tenants/{attacker}/tenant.toml"),
            &tenant("attacker"),
        );
        run.wait_for("belongs to tenant `mmm`").await;
        assert!(served_by(&get(addr, "shared.test", "/").await.body));

        run.signal("-USR2");
        // The two processes' lines interleave in no fixed order: all of them up to the takeover.
        let lines = run.lines_until("telling the predecessor to drain").await;
        let pid: u32 = lines
            .iter()
            .find_map(|l| l.split("successor=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no successor pid in {lines:#?}"));
        let _successor = KillOnDrop(pid);
        // The successor judged the contest from the state directory before it took over.
        assert!(
            lines.iter().any(|l| l.contains("belongs to tenant `mmm`")
                && l.contains("it already owns it")
                && l.contains(&format!("tenant={attacker}"))),
            "{lines:#?}"
        );
        let status = tokio::time::timeout(Duration::from_secs(10), run.child.wait())
            .await
            .expect("old process did not exit")
            .unwrap();
        assert!(status.success(), "{status:?}");
        for _ in 0..5 {
            assert!(
                served_by(&get(addr, "shared.test", "/").await.body),
                "the successor gave the victim's host away"
            );
        }
    }
}

#[tokio::test]
async fn systemd_is_told_ready_with_the_main_pid_and_logs_can_be_json() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(
        &path,
        format!("log_format = \"json\"\n{}", plain_config(&backend, "")),
    )
    .unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::task::spawn_blocking(move || sock.recv(&mut buf).map(|n| (n, buf)))
        .await
        .unwrap()
        .unwrap();
    let msg = String::from_utf8_lossy(&n.1[..n.0]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(
        msg.contains(&format!("MAINPID={}", child.id().unwrap())),
        "{msg}"
    );

    // JSON logs: every stderr line is an object; the access line carries its fields.
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let l = out.next_line().await.unwrap().unwrap();
        if let Some(rest) = l.strip_prefix("listening web ") {
            break rest.parse().unwrap();
        }
    };
    assert_eq!(get(addr, "app.test", "/json").await.status, 200);
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let access = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let l = err.next_line().await.unwrap().unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            if v["target"] == "wasmgate::access" {
                return v;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(access["status"], 200);
    assert_eq!(access["path"], "/json");
    assert_eq!(access["site"], "app");
    assert!(
        access["duration_ms"].is_number() && access["id"].is_string(),
        "{access}"
    );
    child.kill().await.unwrap();
}

/// `access_log_format = "combined"`: the access lines are Apache's, as fail2ban and goaccess parse
/// them, and the other log lines stay as they were.
#[tokio::test]
async fn access_lines_can_be_apaches_combined_format() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(
        &path,
        format!(
            "access_log_format = \"combined\"\n{}",
            plain_config(&backend, "")
        ),
    )
    .unwrap();
    let mut run = Running::start_in(Path::new("."), &path).await;
    let addr = run.addrs[0].1;
    let req = http::Request::get("/combined/x")
        .header("host", "app.test")
        .header("referer", "https://from.example/page")
        .header("user-agent", "probe/1.0 \"quoted\"")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = wasmgate_tests::client::send(addr, req).await;
    assert_eq!(r.status, 200);
    let line = run.wait_for("\"GET /combined/x HTTP/1.1\"").await;
    // %h %l %u [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i", nothing before or after.
    let (head, rest) = line.split_once("] ").expect(&line);
    let time = head.strip_prefix("127.0.0.1 - - [").expect(&line);
    assert_eq!(time.len(), "03/Dec/2026:07:01:36 +0000".len(), "{line}");
    let rest = rest
        .strip_prefix("\"GET /combined/x HTTP/1.1\" 200 ")
        .expect(&line);
    let (bytes, agents) = rest.split_once(' ').expect(&line);
    assert!(bytes.parse::<u64>().unwrap() > 0, "{line}");
    assert_eq!(
        agents,
        "\"https://from.example/page\" \"probe/1.0 \\\"quoted\\\"\""
    );
    // A 404 for an unknown host is a line of the same shape.
    assert_eq!(get(addr, "nobody.test", "/nope").await.status, 404);
    let line = run.wait_for("\"GET /nope HTTP/1.1\" 404").await;
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    run.child.kill().await.unwrap();
}

/// `check` refuses fail-open on an auth plugin with file:line:col and the reason, and prints the
/// refused lines of a credential file (with file:line) while accepting the rest of the config.
#[tokio::test]
async fn check_refuses_fail_open_auth_and_lists_refused_credential_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    let site = |extra: &str| {
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\n[[site]]\nname = \"a\"\nlisteners = [\"web\"]\ndefault = true\n\n\
             [[site.plugin]]\nbuiltin = \"token-auth\"\nconfig = {{ tokens_file = \"tokens.txt\" }}\n{extra}\n\
             [[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n"
        )
    };
    std::fs::write(dir.path().join("tokens.txt"), "good\nbad token\n").unwrap();
    std::fs::write(&path, site("on_error = \"allow\"\n")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = path.display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:13:12: site[0].plugin[0].on_error: `on_error = \"allow\"` on `token-auth`"
        )),
        "{err}"
    );
    assert!(
        err.contains("i_understand_this_disables_auth = true"),
        "{err}"
    );

    std::fs::write(&path, site("")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let tokens = dir.path().join("tokens.txt").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{tokens}:2: a token must be non-empty, without spaces or control characters"
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains("configuration OK, 1 line(s) refused"),
        "{stdout}"
    );
}

/// A keep-alive client: requests on one connection for as long as the server keeps it; a response
/// with `Connection: close` (or a connection closed while idle, before a request went out) means
/// "reconnect", as wrk and browsers do. Any request that was sent and got no complete answer fails.
async fn keepalive_client(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u32, Vec<String>) {
    use http_body_util::BodyExt;
    let (mut ok, mut failed) = (0u32, Vec::new());
    'connections: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut sender = match h1_connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                failed.push(e);
                continue;
            }
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if sender.ready().await.is_err() {
                continue 'connections;
            }
            let resp = match sender.try_send_request(keepalive_request()).await {
                Ok(r) => r,
                Err(mut e) => {
                    // Never written: the connection had closed meanwhile. Not a failure.
                    if e.take_message().is_none() {
                        failed.push(format!("request: {}", e.into_error()));
                    }
                    continue 'connections;
                }
            };
            let close = resp
                .headers()
                .get("connection")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = resp.status().as_u16();
            match resp.into_body().collect().await {
                Ok(_) if status == 200 => ok += 1,
                Ok(_) => failed.push(format!("status {status}")),
                Err(e) => failed.push(format!("body: {e}")),
            }
            if close {
                continue 'connections;
            }
        }
    }
    (ok, failed)
}

/// The issue's reproduction, bounded: keep-alive clients beside connection-per-request clients across
/// several SIGUSR2 handovers. The draining process used to close idle keep-alive connections while
/// clients were sending on them; now it answers their next request with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handovers_under_keepalive_and_new_connection_load_lose_nothing() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, plain_config(&backend, "")).unwrap();
    let mut run = Running::start_in(Path::new("."), &path).await;
    let addr = run.addrs[0].1;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut keepalive = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..6 {
        keepalive.push(tokio::spawn(keepalive_client(addr, stop.clone())));
        let stop = stop.clone();
        fresh.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match try_get(addr, "app.test").await {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut current = run.child.id().unwrap();
    let mut successors = Vec::new();
    // Issue 15's goal: ten handovers in a row, nothing failed.
    for round in 0..10 {
        let signalled = std::process::Command::new("kill")
            .args(["-USR2", &current.to_string()])
            .status()
            .unwrap();
        assert!(signalled.success());
        let line = run.wait_for("started a successor").await;
        let pid: u32 = line
            .split("successor=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        successors.push(KillOnDrop(pid));
        run.wait_for("telling the predecessor to drain").await;
        // The predecessor drains and exits (its idle connections after about a second).
        let deadline = std::time::Instant::now() + wasmgate_tests::STATE_CHANGE;
        while std::path::Path::new(&format!("/proc/{current}/stat")).exists()
            && std::fs::read_to_string(format!("/proc/{current}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: process {current} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        current = pid;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (kind, tasks) in [("keep-alive", keepalive), ("new-connection", fresh)] {
        let (mut ok, mut failed) = (0u32, Vec::new());
        for t in tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{kind}: {} of {} requests failed: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 100, "{kind}: too little load to mean anything: {ok}");
    }
    assert_eq!(try_get(addr, "app.test").await, Ok(200));
}

/// `check --tenant DIR` judges one directory (an upload that has not landed) as a reload would: the
/// operator's grants and rules, the file rules, and the hosts the tenants on disk already serve.
#[tokio::test]
async fn check_tenant_judges_one_upload_as_a_reload_would() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tenant = |hosts: &str, extra: &str| {
        format!(
            "[[site]]\nname = \"shop\"\nlisteners = [\"web\"]\nhosts = [{hosts}]\n{extra}\n[[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n"
        )
    };
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "wasmgate.toml",
        r#"tenants_dir = "tenants"
state_dir = "state"

# The tenants' backends are on loopback, which tenant egress refuses unless allowed.
[tenant_limits.default]
backends = ["127.0.0.0/8"]

[tenant_limits.acme]
hosts = ["acme.example", "*.acme.example"]

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "platform"
listeners = ["web"]
hosts = ["*.platform.example"]

[[site.route]]
path = "/"
backend = "http://127.0.0.1:9/"
"#,
    );
    write(
        "tenants/globex/tenant.toml",
        &tenant("\"globex.example\"", ""),
    );
    let check = |upload: &str, name: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["check", "--config"])
            .arg(root.join("wasmgate.toml"))
            .arg("--tenant")
            .arg(root.join(upload));
        if let Some(n) = name {
            c.args(["--name", n]);
        }
        async move {
            let out = c.output().await.unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    write(
        "uploads/acme/tenant.toml",
        &tenant("\"shop.acme.example\"", ""),
    );
    let (ok, out, err) = check("uploads/acme", None).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("tenant `acme` OK"), "{out}");

    // Outside its grant, the default site, an IP literal, and a certificate that is a symlink out.
    std::os::unix::fs::symlink("/etc/hostname", root.join("uploads/acme/cert.pem")).unwrap();
    write(
        "uploads/acme/tenant.toml",
        &tenant(
            "\"globex.example\", \"10.0.0.1\"",
            "default = true\ntls = { cert = \"cert.pem\", key = \"cert.pem\" }",
        ),
    );
    let (ok, _, err) = check("uploads/acme", None).await;
    assert!(!ok);
    let f = root.join("uploads/acme/tenant.toml").display().to_string();
    for expected in [
        format!("{f}:4:10: site[0].hosts[0]: `globex.example` is outside the hosts the operator granted this tenant"),
        format!("{f}:4:28: site[0].hosts[1]: a tenant may not claim an IP address"),
        format!("{f}:1:1: site[0].default: only the operator's config may set default = true"),
        format!("{f}:6:16: site[0].tls.cert: `cert.pem` is or passes through a symbolic link"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(
        err.contains("tenant `acme`") && err.contains("would be refused"),
        "{err}"
    );

    // A host the tenant on disk serves (by another name, sorting first): refused, like a reload.
    write("uploads/aaa/tenant.toml", &tenant("\"globex.example\"", ""));
    let (ok, _, err) = check("uploads/aaa", None).await;
    assert!(!ok);
    let f = root.join("uploads/aaa/tenant.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:4:10: its new version: host `globex.example` belongs to tenant `globex`"
        )),
        "{err}"
    );
    // The same upload under the owner's name is globex's own change: fine.
    let (ok, out, err) = check("uploads/aaa", Some("globex")).await;
    assert!(ok && out.contains("tenant `globex` OK"), "{out}\n{err}");
    // Nothing was recorded by checking.
    assert!(!root.join("state").exists());
}

/// Out of descriptors, `accept` fails at once, every time: both accept loops (the proxy's and the
/// admin endpoint's) back off instead of spinning, log it once, and serve what waited in the
/// backlog as soon as descriptors are free again.
#[tokio::test]
async fn out_of_descriptors_the_accept_loops_back_off_and_recover() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    let site = plain_config(&backend, "").replace(
        "[[listener]]",
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[timeouts]\nheader_read = \"60s\"\n\n[[listener]]",
    );
    assert!(site.contains("[admin]"), "{site}");
    std::fs::write(&path, site).unwrap();
    let mut run = Running::start_with(Path::new("."), &path, Some(128)).await;
    let web = run.addrs[0].1;
    let admin_line = run.wait_for("listening admin ").await;
    let admin: std::net::SocketAddr = admin_line.rsplit(' ').next().unwrap().parse().unwrap();
    let pid = run.child.id().unwrap();
    assert_eq!(try_get(web, "app.test").await, Ok(200));

    // Idle connections until the proxy runs out of descriptors.
    let mut held = Vec::new();
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("accept failed")) {
        assert!(held.len() < 400, "never ran out of descriptors: {log:?}");
        for _ in 0..8 {
            held.push(tokio::net::TcpStream::connect(web).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        log.extend(run.drain());
    }
    // A scrape waits in the admin backlog meanwhile.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut scrape = tokio::net::TcpStream::connect(admin).await.unwrap();
    scrape
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Backing off costs next to nothing; spinning would take a core per accept loop.
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = stat.rsplit(')').next().unwrap();
        let f: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        // SAFETY: sysconf only reads a constant.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (f[0] + f[1]) as f64 / tck
    };
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu() - before;
    assert!(
        spent < 0.25,
        "{spent:.2}s of CPU in 1s while out of descriptors"
    );
    let failed_lines = run
        .drain()
        .into_iter()
        .chain(log)
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        (1..=4).contains(&failed_lines),
        "the failure is logged once per loop, then quietly: {failed_lines} lines"
    );

    // Descriptors back: the waiting scrape is answered, and the proxy serves again.
    drop(held);
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), scrape.read_to_string(&mut out))
        .await
        .expect("the scrape waiting in the backlog is answered")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let deadline = std::time::Instant::now() + wasmgate_tests::STATE_CHANGE;
    loop {
        match try_get(web, "app.test").await {
            Ok(200) => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "the proxy did not recover: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.wait_for("accept works again").await;
}

/// SIGTERM drains keep-alive clients as a handover does: busy connections get `Connection: close` on
/// their next response, an idle one that sends during the drain window is answered, and no request
/// that was sent goes unanswered. Then the process exits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_keepalive_request_it_was_sent() {
    use http_body_util::BodyExt;
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, plain_config(&backend, "")).unwrap();
    let mut run = Running::start_in(Path::new("."), &path).await;
    let addr = run.addrs[0].1;
    let connect = || async move { h1_connect(addr).await.unwrap() };
    let request = keepalive_request;
    // Busy clients: back to back on one connection until the proxy says close.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut sender = connect().await;
        busy.push(tokio::spawn(async move {
            let (mut ok, mut closed_by_header) = (0u32, false);
            loop {
                if sender.ready().await.is_err() {
                    // The connection ended between requests: only acceptable after `close`.
                    return (ok, closed_by_header, None);
                }
                let resp = match sender.send_request(request()).await {
                    Ok(r) => r,
                    Err(e) => return (ok, closed_by_header, Some(format!("request: {e}"))),
                };
                let close = resp
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v == "close");
                if let Err(e) = resp.into_body().collect().await {
                    return (ok, closed_by_header, Some(format!("body: {e}")));
                }
                ok += 1;
                if close {
                    closed_by_header = true;
                }
            }
        }));
    }
    // Idle clients: one request before, one during the drain window.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut sender = connect().await;
        let r = sender.send_request(request()).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap();
        idle.push(sender);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.signal("-TERM");
    run.wait_for("draining").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for mut sender in idle {
        let r = sender
            .send_request(request())
            .await
            .expect("a request on an idle connection in the drain window is answered");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().get("connection").map(|v| v.to_str().unwrap()),
            Some("close")
        );
    }
    for t in busy {
        let (ok, closed_by_header, failed) = t.await.unwrap();
        assert_eq!(failed, None, "after {ok} answered requests");
        assert!(ok > 10, "too little load to mean anything: {ok}");
        assert!(
            closed_by_header,
            "the last response said `Connection: close`"
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(10), run.child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert!(status.success(), "{status}");
}
