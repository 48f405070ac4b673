//! Prometheus metrics (served by the admin listener at `/metrics`), recorded at a handful of places:
//! the access-log line (requests, latency, bytes), connection and tunnel open/close, upstream errors,
//! plugin calls, reloads. One [`Metrics`] per server, made by whoever starts it and passed down:
//! the runtime builders hand its handles to routes, plugins and tenants, the serving context to
//! connections and the pipeline.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub site: String,
    pub route: String,
    pub tenant: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    pub site: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub site: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginErrorLabels {
    pub plugin: String,
    pub site: String,
    pub tenant: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DigestLabels {
    pub digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginInfoLabels {
    pub plugin: String,
    pub site: String,
    pub tenant: String,
    pub digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantOnlyLabels {
    pub tenant: String,
}

type Hist = Family<SiteLabels, Histogram, fn() -> Histogram>;
type PluginHist = Family<PluginLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Hist,
    pub bytes_in: Family<SiteLabels, Counter>,
    pub bytes_out: Family<SiteLabels, Counter>,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub tunnels_open: Family<SiteLabels, Gauge>,
    pub upstream_errors: Family<KindLabels, Counter>,
    pub plugin_calls: Family<PluginLabels, Counter>,
    /// `on-request` answers taken from a plugin's decision cache instead of a call.
    pub plugin_cache_hits: Family<PluginLabels, Counter>,
    pub plugin_errors: Family<PluginErrorLabels, Counter>,
    pub plugin_latency: PluginHist,
    pub reloads: Family<ResultLabels, Counter>,
    pub config_info: Family<DigestLabels, Gauge>,
    pub plugin_info: Family<PluginInfoLabels, Gauge>,
    /// Lines of credential and other config files that live plugins refused (the rest applied).
    pub plugin_config_problems: Family<PluginLabels, Gauge>,
    pub tenant_refused: Family<TenantLabels, Counter>,
    /// Tenant backend connections the egress policy refused (every resolved address forbidden).
    pub tenant_egress_refused: Family<TenantOnlyLabels, Counter>,
    /// Guest CPU time charged to each tenant's plugin budget.
    pub tenant_plugin_cpu: Family<TenantOnlyLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Plugin calls of a tenant over its CPU budget: `what` = `delayed` (waited, then ran),
    /// `parked` (a stretch parked at an epoch yield), `refused` (503 without running), or
    /// `background` (a heavy tenant's call, run on the idle-priority lane).
    pub tenant_plugin_throttled: Family<TenantLabels, Counter>,
}

fn request_buckets() -> Histogram {
    // 0.25 ms … 16 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 17))
}

fn plugin_buckets() -> Histogram {
    // 1 µs … 4 s
    Histogram::new(exponential_buckets(0.000001, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry: one per server, owned by whoever starts it and handed down to what counts.
    /// Long on purpose: one flat list of every metric's name, help text and handle, read (and
    /// grepped for a name) top to bottom; split up, it would only scatter the list.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasmgate");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(request_buckets),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            tunnels_open: Family::default(),
            upstream_errors: Family::default(),
            plugin_calls: Family::default(),
            plugin_cache_hits: Family::default(),
            plugin_errors: Family::default(),
            plugin_latency: Family::new_with_constructor(plugin_buckets),
            reloads: Family::default(),
            config_info: Family::default(),
            plugin_info: Family::default(),
            plugin_config_problems: Family::default(),
            tenant_refused: Family::default(),
            tenant_egress_refused: Family::default(),
            tenant_plugin_cpu: Family::default(),
            tenant_plugin_throttled: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by site, route, tenant and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request duration, to the last body byte",
            m.latency.clone(),
        );
        registry.register(
            "request_bytes",
            "Request body bytes received",
            m.bytes_in.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent",
            m.bytes_out.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "websocket_tunnels_open",
            "WebSocket tunnels open now",
            m.tunnels_open.clone(),
        );
        registry.register(
            "upstream_errors",
            "Backend failures by kind",
            m.upstream_errors.clone(),
        );
        registry.register("plugin_calls", "Plugin hook calls", m.plugin_calls.clone());
        registry.register(
            "plugin_cache_hits",
            "On-request answers reused from a plugin's decision cache",
            m.plugin_cache_hits.clone(),
        );
        registry.register(
            "plugin_errors",
            "Plugin failures by kind (trap, deadline, memory, stack)",
            m.plugin_errors.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Plugin hook call duration",
            m.plugin_latency.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads by result",
            m.reloads.clone(),
        );
        registry.register(
            "config_info",
            "The live configuration's digest (value 1)",
            m.config_info.clone(),
        );
        registry.register(
            "plugin_info",
            "Live plugins and their digests (value 1)",
            m.plugin_info.clone(),
        );
        registry.register(
            "plugin_config_problems",
            "Lines of files read by live plugins that were refused (see /status)",
            m.plugin_config_problems.clone(),
        );
        registry.register(
            "tenant_refused",
            "Requests and tunnels refused by tenant limits",
            m.tenant_refused.clone(),
        );
        registry.register(
            "tenant_egress_refused",
            "Tenant backend connections refused by the egress policy",
            m.tenant_egress_refused.clone(),
        );
        registry.register(
            "tenant_plugin_cpu_seconds",
            "Guest CPU time charged to each tenant's plugin CPU budget",
            m.tenant_plugin_cpu.clone(),
        );
        registry.register(
            "tenant_plugin_throttled",
            "Plugin calls of a tenant throttled for CPU: delayed, parked, refused, or run in the background",
            m.tenant_plugin_throttled.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The metric handles of one route (or of a site's "no route"), looked up once when the runtime is
/// built, so the request path increments counters without label hashing or allocation.
pub struct RouteMetrics {
    requests: [Counter; 5],
    latency: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    tunnels: Gauge,
}

impl RouteMetrics {
    pub fn new(m: &Metrics, site: &str, route: &str, tenant: Option<&str>) -> RouteMetrics {
        let tenant = tenant.unwrap_or("-").to_string();
        let labels = SiteLabels {
            site: site.to_string(),
            tenant: tenant.clone(),
        };
        let class = |class| {
            let l = RequestLabels {
                site: site.to_string(),
                route: route.to_string(),
                tenant: tenant.clone(),
                class,
            };
            m.requests.get_or_create(&l).clone()
        };
        RouteMetrics {
            requests: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: m.latency.get_or_create(&labels).clone(),
            bytes_in: m.bytes_in.get_or_create(&labels).clone(),
            bytes_out: m.bytes_out.get_or_create(&labels).clone(),
            tunnels: m.tunnels_open.get_or_create(&labels).clone(),
        }
    }

    pub fn record(&self, status: u16, seconds: f64, bytes_in: u64, bytes_out: u64) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.requests[i].inc();
        self.latency.observe(seconds);
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
    }

    pub fn tunnel(&self, delta: i64) {
        self.tunnels.inc_by(delta);
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
