//! Start the real proxy from config text in a temporary directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use wasmgate_config::Config;
use wasmgate_control::Server;

/// A running wasmgate and the directory its config lives in.
pub struct Proxy {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Write `config` as `wasmgate.toml` into a fresh directory (plus `files`), and start it.
    pub async fn start(config: &str, files: &[(&str, &[u8])]) -> Proxy {
        crate::init_logging();
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            write(dir.path(), name, bytes);
        }
        Proxy::start_in(dir, config).await
    }

    /// Start from a directory the caller prepared (certificates, plugins).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Proxy {
        Proxy::try_start_in(dir, config)
            .await
            .unwrap_or_else(|(_, e)| panic!("proxy did not start: {e}"))
    }

    /// Like [`Proxy::start_in`], giving the directory back with the error — for configs on fixed
    /// ports, which another test's outgoing connection may have taken meanwhile (retry on new ones).
    pub async fn try_start_in(
        dir: tempfile::TempDir,
        config: &str,
    ) -> Result<Proxy, (tempfile::TempDir, wasmgate_control::StartError)> {
        crate::init_logging();
        let path = dir.path().join("wasmgate.toml");
        std::fs::write(&path, config).unwrap();
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("config refused:\n{e}"));
        match Server::start(cfg).await {
            Ok(server) => Ok(Proxy {
                server: Some(server),
                dir,
            }),
            Err(e) => Err((dir, e)),
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.server()
            .addr(listener)
            .unwrap_or_else(|| panic!("no listener `{listener}`"))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Rewrite the config file and reload it, as SIGHUP would.
    /// Reload from `config` text; `Ok` holds the restart-only settings it changes (not applied).
    pub fn reload(&self, config: &str) -> Result<Vec<&'static str>, wasmgate_config::ConfigErrors> {
        let path = self.path("wasmgate.toml");
        std::fs::write(&path, config).unwrap();
        let cfg = Config::load(&path)?;
        self.server().reload(cfg)
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A port that was free a moment ago (for configs that must name their ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run `start(http_port, https_port)` on two ports found free. A port found free can be taken (by
/// another test's outgoing connection) before the proxy binds it, so a bind failure is retried on a
/// new pair, up to five times; any other error fails the test.
pub async fn on_free_ports<T, Fut>(mut start: impl FnMut(u16, u16) -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, wasmgate_control::StartError>>,
{
    for attempt in 1.. {
        match start(free_port(), free_port()).await {
            Ok(started) => return started,
            Err(wasmgate_control::StartError::Bind { .. }) if attempt < 5 => continue,
            Err(e) => panic!("proxy did not start: {e}"),
        }
    }
    unreachable!()
}

/// A config with one plain listener `web` and one site `app` for host `app.test` — the shape most
/// tests need: `top` (global settings) comes before the listener, `site` (the site's settings,
/// plugins and routes) after the site's header.
pub fn app_config(top: &str, site: &str) -> String {
    format!(
        r#"{top}
[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "app"
listeners = ["web"]
hosts = ["app.test"]
{site}
"#
    )
}
