//! The TLS audit a user runs first: sslyze's check against Mozilla's "intermediate" configuration
//! passes on a listener with two sites and no `default` one. sslyze makes one handshake without SNI,
//! which used to fail there and turn the whole audit into an error. Needs `sslyze` (scripts/test
//! installs it from PyPI into target/sslyze-venv; `SSLYZE` names another binary).

use std::time::Duration;

use wasmgate_tests::certs::TestCa;
use wasmgate_tests::proxy::Proxy;

fn sslyze() -> String {
    if let Some(s) = std::env::var_os("SSLYZE") {
        return s.to_string_lossy().into_owned();
    }
    let venv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/sslyze-venv/bin/sslyze"
    );
    if std::path::Path::new(venv).exists() {
        return venv.to_string();
    }
    let on_path = std::process::Command::new("sslyze")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        on_path,
        "sslyze is needed: run scripts/test, or pip install 'sslyze==6.3.1'"
    );
    "sslyze".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_tls_setup_passes_mozilla_intermediate_without_a_default_site() {
    let ca = TestCa::new("sslyze CA");
    let dir = tempfile::tempdir().unwrap();
    // Mozilla's profile wants certificates that live at most 366 days.
    ca.leaf_valid_for(&["a.test"], 90)
        .write(&dir.path().join("certs"), "a");
    ca.leaf_valid_for(&["b.test"], 90)
        .write(&dir.path().join("certs"), "b");
    ca.write(&dir.path().join("ca.pem"));
    let mut config =
        String::from("[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\ntls = true\n");
    for name in ["a", "b"] {
        config.push_str(&format!(
            r#"
[[site]]
name = "{name}"
listeners = ["tls"]
hosts = ["{name}.test"]
tls = {{ cert = "certs/{name}.crt", key = "certs/{name}.key" }}

[[site.route]]
path = "/"
backend = "http://127.0.0.1:9/"
"#
        ));
    }
    let proxy = Proxy::start_in(dir, &config).await;
    let port = proxy.addr("tls").port();
    for site in ["a.test", "b.test"] {
        let run = tokio::process::Command::new(sslyze())
            .arg("--mozilla_config=intermediate")
            .arg("--certinfo_ca_file")
            .arg(proxy.path("ca.pem"))
            .arg(format!("{site}:{port}{{127.0.0.1}}"))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("sslyze took over 60 s")
            .expect("sslyze runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("{site}:{port}: OK - Compliant")),
            "sslyze for {site}: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Cert chain with SNI disabled"),
            "sslyze made no handshake without SNI:\n{text}"
        );
    }
}
