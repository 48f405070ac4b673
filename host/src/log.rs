//! The access log: one line per request (or tunnel), written when it is really over — after the last
//! body byte, or when the client went away — with what a person debugging needs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
        }
    }

    fn site_labels(&self) -> crate::metrics::SiteLabels {
        crate::metrics::SiteLabels {
            site: self.site.as_deref().unwrap_or("-").to_string(),
            tenant: self.tenant.as_deref().unwrap_or("-").to_string(),
        }
    }

    fn record(&self, bytes_in: u64, bytes_out: u64) {
        if let Some(m) = &self.metrics {
            m.record(
                self.status,
                self.start.elapsed().as_secs_f64(),
                bytes_in,
                bytes_out,
            );
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
        m.latency
            .get_or_create(&site)
            .observe(self.start.elapsed().as_secs_f64());
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
        self.record(self.bytes_in.load(Ordering::Relaxed), bytes_out);
        tracing::info!(
            target: "wasmgate::access",
            id = %self.request_id,
            client = %self.client,
            listener = %self.listener,
            site = self.site.as_deref().map(display),
            tenant = self.tenant.as_deref().map(display),
            route = self.route.as_deref().map(display),
            method = %self.method,
            path = %self.path,
            version = %self.version,
            status = self.status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            duration_ms = elapsed_ms(self.start),
            upstream = self.upstream.as_deref().map(display),
            plugin = self.answered_by.as_deref().map(display),
            error = self.error.as_deref().map(display),
            complete,
            "{} {} {}", self.method, self.path, self.status
        );
    }

    /// Write the line for a finished WebSocket tunnel.
    pub fn emit_tunnel(&self, up: u64, down: u64, end: &str) {
        self.record(up, down);
        tracing::info!(
            target: "wasmgate::access",
            id = %self.request_id,
            client = %self.client,
            listener = %self.listener,
            site = self.site.as_deref().map(display),
            tenant = self.tenant.as_deref().map(display),
            route = self.route.as_deref().map(display),
            method = %self.method,
            path = %self.path,
            version = %self.version,
            status = self.status,
            bytes_in = up,
            bytes_out = down,
            duration_ms = elapsed_ms(self.start),
            upstream = self.upstream.as_deref().map(display),
            websocket = true,
            end = %end,
            "{} {} {} websocket closed: {end}", self.method, self.path, self.status
        );
    }
}

fn elapsed_ms(start: Instant) -> f64 {
    (start.elapsed().as_micros() as f64) / 1000.0
}
