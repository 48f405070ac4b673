//! `wasmgate demo`: the seed configuration (`examples/seed/wasmgate.toml`) running in front of a small
//! chat backend, with a self-signed certificate, on unprivileged ports — one command, nothing else to
//! install. A crate of its own so the proxy's libraries ship neither the chat page nor rcgen;
//! it uses no wasmgate crate (the binary starts the proxy on the config it writes).

mod backend;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use backend::ChatBackend;

/// The seed configuration, embedded so the demo needs no checkout.
pub const SEED_CONFIG: &str = include_str!("../../../examples/seed/wasmgate.toml");
pub const DEMO_TOKEN: &str = "demo-token";

pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub bind: IpAddr,
    pub http_port: u16,
    pub https_port: u16,
}

/// Where the demo keeps its certificate and config unless told otherwise.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("wasmgate/demo")
}

/// Write a self-signed certificate and key as `<out>.crt` / `<out>.key` (for trying things out; use a
/// real CA in production).
pub fn write_self_signed(out: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let ck = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    let crt = out.with_extension("crt");
    let key = out.with_extension("key");
    if let Some(dir) = crt.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&crt, ck.cert.pem()).map_err(|e| format!("{}: {e}", crt.display()))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
    Ok((crt, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Held while a demo runs: its data dir (config, certificate, tokens) belongs to it.
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Claim `dir` for this demo. A second demo on the same dir would rewrite the first one's config with
/// its own backend port, and the first would reload onto a backend that is about to go away; so it is
/// refused, unless it is the first one's successor (`successor`: a `SIGUSR2` handover, which takes
/// over the dir).
pub fn lock_data_dir(dir: &Path, successor: bool) -> Result<DataDirLock, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("demo.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) if successor => {
            Ok(DataDirLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is in use by another `wasmgate demo` (it holds {}); stop that one, or give this one \
             its own --data-dir",
            dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// Lay out the demo's data dir (certificate, tokens, config for `backend`) and return the config path.
pub fn prepare(opts: &DemoOptions, backend: std::net::SocketAddr) -> Result<PathBuf, String> {
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir.join("certs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !dir.join("certs/chat.crt").is_file() || !dir.join("certs/chat.key").is_file() {
        let hosts = ["chat.example.org", "localhost", "127.0.0.1"].map(String::from);
        write_self_signed(&dir.join("certs/chat"), &hosts)?;
    }
    std::fs::write(
        dir.join("tokens.txt"),
        format!("# tokens for the demo chat\n{DEMO_TOKEN}\n"),
    )
    .map_err(|e| format!("tokens.txt: {e}"))?;
    let config = seed_config(opts, backend);
    let path = dir.join("wasmgate.toml");
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The seed config with the demo's ports and backend address filled in.
pub fn seed_config(opts: &DemoOptions, backend: std::net::SocketAddr) -> String {
    let bind = |port: u16| match opts.bind {
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        IpAddr::V4(ip) => format!("{ip}:{port}"),
    };
    SEED_CONFIG
        .replace("\"0.0.0.0:8080\"", &format!("\"{}\"", bind(opts.http_port)))
        .replace(
            "\"0.0.0.0:8443\"",
            &format!("\"{}\"", bind(opts.https_port)),
        )
        .replace(
            "https://chat.example.org:8443/",
            &format!("https://chat.example.org:{}/", opts.https_port),
        )
        .replace("127.0.0.1:3000", &backend.to_string())
}

/// What to try, printed when the demo is up.
pub fn instructions(opts: &DemoOptions, config: &Path) -> String {
    let (h, s) = (opts.http_port, opts.https_port);
    let crt = opts.data_dir.join("certs/chat.crt");
    let crt = crt.display();
    let config = config.display();
    let resolve = format!("--resolve chat.example.org:{s}:127.0.0.1 --cacert {crt}");
    format!(
        r#"
wasmgate demo is running: the seed's Apache configuration, done by wasmgate.
  config   {config}
  backend  a chat app on loopback (the seed's "port 3000")

Open https://localhost:{s}/ in a browser (self-signed certificate: accept the warning) and chat;
the messages travel over wss:// through wasmgate, after the token-auth plugin checked the token.

Try:
  # <VirtualHost *:80> Redirect permanent → 301 to https, path and query kept
  curl -si 'http://localhost:{h}/socket?a=1' | head -4
  # TLS, ProxyPreserveHost (the backend sees chat.example.org), X-Forwarded-*
  curl -s {resolve} https://chat.example.org:{s}/api/hello
  # ProxyPassReverse: the backend redirects to its own address; you see the public one
  curl -si {resolve} https://chat.example.org:{s}/login | grep -i location
  # WebSocket upgrade without the token → 401, with it → 101 Switching Protocols
  curl -si --http1.1 {resolve} -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' https://chat.example.org:{s}/socket | head -1
  curl -si --http1.1 --max-time 2 {resolve} -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' 'https://chat.example.org:{s}/socket?token={DEMO_TOKEN}' | head -1

The access log below shows every request (101s too). Edit {config} and it reloads live.
Ctrl-C stops (in-flight requests finish first).
"#
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_dir_serves_one_demo_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::lock_data_dir(dir.path(), false).unwrap();
        let err = super::lock_data_dir(dir.path(), false).err().unwrap();
        assert!(err.contains("in use by another `wasmgate demo`"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(
            super::lock_data_dir(dir.path(), true).is_ok(),
            "a handover's successor takes the dir over"
        );
        drop(first);
        assert!(
            super::lock_data_dir(dir.path(), false).is_ok(),
            "free again once the first demo ends"
        );
    }
}
