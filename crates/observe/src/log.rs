//! The access log: one line per request (or tunnel), written when it is really over — after the last
//! body byte, or when the client went away — with what a person debugging needs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmgate_core::text::{decimal, escaped, field, ip};

use wasmgate_config::LogFormat;

/// Collected along the request path; [`AccessRecord::emit`] writes it. Fields that do not apply
/// (no tenant, no plugin answered, no error) are left out of the line.
#[derive(Clone)]
pub struct AccessRecord {
    pub start: Instant,
    pub request_id: String,
    pub client: IpAddr,
    pub listener: Arc<str>,
    pub method: String,
    pub path: String,
    pub version: &'static str,
    pub site: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    /// The route's (or site's) metric handles, once known.
    pub metrics: Option<Arc<crate::metrics::RouteMetrics>>,
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
}

impl AccessRecord {
    pub fn new(
        request_id: String,
        client: IpAddr,
        listener: Arc<str>,
        method: &str,
        path: &str,
        version: &'static str,
    ) -> Self {
        AccessRecord {
            start: Instant::now(),
            request_id,
            client,
            listener,
            method: method.to_string(),
            path: path.to_string(),
            version,
            site: None,
            tenant: None,
            metrics: None,
            route: None,
            upstream: None,
            bytes_in: Arc::new(AtomicU64::new(0)),
            status: 0,
            error: None,
            answered_by: None,
            proxy_peer: None,
        }
    }

    fn site_labels(&self) -> crate::metrics::SiteLabels {
        crate::metrics::SiteLabels {
            site: self.site.as_deref().unwrap_or("-").to_string(),
            tenant: self.tenant.as_deref().unwrap_or("-").to_string(),
        }
    }

    fn record(&self, bytes_in: u64, bytes_out: u64, took: Duration) {
        if let Some(m) = &self.metrics {
            m.record(self.status, took.as_secs_f64(), bytes_in, bytes_out);
            return;
        }
        // Before a site was chosen (bad request, unknown host): the slower, labelled path.
        let m = crate::metrics::get();
        let site = self.site_labels();
        m.requests
            .get_or_create(&crate::metrics::RequestLabels {
                site: site.site.clone(),
                route: self.route.as_deref().unwrap_or("-").to_string(),
                tenant: site.tenant.clone(),
                class: crate::metrics::status_class(self.status),
            })
            .inc();
        m.latency.get_or_create(&site).observe(took.as_secs_f64());
        m.bytes_in.get_or_create(&site).inc_by(bytes_in);
        m.bytes_out.get_or_create(&site).inc_by(bytes_out);
    }

    /// Count a tunnel as open (`+1`) or closed (`-1`) in the metrics.
    pub fn tunnel_gauge(&self, delta: i64) {
        if let Some(m) = &self.metrics {
            m.tunnel(delta);
            return;
        }
        crate::metrics::get()
            .tunnels_open
            .get_or_create(&self.site_labels())
            .inc_by(delta);
    }

    /// Write the line for an HTTP exchange.
    pub fn emit(&self, bytes_out: u64, complete: bool) {
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        // One clock read serves the metrics, the duration and the line's timestamp.
        let now = Instant::now();
        self.record(bytes_in, bytes_out, now - self.start);
        if let Some(format) = DIRECT.get() {
            let end = [("complete", Value::Bool(complete))];
            return self.write_direct(*format, now, "", bytes_in, bytes_out, &end);
        }
        tracing::info!(
            target: "wasmgate::access",
            id = %self.request_id,
            client = %self.client,
            listener = %self.listener,
            site = self.site.as_deref().map(field),
            tenant = self.tenant.as_deref().map(field),
            route = self.route.as_deref().map(field),
            method = %self.method,
            path = field(&self.path),
            version = %self.version,
            status = self.status,
            bytes_in,
            bytes_out,
            duration_ms = elapsed_ms(self.start),
            upstream = self.upstream.as_deref().map(field),
            plugin = self.answered_by.as_deref().map(field),
            error = self.error.as_deref().map(field),
            proxy_peer = self.proxy_peer.as_deref().map(field),
            complete,
            "{} {} {}", self.method, self.path, self.status
        );
    }

    /// Write the line for a finished WebSocket tunnel.
    pub fn emit_tunnel(&self, up: u64, down: u64, end: &str) {
        let now = Instant::now();
        self.record(up, down, now - self.start);
        if let Some(format) = DIRECT.get() {
            let msg = format!(" websocket closed: {end}");
            let tail = [("websocket", Value::Bool(true)), ("end", Value::Str(end))];
            return self.write_direct(*format, now, &msg, up, down, &tail);
        }
        tracing::info!(
            target: "wasmgate::access",
            id = %self.request_id,
            client = %self.client,
            listener = %self.listener,
            site = self.site.as_deref().map(field),
            tenant = self.tenant.as_deref().map(field),
            route = self.route.as_deref().map(field),
            method = %self.method,
            path = field(&self.path),
            version = %self.version,
            status = self.status,
            bytes_in = up,
            bytes_out = down,
            duration_ms = elapsed_ms(self.start),
            upstream = self.upstream.as_deref().map(field),
            websocket = true,
            end = %end,
            "{} {} {} websocket closed: {end}", self.method, self.path, self.status
        );
    }
}

/// Set by the binary: access lines bypass `tracing`'s generic formatter (17% of the proxy's user-space
/// CPU per request in a profile: a visitor per field, `Debug` escaping, ANSI styling) and are written
/// by hand, in the same layout, into the batched stderr buffer ([`crate::log_sink`]). The library
/// default — `tracing` events — stays for embedders and the tests, which capture them.
static DIRECT: OnceLock<LogFormat> = OnceLock::new();

/// Write access lines directly in `format` from now on (`RUST_LOG` still decides whether they are
/// written: target `wasmgate::access`, level INFO).
pub fn write_directly(format: LogFormat) {
    let _ = DIRECT.set(format);
}

enum Value<'a> {
    Str(&'a str),
    Bool(bool),
}

impl AccessRecord {
    /// The line by hand: `push_str` and integer formatting, no `fmt` machinery (which was half of
    /// this function's cost with `write!` per field).
    fn write_direct(
        &self,
        format: LogFormat,
        now: Instant,
        tail_msg: &str,
        bytes_in: u64,
        bytes_out: u64,
        tail: &[(&str, Value<'_>)],
    ) {
        if !tracing::enabled!(target: "wasmgate::access", tracing::Level::INFO) {
            return;
        }
        let mut nums = [0u8; 128];
        let mut at = 0;
        let mut num = |n: u64| {
            let len = decimal(n, &mut nums[at..]);
            at += len;
            at - len..at
        };
        let (status, b_in, b_out) = (num(u64::from(self.status)), num(bytes_in), num(bytes_out));
        let micros = (now - self.start).as_micros() as u64;
        let (ms, frac) = (num(micros / 1000), num(1000 + micros % 1000));
        let mut client = [0u8; 64];
        let client = ip(self.client, &mut client);
        let text = |r: std::ops::Range<usize>| std::str::from_utf8(&nums[r]).unwrap_or("0");
        let duration = [text(ms), ".", &text(frac)[1..]].concat();
        // (name, value, is a number) in the order `emit`'s tracing event has them; absent ones skipped.
        let fields: [(&str, Option<&str>, bool); 17] = [
            ("id", Some(&self.request_id), false),
            ("client", Some(client), false),
            ("listener", Some(&self.listener), false),
            ("site", self.site.as_deref(), false),
            ("tenant", self.tenant.as_deref(), false),
            ("route", self.route.as_deref(), false),
            ("method", Some(&self.method), false),
            ("path", Some(&self.path), false),
            ("version", Some(self.version), false),
            ("status", Some(text(status.clone())), true),
            ("bytes_in", Some(text(b_in)), true),
            ("bytes_out", Some(text(b_out)), true),
            ("duration_ms", Some(&duration), true),
            ("upstream", self.upstream.as_deref(), false),
            ("plugin", self.answered_by.as_deref(), false),
            ("error", self.error.as_deref(), false),
            ("proxy_peer", self.proxy_peer.as_deref(), false),
        ];
        let fields = fields.iter().filter_map(|(k, v, n)| Some((*k, (*v)?, *n)));
        let mut line = String::with_capacity(384);
        let msg = [
            self.method.as_str(),
            " ",
            &self.path,
            " ",
            text(status),
            tail_msg,
        ];
        match format {
            LogFormat::Text => {
                crate::log_sink::timestamp_at(&mut line, now);
                line.push_str("  INFO wasmgate::access: ");
                msg.iter().for_each(|m| line.push_str(&escaped(m)));
                for (k, v, _) in fields {
                    for part in [" ", k, "=", &escaped(v)] {
                        line.push_str(part);
                    }
                }
                for (k, v) in tail {
                    for part in [" ", k, "=", &escaped(v.as_str())] {
                        line.push_str(part);
                    }
                }
            }
            LogFormat::Json => {
                line.push_str("{\"timestamp\":\"");
                crate::log_sink::timestamp_at(&mut line, now);
                line.push_str("\",\"level\":\"INFO\",\"message\":");
                json_str(&mut line, &msg.concat());
                for (k, v, number) in fields {
                    for part in [",\"", k, "\":"] {
                        line.push_str(part);
                    }
                    if number {
                        line.push_str(v);
                    } else {
                        json_str(&mut line, v);
                    }
                }
                for (k, v) in tail {
                    for part in [",\"", k, "\":"] {
                        line.push_str(part);
                    }
                    match v {
                        Value::Str(s) => json_str(&mut line, s),
                        Value::Bool(_) => line.push_str(v.as_str()),
                    }
                }
                line.push_str(",\"target\":\"wasmgate::access\"}");
            }
        }
        line.push('\n');
        crate::log_sink::write_line(line.as_bytes());
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

fn json_str(out: &mut String, s: &str) {
    // serde_json's escaping, without building a `Value`.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn elapsed_ms(start: Instant) -> f64 {
    (start.elapsed().as_micros() as f64) / 1000.0
}
