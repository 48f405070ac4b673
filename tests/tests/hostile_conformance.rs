//! WebSocket conformance through the proxy (the Autobahn cases, driven by `kosoku`) and a TLS audit of
//! the TLS listener (`sslyze`, Mozilla's intermediate profile). Both need Python tools, so both are
//! ignored here and run by `scripts/hostile-long`, which installs them into a venv and points
//! `HOSTILE_PYTHON` at its interpreter.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use wasmgate_tests::backend::Backend;
use wasmgate_tests::certs::TestCa;
use wasmgate_tests::client::tls_config;
use wasmgate_tests::proxy::Proxy;

fn python() -> String {
    std::env::var("HOSTILE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn out_dir() -> std::path::PathBuf {
    let d = std::env::var("HOSTILE_OUT")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir().join("wasmgate-hostile"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// kosoku has no TLS: a local plain-TCP port whose connections are carried over TLS to `tls_addr`.
async fn tls_bridge(
    tls_addr: SocketAddr,
    sni: &'static str,
    roots: rustls::RootCertStore,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = tls_config(roots, &[b"http/1.1"]);
    tokio::spawn(async move {
        while let Ok((mut plain, _)) = listener.accept().await {
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let tcp = TcpStream::connect(tls_addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
                let Ok(mut tls) = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
            });
        }
    });
    addr
}

const KOSOKU_DRIVER: &str = r#"
import asyncio, json, sys
from kosoku import run_fuzzingclient, FailureError
from kosoku._report import write_reports
url, outdir, include, exclude, par = sys.argv[1:6]
include = [c for c in include.split(",") if c] or None
exclude = [c for c in exclude.split(",") if c] or None
async def main():
    try:
        results = await run_fuzzingclient(url, include, exclude, concurrency=int(par))
    except FailureError as f:
        results = f.results
    write_reports(results, outdir, produce_html=False)
    print(json.dumps({r.case_id: [r.behavior.value, r.behavior_close.value] for r in results}))
asyncio.run(main())
"#;

type Verdicts = std::collections::BTreeMap<String, (String, String)>;

async fn kosoku(url: &str, label: &str) -> Verdicts {
    let include = std::env::var("HOSTILE_KOSOKU_CASES").unwrap_or_default();
    let exclude = std::env::var("HOSTILE_KOSOKU_EXCLUDE").unwrap_or_default();
    let par = std::env::var("HOSTILE_KOSOKU_PARALLEL").unwrap_or_else(|_| "4".into());
    let outdir = out_dir().join(format!("kosoku-{label}"));
    let start = std::time::Instant::now();
    let out = tokio::process::Command::new(python())
        .args(["-c", KOSOKU_DRIVER, url])
        .arg(&outdir)
        .args([include.as_str(), exclude.as_str(), par.as_str()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(1800), out)
        .await
        .expect("kosoku hung")
        .expect("run kosoku");
    assert!(
        out.status.success(),
        "kosoku against {label} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().last().unwrap_or("{}");
    let map: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_str(json).expect("kosoku driver output");
    eprintln!(
        "kosoku {label}: {} cases in {:?} (reports in {})",
        map.len(),
        start.elapsed(),
        outdir.display()
    );
    map.into_iter()
        .map(|(k, v)| (k, (v[0].clone(), v[1].clone())))
        .collect()
}

fn summary(v: &Verdicts) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (b, _) in v.values() {
        *m.entry(b.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: scripts/hostile-long (needs kosoku)"]
async fn autobahn_cases_through_the_proxy_match_direct() {
    let be = Backend::start().await;
    let ca = TestCa::new("wasmgate hostile CA");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(&["ws.test"]).write(dir.path(), "ws");
    let cfg = format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[site]]
name = "ws"
listeners = ["web", "tls"]
hosts = ["ws.test"]
default = true
tls = {{ cert = "ws.crt", key = "ws.key" }}

[[site.route]]
path = "/"
backend = "ws://{}/"
timeouts = {{ idle = "60s" }}
"#,
        be.addr
    );
    let p = Proxy::start_in(dir, &cfg).await;
    let bridge = tls_bridge(p.addr("tls"), "ws.test", ca.roots()).await;
    let direct = kosoku(&format!("ws://{}", be.addr), "direct").await;
    let ws = kosoku(&format!("ws://{}", p.addr("web")), "proxy-ws").await;
    let wss = kosoku(&format!("ws://{bridge}"), "proxy-wss").await;
    eprintln!("HOSTILE-RESULT kosoku direct {:?}", summary(&direct));
    eprintln!(
        "HOSTILE-RESULT kosoku ws through wasmgate {:?}",
        summary(&ws)
    );
    eprintln!(
        "HOSTILE-RESULT kosoku wss through wasmgate {:?}",
        summary(&wss)
    );
    let mut diffs = Vec::new();
    for (case, d) in &direct {
        for (label, other) in [("ws", &ws), ("wss", &wss)] {
            if other.get(case) != Some(d) {
                diffs.push(format!(
                    "{case}: direct {d:?}, {label} {:?}",
                    other.get(case)
                ));
            }
        }
    }
    assert!(!direct.is_empty(), "kosoku ran no case");
    assert_eq!(direct.len(), ws.len());
    assert_eq!(direct.len(), wss.len());
    assert!(
        diffs.is_empty(),
        "{} cases differ through the proxy:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: scripts/hostile-long (needs sslyze)"]
async fn the_tls_listener_passes_mozilla_intermediate() {
    let be = Backend::start().await;
    let ca = TestCa::new("wasmgate hostile CA");
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf_valid_for(&["app.test"], 90);
    // The served chain: leaf, then the issuing CA.
    std::fs::write(
        dir.path().join("app.crt"),
        format!("{}{}", leaf.cert_pem, ca.pem),
    )
    .unwrap();
    std::fs::write(dir.path().join("app.key"), &leaf.key_pem).unwrap();
    ca.write(&dir.path().join("ca.pem"));
    let ca_file = dir.path().join("ca.pem");
    let cfg = format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[site]]
name = "app"
listeners = ["tls"]
hosts = ["app.test"]
# sslyze's certificate scan also connects without SNI; without a default site wasmgate refuses those
# handshakes (access_denied), by design.
default = true
tls = {{ cert = "app.crt", key = "app.key" }}

[[site.route]]
path = "/"
backend = "{}/"
"#,
        be.url()
    );
    let p = Proxy::start_in(dir, &cfg).await;
    let target = format!("app.test:{}{{127.0.0.1}}", p.addr("tls").port());
    let json_out = out_dir().join("sslyze.json");
    let out = tokio::process::Command::new(python())
        .args([
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            "--certinfo_ca_file",
        ])
        .arg(&ca_file)
        .arg("--json_out")
        .arg(&json_out)
        .arg(&target)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), out)
        .await
        .expect("sslyze hung")
        .expect("run sslyze");
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::write(out_dir().join("sslyze.txt"), text.as_bytes()).unwrap();
    eprintln!("{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let scan = &json["server_scan_results"][0]["scan_result"];
    let accepted = |suite: &str| {
        scan[suite]["result"]["accepted_cipher_suites"]
            .as_array()
            .map_or(0, Vec::len)
    };
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_eq!(accepted(old), 0, "{old} accepted");
    }
    eprintln!(
        "HOSTILE-RESULT sslyze: TLS 1.2 suites {}, TLS 1.3 suites {}, exit {:?}",
        accepted("tls_1_2_cipher_suites"),
        accepted("tls_1_3_cipher_suites"),
        out.status.code()
    );
    assert!(
        out.status.success() && text.contains("OK - Compliant"),
        "not compliant with Mozilla's intermediate profile:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
