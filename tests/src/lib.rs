//! Support for wasmgate's end-to-end tests: real backends, real certificates, the real proxy — each on
//! `127.0.0.1:0`, each owned by the test that started it.

pub mod backend;
pub mod certs;
pub mod client;
pub mod proxy;
pub mod raw_backend;
pub mod wire;

/// How long a test waits for a reload, a state change or a log line before failing: generous, so a
/// 2-core machine busy with other work does not fail it (a 10 s wait did once). Waits poll and
/// return as soon as the condition holds, so a quiet machine never waits this long.
pub const STATE_CHANGE: std::time::Duration = std::time::Duration::from_secs(30);

/// Poll `cond` (every 20 ms) until it holds; fail naming `what` after [`STATE_CHANGE`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + STATE_CHANGE;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every test process logs at `info` into one in-memory buffer (the proxy's worker threads log there
/// too), which [`capture_logs`] reads; with `RUST_LOG` set, lines also go to the test output.
pub fn init_logging() {
    let buf = LOGS.clone();
    let echo = std::env::var_os("RUST_LOG").is_some();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(move || Tee {
            buf: buf.clone(),
            echo,
        })
        .try_init();
    // Access lines take the path production's do: the proxy's own serializer, here into the buffer.
    wasmgate_observe::log::set_output(wasmgate_config::AccessLogFormat::Text, move |line| {
        let _ = std::io::Write::write_all(
            &mut Tee {
                buf: LOGS.clone(),
                echo,
            },
            line,
        );
    });
}

static LOGS: std::sync::LazyLock<LogBuffer> = std::sync::LazyLock::new(LogBuffer::default);

static KEEP_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// From now on, log lines are formatted but not kept (for long runs that measure this process's
/// memory: the buffer would grow by every access-log line).
pub fn stop_keeping_logs() {
    KEEP_LOGS.store(false, std::sync::atomic::Ordering::Relaxed);
}

struct Tee {
    buf: LogBuffer,
    echo: bool,
}

impl std::io::Write for Tee {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.echo {
            eprint!("{}", String::from_utf8_lossy(b));
        }
        if KEEP_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
            self.buf.inner.lock().unwrap().extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The compiled fixture plugin `fixture-<name>` (see `tests/plugins/`).
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("WASMGATE_FIXTURE_DIR"))
        .join(format!("fixture_{}.wasm", name.replace('-', "_")))
}

/// The log lines written from now on, by anything in this test process. Tests run in parallel,
/// so assertions must look for lines that only their own test can produce (its site, path, plugin).
pub fn capture_logs() -> (LogScope, LogBuffer) {
    init_logging();
    let start = LOGS.inner.lock().unwrap().len();
    (
        LogScope(()),
        LogBuffer {
            inner: LOGS.inner.clone(),
            start,
        },
    )
}

/// Kept for call sites written as `let (_guard, logs) = capture_logs();`.
pub struct LogScope(());

#[derive(Clone, Default)]
pub struct LogBuffer {
    inner: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    start: usize,
}

impl LogBuffer {
    pub fn text(&self) -> String {
        let all = self.inner.lock().unwrap();
        String::from_utf8_lossy(&all[self.start.min(all.len())..]).into_owned()
    }
}
