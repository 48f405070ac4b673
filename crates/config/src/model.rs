//! The validated configuration: every value checked, every path resolved, every default applied.
//! Nothing downstream of this module re-validates.

use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for messages and the watcher).
    pub path: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub sites: Vec<SiteConfig>,
    pub trusted_proxies: Vec<IpNet>,
    /// The header trusted proxies report the client in.
    pub client_address_header: ClientAddressHeader,
    /// Reload on file changes (read at start).
    pub watch: bool,
    pub limits: Limits,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub shutdown_grace: Duration,
    pub cache_dir: Option<PathBuf>,
    /// The top-level timeouts every site inherits (tenants' sites too).
    pub default_timeouts: Timeouts,
    pub tenants: Option<TenantsConfig>,
    pub admin: Option<AdminConfig>,
    /// Inactivity allowed while a request is in flight and we wait on the client (its body, or its
    /// reading of the response).
    pub io_timeout: Duration,
    pub log_format: LogFormat,
    /// The access line's layout (default: `log_format`'s).
    pub access_log_format: AccessLogFormat,
    /// Worker threads; 0 = serve on the caller's runtime.
    pub workers: usize,
}

/// Where a trusted proxy's report of the client address is read from: one header, never a mix
/// (nginx's `real_ip_header`), so a client cannot add the other one to be believed instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAddressHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How access lines are laid out: like the other log lines (`text`, `json`, with every field), or
/// as Apache's `combined` / `common` (NCSA) lines that fail2ban, goaccess and awstats parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    #[default]
    Text,
    Json,
    Combined,
    Common,
}

/// Where tenants live and what they may use. Set by the operator only.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantsConfig {
    pub dir: PathBuf,
    pub defaults: TenantLimits,
    /// Fully resolved limits (defaults applied) for tenants the operator named.
    pub overrides: std::collections::BTreeMap<String, TenantLimits>,
    /// Host ownership (issue 14.1): host patterns the operator hands to each tenant
    /// (`[tenant_limits.X] hosts`); a tenant listed here may claim only hosts they cover, and a host
    /// they cover is that tenant's against every other tenant and the operator's own wildcards.
    pub grants: std::collections::BTreeMap<String, Vec<String>>,
    /// Where the owner of each tenant host is recorded, so a restart or a handover gives a contested
    /// host to the tenant that had it. `None`: nowhere to keep it (contested hosts go to no one).
    pub state_dir: Option<PathBuf>,
}

impl TenantsConfig {
    pub fn limits_for(&self, tenant: &str) -> TenantLimits {
        self.overrides
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.defaults.clone())
    }
}

/// What one tenant may use. Plugin limits and body size cap what the tenant's own config asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    pub plugin_time: Duration,
    pub plugin_memory: u64,
    /// Requests in flight at once (503 beyond).
    pub max_requests: usize,
    /// Open WebSocket tunnels at once (503 beyond).
    pub max_tunnels: usize,
    pub max_body_bytes: u64,
    // Egress and resources, counted before a tenant's config is accepted (issue 14, items 2, 3).
    /// What the tenant's backends may reach beyond public addresses (see `egress`).
    pub backends: Vec<super::egress::Allow>,
    pub max_sites: usize,
    /// Routes over all of the tenant's sites.
    pub max_routes: usize,
    /// Plugin entries over all of the tenant's sites and routes.
    pub max_plugins: usize,
    /// Warm plugin instances (the sum of the entries' `limits.instances`).
    pub max_instances: usize,
    /// Plugin memory (the sum over entries of `limits.instances × limits.memory`).
    pub max_plugin_memory: u64,
    /// Guest CPU time the tenant's plugins may run, as a share of one core (`0.25` = 25 %); `None`
    /// is unlimited.
    pub plugin_cpu: Option<f64>,
    /// What the tenant's directory may hold (issue 14.4).
    pub files: super::tenant_fs::FileCaps,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            plugin_time: Duration::from_millis(50),
            plugin_memory: 16 << 20,
            max_requests: 1024,
            max_tunnels: 1024,
            max_body_bytes: 16 << 20,
            backends: Vec::new(),
            max_sites: 16,
            max_routes: 256,
            max_plugins: 32,
            max_instances: 64,
            max_plugin_memory: 512 << 20,
            plugin_cpu: Some(0.25),
            files: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub tls: bool,
    /// TLS only: refuse handshakes without SNI or with an unknown name (no fallback site).
    pub reject_unknown_sni: bool,
    /// PROXY protocol: the sources whose header is read (required from them, refused from others).
    pub proxy_protocol: Option<Vec<IpNet>>,
}

impl ListenerConfig {
    /// What needs a restart to change: the socket and how it is served.
    pub fn socket_identity(&self) -> (&str, SocketAddr, bool) {
        (&self.name, self.bind, self.tls)
    }
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: AdminListen,
    /// The bearer token's file, read on each request (so it can be rotated without a restart).
    pub token_file: Option<PathBuf>,
    /// A request head must arrive this long after accept or after the previous response.
    pub header_timeout: Duration,
    /// No admin connection lives longer.
    pub lifetime: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The least transfer rate a client must keep up while we wait on it (Apache's `MinRate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    /// Judged over this much waiting time.
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    /// Open connections per client address (after PROXY protocol); `None`: no limit.
    pub max_connections_per_ip: Option<usize>,
    pub min_rate: Option<MinRate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: None,
            min_rate: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP (and TLS) connection to the backend.
    pub connect: Duration,
    /// From sending the request to receiving the backend's response head.
    pub response: Duration,
    /// Silence in both directions after which a WebSocket tunnel is closed.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub name: String,
    pub listeners: Vec<String>,
    /// Lower-case host names; `*.example.org` matches any single label in front.
    pub hosts: Vec<String>,
    /// `file:line:col` of each of `hosts`, for ownership refusals.
    pub host_locations: Vec<String>,
    pub default: bool,
    pub tls: Option<TlsFiles>,
    pub routes: Vec<RouteConfig>,
    pub plugins: Vec<PluginConfig>,
    /// The tenant that declared this site; `None` for the operator's own sites.
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The path prefix, matched on segment boundaries.
    pub path: String,
    pub backend: Backend,
    pub reverse: bool,
    pub reverse_cookie_path: bool,
    pub preserve_host: bool,
    pub timeouts: Timeouts,
    pub websocket: bool,
    /// Lower-case origins (`https://chat.example.org`); `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    pub max_tunnels: Option<usize>,
    pub max_body_bytes: u64,
    /// The prefix matches ignoring ASCII case.
    pub case_insensitive: bool,
    pub plugins: Vec<PluginConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// As written in config, for logs.
    pub url: String,
    /// True for `https://` and `wss://`.
    pub tls: bool,
    /// True for `ws://` and `wss://`: written as a WebSocket route (plain HTTP still works on it).
    pub websocket_scheme: bool,
    /// `host:port` with the port always present.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// The path part, at least `/`.
    pub path: String,
    /// PEM CA bundle for TLS backends; `None` uses the public web PKI roots.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// For logs and metrics.
    pub name: String,
    pub source: PluginSource,
    /// The plugin's own config table, as JSON for `init`.
    pub config: serde_json::Value,
    pub on_error: OnError,
    pub limits: PluginLimits,
    /// Where `read-config-file` names resolve, and which ones it may read.
    pub files: super::FileScope,
    /// For a tenant's plugin: its wasm and data files are opened beneath the tenant's directory.
    pub confined: Option<super::tenant_fs::Confined>,
    /// `file:line:col` of the entry, for messages.
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginSource {
    Builtin(String),
    Wasm(PathBuf),
}

/// What happens to a request when a plugin fails (traps, runs out of time or memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail closed: answer 500. The default.
    Deny,
    /// Fail open: skip the plugin and go on.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    pub time: Duration,
    pub memory: u64,
    pub stack: u64,
    pub instances: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            time: Duration::from_millis(50),
            memory: 16 << 20,
            stack: 512 << 10,
            // Calls are synchronous and short, so more warm instances than worker threads rarely help.
            instances: 4,
        }
    }
}
