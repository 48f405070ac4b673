//! A person's view of the demo: headless Chromium opens the chat page over https through wasmgate,
//! sends a message over wss, and the page confirms it came back. Needs Debian's `chromium`
//! (`scripts/test` and `.ci/run` install it).

use std::process::Stdio;
use std::time::{Duration, Instant};

use wasmgate_config::Config;
use wasmgate_control::Server;
use wasmgate_demo::{prepare, ChatBackend, DemoOptions, DEMO_TOKEN};
use wasmgate_tests::proxy::on_free_ports;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_chat_works_in_a_real_browser() {
    let browser = chromium()
        .expect("headless Chromium is needed: run scripts/test, or apt-get install chromium");
    let backend = ChatBackend::start(DEMO_TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (opts, server) = on_free_ports(|http_port, https_port| {
        let (dir, backend) = (&dir, &backend);
        async move {
            let opts = DemoOptions {
                data_dir: dir.path().to_path_buf(),
                bind: "127.0.0.1".parse().unwrap(),
                http_port,
                https_port,
            };
            let path = prepare(&opts, backend.addr).unwrap();
            Server::start(Config::load(&path).unwrap())
                .await
                .map(|server| (opts, server))
        }
    })
    .await;

    let profile = tempfile::tempdir().unwrap();
    let url = format!(
        "https://localhost:{}/?auto=hello-from-chromium",
        opts.https_port
    );
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let acked = loop {
        if backend
            .acks
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "hello-from-chromium")
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill().await;
    server.shutdown_with_grace(Duration::from_secs(1)).await;
    assert!(
        acked,
        "the page did not see its message come back over wss:// within 30 s"
    );
}
