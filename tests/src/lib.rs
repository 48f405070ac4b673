//! Support for wasmgate's end-to-end tests: real backends, real certificates, the real proxy — each on
//! `127.0.0.1:0`, each owned by the test that started it.

pub mod backend;
pub mod certs;
pub mod client;
pub mod proxy;
pub mod raw_backend;
pub mod wire;

/// Log to the test output when `RUST_LOG` is set (`RUST_LOG=wasmgate=debug cargo test …`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The compiled fixture plugin `fixture-<name>` (see `tests/plugins/`).
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("WASMGATE_FIXTURE_DIR"))
        .join(format!("fixture_{}.wasm", name.replace('-', "_")))
}

/// Capture log lines of everything running on this thread (a `#[tokio::test]` runs the proxy on the
/// test's thread), for asserting on what the logs say.
pub fn capture_logs() -> (tracing::subscriber::DefaultGuard, LogBuffer) {
    let buf = LogBuffer::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (tracing::subscriber::set_default(sub), buf)
}

#[derive(Clone, Default)]
pub struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
