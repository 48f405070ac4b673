//! The access log: one line per request (or tunnel), written when it is really over — after the last
//! body byte, or when the client went away — with what a person debugging needs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Version};

use wasmgate_core::request::version_name;
use wasmgate_core::text::{decimal, escaped, ip};

use wasmgate_config::AccessLogFormat;

/// Collected along the request path; [`AccessRecord::emit`] writes it. Fields that do not apply
/// (no tenant, no plugin answered, no error) are left out of the line.
#[derive(Clone)]
pub struct AccessRecord {
    pub start: Instant,
    pub request_id: String,
    pub client: IpAddr,
    pub listener: Arc<str>,
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub site: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    /// The route's (or site's) metric handles; before a site is chosen, the server's handles for
    /// requests no site took (site, route and tenant `-`).
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<String>,
    pub bytes_in: Arc<AtomicU64>,
    pub status: u16,
    /// Why the request did not get a backend response, if it did not.
    pub error: Option<String>,
    /// Which plugin answered, if one did.
    pub answered_by: Option<String>,
    /// The TCP peer, when the PROXY protocol named another client address (the balancer).
    pub proxy_peer: Option<String>,
    /// For the `combined` format (shared with the request's header buffer, not copied).
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

impl AccessRecord {
    pub fn new(
        request_id: String,
        client: IpAddr,
        listener: Arc<str>,
        method: &Method,
        path: &str,
        version: Version,
        metrics: Arc<crate::metrics::RouteMetrics>,
    ) -> Self {
        AccessRecord {
            start: Instant::now(),
            request_id,
            client,
            listener,
            method: method.clone(),
            path: path.to_string(),
            version,
            site: None,
            tenant: None,
            metrics,
            route: None,
            upstream: None,
            bytes_in: Arc::new(AtomicU64::new(0)),
            status: 0,
            error: None,
            answered_by: None,
            proxy_peer: None,
            referer: None,
            user_agent: None,
        }
    }

    fn record(&self, bytes_in: u64, bytes_out: u64, took: Duration) {
        self.metrics
            .record(self.status, took.as_secs_f64(), bytes_in, bytes_out);
    }

    /// Count a tunnel as open (`+1`) or closed (`-1`) in the metrics.
    pub fn tunnel_gauge(&self, delta: i64) {
        self.metrics.tunnel(delta);
    }

    /// Write the line for an HTTP exchange.
    pub fn emit(&self, bytes_out: u64, complete: bool) {
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        // One clock read serves the metrics, the duration and the line's timestamp.
        let now = Instant::now();
        self.record(bytes_in, bytes_out, now - self.start);
        let end = [("complete", Value::Bool(complete))];
        self.write(now, "", bytes_in, bytes_out, &end);
    }

    /// Write the line for a finished WebSocket tunnel.
    pub fn emit_tunnel(&self, up: u64, down: u64, end: &str) {
        let now = Instant::now();
        self.record(up, down, now - self.start);
        let msg = format!(" websocket closed: {end}");
        let tail = [("websocket", Value::Bool(true)), ("end", Value::Str(end))];
        self.write(now, &msg, up, down, &tail);
    }
}

/// Where access lines go and how they are laid out. Set once by whoever owns the process's logging:
/// the binary sends them to the batched stderr ([`crate::log_sink`]), the tests to their capture
/// buffer; unset, they go to stderr as text, one write each. Every line, whatever its format, is
/// written by [`AccessRecord::write`] — `tracing`'s generic formatter (17% of the proxy's user-space
/// CPU per request in a profile: a visitor per field, `Debug` escaping, ANSI styling) is not used.
struct Output {
    format: AccessLogFormat,
    write: Box<LineWriter>,
}

/// Takes one whole line, newline included.
type LineWriter = dyn Fn(&[u8]) + Send + Sync;

/// Process-wide on purpose, like `tracing`'s dispatcher that decides whether a line is written at
/// all: the process has one stderr, and lines of two servers in one process interleave there anyway.
static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Lay access lines out as `format` and hand each (with its newline) to `write`. The first call
/// wins. `RUST_LOG` still decides whether they are written: target `wasmgate::access`, level INFO.
pub fn set_output(format: AccessLogFormat, write: impl Fn(&[u8]) + Send + Sync + 'static) {
    let _ = OUTPUT.set(Output {
        format,
        write: Box::new(write),
    });
}

/// Whether the access lines carry the client's `Referer` and `User-Agent` (Apache's `combined`):
/// only then does the pipeline keep them.
pub fn wants_agents() -> bool {
    output().format == AccessLogFormat::Combined
}

fn output() -> &'static Output {
    OUTPUT.get_or_init(|| Output {
        format: AccessLogFormat::Text,
        write: Box::new(|line| {
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line);
        }),
    })
}

enum Value<'a> {
    Str(&'a str),
    Bool(bool),
}

impl AccessRecord {
    /// The one serializer: every access line, in the output's format, to the output.
    fn write(
        &self,
        now: Instant,
        tail_msg: &str,
        bytes_in: u64,
        bytes_out: u64,
        tail: &[(&str, Value<'_>)],
    ) {
        if !tracing::enabled!(target: "wasmgate::access", tracing::Level::INFO) {
            return;
        }
        thread_local! {
            /// The line is laid out here, reused from one line to the next on the thread.
            static LINE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
        }
        let out = output();
        let buf = LINE.take();
        let io = (bytes_in, bytes_out);
        let line = match out.format {
            AccessLogFormat::Combined => self.ncsa(buf, true, bytes_out),
            AccessLogFormat::Common => self.ncsa(buf, false, bytes_out),
            AccessLogFormat::Text => self.fields(buf, false, now, tail_msg, io, tail),
            AccessLogFormat::Json => self.fields(buf, true, now, tail_msg, io, tail),
        };
        (out.write)(line.as_bytes());
        LINE.set(line);
    }

    /// The text or JSON line in `line` (a buffer reused between lines), every field named. By hand:
    /// `push_str` and integer formatting, no `fmt` machinery (which was half of this function's
    /// cost with `write!` per field).
    fn fields(
        &self,
        mut line: String,
        json: bool,
        now: Instant,
        tail_msg: &str,
        (bytes_in, bytes_out): (u64, u64),
        tail: &[(&str, Value<'_>)],
    ) -> String {
        let mut nums = [0u8; 128];
        let mut at = 0;
        let mut num = |n: u64| {
            let len = decimal(n, &mut nums[at..]);
            at += len;
            at - len..at
        };
        let (status, b_in, b_out) = (num(u64::from(self.status)), num(bytes_in), num(bytes_out));
        let micros = (now - self.start).as_micros() as u64;
        let mut client = [0u8; 64];
        let client = ip(self.client, &mut client);
        let text = |r: std::ops::Range<usize>| std::str::from_utf8(&nums[r]).unwrap_or("0");
        // `ms.mmm`, in a buffer of its own (no allocation).
        let mut dur = [0u8; 24];
        let n = decimal(micros / 1000, &mut dur);
        let f = (micros % 1000) as u16;
        dur[n..n + 4].copy_from_slice(&[
            b'.',
            b'0' + (f / 100) as u8,
            b'0' + (f / 10 % 10) as u8,
            b'0' + (f % 10) as u8,
        ]);
        let duration = std::str::from_utf8(&dur[..n + 4]).unwrap_or("0");
        // (name, value, is a number), in the order the lines have always had them; absent ones skipped.
        let fields: [(&str, Option<&str>, bool); 17] = [
            ("id", Some(&self.request_id), false),
            ("client", Some(client), false),
            ("listener", Some(&self.listener), false),
            ("site", self.site.as_deref(), false),
            ("tenant", self.tenant.as_deref(), false),
            ("route", self.route.as_deref(), false),
            ("method", Some(self.method.as_str()), false),
            ("path", Some(&self.path), false),
            ("version", Some(version_name(self.version)), false),
            ("status", Some(text(status.clone())), true),
            ("bytes_in", Some(text(b_in)), true),
            ("bytes_out", Some(text(b_out)), true),
            ("duration_ms", Some(duration), true),
            ("upstream", self.upstream.as_deref(), false),
            ("plugin", self.answered_by.as_deref(), false),
            ("error", self.error.as_deref(), false),
            ("proxy_peer", self.proxy_peer.as_deref(), false),
        ];
        let fields = fields.iter().filter_map(|(k, v, n)| Some((*k, (*v)?, *n)));
        let msg = [
            self.method.as_str(),
            " ",
            &self.path,
            " ",
            text(status),
            tail_msg,
        ];
        line.clear();
        if json {
            json_line(&mut line, now, &msg, fields, tail);
        } else {
            text_line(&mut line, now, &msg, fields, tail);
        }
        line.push('\n');
        line
    }

    /// Apache's `common` (`%h %l %u %t "%r" %>s %b`) or `combined` (`… "%{Referer}i"
    /// "%{User-agent}i"`) line, escaped as Apache escapes it. `%t` is when the request arrived, in
    /// UTC; `%r` carries the path without its query (queries carry tokens: the demo's does); `%u` is
    /// `-` (the host does not know which user a plugin let in).
    fn ncsa(&self, mut line: String, combined: bool, bytes_out: u64) -> String {
        line.clear();
        let mut client = [0u8; 64];
        line.push_str(ip(self.client, &mut client));
        line.push_str(" - - [");
        crate::log_sink::clf_time(&mut line, self.start);
        line.push_str("] \"");
        ncsa_escape(&mut line, self.method.as_str().as_bytes());
        line.push(' ');
        ncsa_escape(&mut line, self.path.as_bytes());
        line.push(' ');
        line.push_str(version_name(self.version));
        line.push_str("\" ");
        let mut num = [0u8; 20];
        let n = decimal(u64::from(self.status), &mut num);
        line.push_str(std::str::from_utf8(&num[..n]).unwrap_or("0"));
        line.push(' ');
        if bytes_out == 0 {
            line.push('-');
        } else {
            let n = decimal(bytes_out, &mut num);
            line.push_str(std::str::from_utf8(&num[..n]).unwrap_or("0"));
        }
        if combined {
            for h in [&self.referer, &self.user_agent] {
                line.push_str(" \"");
                match h {
                    Some(v) => ncsa_escape(&mut line, v.as_bytes()),
                    None => line.push('-'),
                }
                line.push('"');
            }
        }
        line.push('\n');
        line
    }
}

/// Apache's `ap_escape_logitem`: `"` and `\` backslashed, newline, return and tab as `\n` `\r`
/// `\t`, any other control or non-ASCII byte as `\xhh`, so a line stays one line and its quotes
/// delimit its fields.
fn ncsa_escape(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                out.push_str("\\x");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

impl Value<'_> {
    fn as_str(&self) -> &str {
        match self {
            Value::Str(s) => s,
            Value::Bool(true) => "true",
            Value::Bool(false) => "false",
        }
    }
}

/// `timestamp  INFO wasmgate::access: <message> k=v…`, values escaped.
fn text_line<'a>(
    line: &mut String,
    now: Instant,
    msg: &[&str],
    fields: impl Iterator<Item = (&'a str, &'a str, bool)>,
    tail: &[(&str, Value<'_>)],
) {
    crate::log_sink::timestamp_at(line, now);
    line.push_str("  INFO wasmgate::access: ");
    msg.iter().for_each(|m| line.push_str(&escaped(m)));
    let tail = tail.iter().map(|(k, v)| (*k, v.as_str()));
    for (k, v) in fields.map(|(k, v, _)| (k, v)).chain(tail) {
        for part in [" ", k, "=", &escaped(v)] {
            line.push_str(part);
        }
    }
}

/// One JSON object, the numbers unquoted, in the shape `tracing`'s JSON layer gives.
fn json_line<'a>(
    line: &mut String,
    now: Instant,
    msg: &[&str],
    fields: impl Iterator<Item = (&'a str, &'a str, bool)>,
    tail: &[(&str, Value<'_>)],
) {
    line.push_str("{\"timestamp\":\"");
    crate::log_sink::timestamp_at(line, now);
    line.push_str("\",\"level\":\"INFO\",\"message\":");
    json_str(line, &msg.concat());
    for (k, v, number) in fields {
        for part in [",\"", k, "\":"] {
            line.push_str(part);
        }
        if number {
            line.push_str(v);
        } else {
            json_str(line, v);
        }
    }
    for (k, v) in tail {
        for part in [",\"", k, "\":"] {
            line.push_str(part);
        }
        match v {
            Value::Str(s) => json_str(line, s),
            Value::Bool(_) => line.push_str(v.as_str()),
        }
    }
    line.push_str(",\"target\":\"wasmgate::access\"}");
}

fn json_str(out: &mut String, s: &str) {
    // serde_json's escaping, without building a `Value`.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        let mut r = AccessRecord::new(
            "r-1".into(),
            "192.0.2.7".parse().unwrap(),
            "web".into(),
            &Method::GET,
            "/a \"b\"\\c",
            Version::HTTP_11,
            Arc::new(crate::metrics::RouteMetrics::new(
                &crate::metrics::Metrics::new(),
                "-",
                "-",
                None,
            )),
        );
        r.status = 404;
        r
    }

    /// Durations, numbers and timestamps are written by hand: the same text `fmt` would give.
    #[test]
    fn text_and_json_lines_carry_durations_in_milliseconds() {
        let r = record();
        let now = r.start + Duration::from_micros(12_045);
        let line = r.fields(String::new(), false, now, "", (1, 22), &[]);
        assert!(
            line.contains(" status=404 bytes_in=1 bytes_out=22 duration_ms=12.045"),
            "{line}"
        );
        let line = r.fields(
            String::new(),
            true,
            now + Duration::from_millis(3000),
            "",
            (1, 22),
            &[],
        );
        assert!(line.contains("\"duration_ms\":3012.045"), "{line}");
        let stamp = &line["{\"timestamp\":\"".len()..][..27];
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "{stamp}"
        );
        assert!(stamp[20..26].bytes().all(|b| b.is_ascii_digit()), "{stamp}");
    }

    /// What fail2ban's and goaccess's `combined` patterns expect, quotes and backslashes escaped
    /// as Apache escapes them, a non-ASCII byte as `\xhh`.
    #[test]
    fn combined_and_common_lines_read_as_apaches() {
        let mut r = record();
        r.referer = Some(HeaderValue::from_static("https://ref.example/x"));
        r.user_agent = Some(HeaderValue::from_bytes(b"curl/8 \"q\" \xff").unwrap());
        let line = r.ncsa(String::new(), true, 1234);
        let (head, rest) = line.split_once("] ").unwrap();
        let time = head.strip_prefix("192.0.2.7 - - [").expect(&line);
        // 03/Dec/2026:07:01:36 +0000
        assert_eq!(time.len(), 26, "{time}");
        assert!(
            time.ends_with(" +0000") && &time[2..3] == "/" && &time[6..7] == "/",
            "{time}"
        );
        assert_eq!(
            rest,
            "\"GET /a \\\"b\\\"\\\\c HTTP/1.1\" 404 1234 \"https://ref.example/x\" \"curl/8 \\\"q\\\" \\xff\"\n"
        );
        let common = record().ncsa(String::new(), false, 0);
        assert!(
            common.ends_with("] \"GET /a \\\"b\\\"\\\\c HTTP/1.1\" 404 -\n"),
            "no body is `-`, and no referer or agent: {common}"
        );
        let missing = record().ncsa(String::new(), true, 5);
        assert!(missing.ends_with(" 404 5 \"-\" \"-\"\n"), "{missing}");
    }
}
