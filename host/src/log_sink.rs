//! Where the binary's log lines go: stderr, in batches.
//!
//! One `write(2)` per access-log line was ~5% of the proxy's CPU under load (plus a futex whenever two
//! workers met on stderr's lock). Like Envoy's file sink (flushed every second) and nginx's
//! `access_log … buffer=`, each thread appends its lines to a buffer of its own and the buffer goes out
//! when it is [`FLUSH_BYTES`] big, when a line at WARN or above arrives (a problem is seen at once,
//! after the lines that led to it), or every [`FLUSH_EVERY`] from a flusher thread — so a quiet proxy
//! still shows its last request promptly. [`flush`] empties everything (call it before exiting).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

pub const FLUSH_BYTES: usize = 32 * 1024;
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

type Shard = Arc<Mutex<Vec<u8>>>;

/// Every thread's buffer, for the flusher and [`flush`].
fn shards() -> &'static Mutex<Vec<Shard>> {
    static SHARDS: OnceLock<Mutex<Vec<Shard>>> = OnceLock::new();
    SHARDS.get_or_init(|| {
        std::thread::Builder::new()
            .name("wasmgate-log".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            })
            .expect("log flusher thread");
        Mutex::new(Vec::new())
    })
}

thread_local! {
    static LOCAL: Shard = {
        let shard = Shard::default();
        shards().lock().unwrap_or_else(|e| e.into_inner()).push(shard.clone());
        shard
    };
}

/// Write out every thread's pending lines (and forget the buffers of threads that have ended).
pub fn flush() {
    let mut all = shards().lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|shard| {
        drain(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
        Arc::strong_count(shard) > 1
    });
}

fn drain(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // Nothing sensible to do if stderr is gone; the lines are dropped rather than kept forever.
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

/// The [`MakeWriter`] for `tracing_subscriber::fmt().with_writer(..)`.
#[derive(Clone, Copy, Default)]
pub struct BufferedStderr;

pub struct LineWriter {
    urgent: bool,
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        LOCAL.with(|shard| {
            let mut buf = shard.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(line);
            if self.urgent || buf.len() >= FLUSH_BYTES {
                drain(&mut buf);
            }
        });
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
