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
use std::time::{Duration, Instant};

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

/// Append a whole line (with its newline) to this thread's buffer, as a log line at INFO.
pub fn write_line(line: &[u8]) {
    let _ = LineWriter { urgent: false }.write(line);
}

/// The UTC time of `at` as `tracing_subscriber` prints it (`2026-11-25T12:13:54.920769Z`). The wall
/// clock is read once a second per thread and `at` is placed relative to that reading, so a request's
/// line needs no clock read of its own beyond the one that measured its duration; the
/// date-and-seconds part is formatted once per second per thread.
pub fn timestamp_at(out: &mut String, at: Instant) {
    use std::cell::RefCell;
    use std::fmt::Write as _;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = wall_at(at);
    let secs = now.as_secs();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let t = secs % 86_400;
            c.1.clear();
            let _ = write!(
                c.1,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                t / 3600,
                t / 60 % 60,
                t % 60
            );
            c.0 = secs;
        }
        out.push_str(&c.1);
    });
    // `.ffffffZ` by hand: `write!` costs more than the rest of the timestamp.
    let mut frac = *b".000000Z";
    let mut us = now.subsec_micros();
    for d in frac[1..7].iter_mut().rev() {
        *d = b'0' + (us % 10) as u8;
        us /= 10;
    }
    out.push_str(std::str::from_utf8(&frac).unwrap_or(".000000Z"));
}

/// The UTC time of `at` as Apache's `%t` prints it, without the brackets:
/// `03/Dec/2026:07:01:36 +0000`.
pub fn clf_time(out: &mut String, at: Instant) {
    use std::fmt::Write as _;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = wall_at(at).as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let _ = write!(
        out,
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        t / 3600,
        t / 60 % 60,
        t % 60
    );
}

/// `at` as time since the epoch. The wall clock is read once a second per thread and `at` placed
/// relative to that reading (so a line needs no clock read of its own).
fn wall_at(at: Instant) -> Duration {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    }
    let anchor = match ANCHOR.get() {
        // Instants up to a second after the reading, or before it (a request's start, logged when
        // it ends), are placed from it; a reading is not renewed for those.
        Some((i, wall))
            if at.saturating_duration_since(i) < Duration::from_secs(1)
                && i.saturating_duration_since(at) < Duration::from_secs(3600) =>
        {
            (i, wall)
        }
        _ => {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let i = Instant::now();
            ANCHOR.set(Some((i, wall)));
            (i, wall)
        }
    };
    match at.checked_duration_since(anchor.0) {
        Some(after) => anchor.1 + after,
        None => anchor.1.saturating_sub(anchor.0 - at),
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(super::civil_from_days(-1), (1969, 12, 31));
    }

    /// A timestamp placed relative to the per-thread wall-clock reading agrees with the wall clock.
    #[test]
    fn timestamps_of_instants() {
        use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
        let parse = |t: &str| {
            // `…T12:13:54.920769Z` → seconds into the day, with micros.
            let clock = &t[t.find('T').unwrap() + 1..t.len() - 1];
            let parts: Vec<f64> = clock.split(':').map(|p| p.parse().unwrap()).collect();
            parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
        };
        let mut a = String::new();
        super::timestamp_at(&mut a, Instant::now());
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let wall = (wall.as_secs() % 86_400) as f64 + f64::from(wall.subsec_micros()) / 1e6;
        assert!((parse(&a) - wall).abs() < 0.05, "{a} vs {wall}");
        assert_eq!(a.len(), "2026-11-25T12:13:54.920769Z".len(), "{a}");
        // A later instant (past the anchor's second) comes out later by as much.
        let later = Instant::now() + Duration::from_millis(1500);
        let mut b = String::new();
        super::timestamp_at(&mut b, later);
        let step = (parse(&b) - parse(&a)).rem_euclid(86_400.0);
        assert!((step - 1.5).abs() < 0.05, "{a} → {b}");
    }
}
