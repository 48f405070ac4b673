//! The config file exactly as written: serde types that refuse unknown fields. Values that can be
//! wrong in ways serde cannot see carry their span, so validation can point at `line:column`.

use serde::Deserialize;
use toml::Spanned;

use super::units::SizeValue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "site")]
    pub sites: Vec<Spanned<RawSite>>,
    /// CIDRs whose `X-Forwarded-*`, `Forwarded` and `X-Request-Id` headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Which header trusted proxies name the client in: `x-forwarded-for` (default) or `forwarded`.
    pub client_address_header: Option<Spanned<String>>,
    /// Watch the config and the files it names, reloading on change (default true; SIGHUP always works).
    pub watch: Option<bool>,
    /// Defaults for every site; sites and routes override them.
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    /// Where compiled plugins are cached. Default: `$XDG_CACHE_HOME/wasmgate` or `~/.cache/wasmgate`.
    pub cache_dir: Option<String>,
    /// Worker threads, each with its own event loop and connection pools (default: one per core;
    /// 0 runs everything on the caller's tokio runtime).
    pub workers: Option<Spanned<u64>>,
    /// Grace period for in-flight requests and tunnels on shutdown.
    pub shutdown_grace: Option<Spanned<String>>,
    /// The admin listener (metrics, health, status). Off unless configured.
    pub admin: Option<RawAdmin>,
    /// `text` (default) or `json`: one JSON object per log line.
    pub log_format: Option<Spanned<String>>,
    /// `text`, `json`, `combined` or `common` (Apache's): the access lines' layout. Default: as
    /// `log_format`.
    pub access_log_format: Option<Spanned<String>>,
    /// A directory of tenant directories, each with a `tenant.toml` declaring that tenant's sites.
    pub tenants_dir: Option<Spanned<String>>,
    /// Limits per tenant: `default` for all, then one table per tenant name overriding it.
    #[serde(default)]
    pub tenant_limits: std::collections::BTreeMap<String, Spanned<RawTenantLimits>>,
    /// Operator-owned state (who owns each tenant host). Default: `$XDG_STATE_HOME/wasmgate` or
    /// `~/.local/state/wasmgate`.
    pub state_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<Spanned<String>>,
    /// A unix socket path instead of `bind` (access is then the file's permissions).
    pub socket: Option<Spanned<String>>,
    /// A file holding the bearer token `/metrics` and `/status` require; needed beyond loopback.
    pub token_file: Option<Spanned<String>>,
    /// A request head must arrive this long after accept or after the previous response (default 5s).
    pub header_timeout: Option<Spanned<String>>,
    /// No admin connection lives longer (default 30s): every answer is small.
    pub lifetime: Option<Spanned<String>>,
    /// Connections served at once; more are closed on accept (default 64).
    pub max_connections: Option<Spanned<usize>>,
    /// Kept for old configs: beyond loopback, `token_file` is what is required now.
    #[serde(default)]
    #[allow(dead_code)]
    pub allow_public: bool,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantLimits {
    pub plugin_time: Option<Spanned<String>>,
    pub plugin_memory: Option<Spanned<SizeValue>>,
    pub max_requests: Option<Spanned<u64>>,
    pub max_tunnels: Option<Spanned<u64>>,
    pub max_body_bytes: Option<Spanned<SizeValue>>,
    // Egress and resource caps (issue 14, items 2 and 3); see `TenantLimits`.
    pub backends: Option<Vec<Spanned<String>>>,
    pub max_sites: Option<Spanned<u64>>,
    pub max_routes: Option<Spanned<u64>>,
    pub max_plugins: Option<Spanned<u64>>,
    pub max_instances: Option<Spanned<u64>>,
    pub max_plugin_memory: Option<Spanned<SizeValue>>,
    pub plugin_cpu: Option<Spanned<String>>,
    // Host ownership and tenant files (issue 14.1, 14.4).
    /// Host patterns this tenant may claim; a claim they cover is the tenant's.
    pub hosts: Option<Vec<Spanned<String>>>,
    pub max_file_bytes: Option<Spanned<SizeValue>>,
    pub max_tenant_bytes: Option<Spanned<SizeValue>>,
    pub max_files: Option<Spanned<u64>>,
    pub max_depth: Option<Spanned<u64>>,
    pub max_dirs: Option<Spanned<u64>>,
}

/// A tenant's `tenant.toml`: sites only. Listeners, trusted proxies, global timeouts and limits are
/// the operator's; a tenant cannot name them (unknown fields are refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    #[serde(default, rename = "site")]
    pub sites: Vec<Spanned<RawSite>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    #[serde(default)]
    pub tls: bool,
    /// Refuse TLS handshakes without SNI, or with a name no site on the listener serves (nginx's
    /// `ssl_reject_handshake`), instead of serving them the listener's default (or first) site.
    pub tls_reject_unknown_sni: Option<Spanned<bool>>,
    /// Expect a PROXY protocol (v1 or v2) header from the sources in `proxy_protocol_from`.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Spanned<String>>,
    pub response: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    /// Only meaningful at the top level: the site is not known until the headers are read.
    pub header_read: Option<Spanned<String>>,
    /// Only meaningful at the top level: how long an idle keep-alive client connection is kept.
    pub keepalive: Option<Spanned<String>>,
    /// Only meaningful at the top level: inactivity while sending to or receiving from the client.
    pub io: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<Spanned<SizeValue>>,
    pub max_body_bytes: Option<Spanned<SizeValue>>,
    pub max_connections: Option<Spanned<u64>>,
    pub max_connections_per_ip: Option<Spanned<u64>>,
    /// A rate such as `"1KiB/s"`: the least a client must send or take while we wait on it.
    pub min_rate: Option<Spanned<String>>,
    pub min_rate_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: Spanned<String>,
    pub listeners: Spanned<Vec<String>>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// The site for requests whose host matches no other site on the listener.
    #[serde(default)]
    pub default: bool,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub preserve_host: bool,
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub max_body_bytes: Option<Spanned<SizeValue>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<Spanned<RawPlugin>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Spanned<String>,
    pub backend: Spanned<String>,
    /// ProxyPassReverse: rewrite Location, Content-Location and URI headers that point at the backend.
    #[serde(default)]
    pub reverse: bool,
    /// ProxyPassReverseCookiePath: rewrite `Path=` of Set-Cookie from the backend's path to the route's.
    #[serde(default)]
    pub reverse_cookie_path: bool,
    pub preserve_host: Option<bool>,
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Tunnel WebSocket upgrades on this route (default true).
    pub websocket: Option<bool>,
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    pub max_tunnels: Option<Spanned<u64>>,
    pub max_body_bytes: Option<Spanned<SizeValue>>,
    /// PEM file with the CA certificates that an `https://`/`wss://` backend's certificate must chain to.
    pub ca: Option<Spanned<String>>,
    /// Match the path prefix ignoring ASCII case (`/Admin/x` is this route's), instead of refusing
    /// paths that only differ from it in case.
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<Spanned<RawPlugin>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub builtin: Option<Spanned<String>>,
    pub wasm: Option<Spanned<String>>,
    /// A name for logs and metrics; defaults to the builtin name or the wasm file's stem.
    pub name: Option<String>,
    #[serde(default)]
    pub config: Option<toml::Table>,
    pub on_error: Option<Spanned<String>>,
    /// Required with `on_error = "allow"` on an access-control built-in: skipping it lets in what it
    /// exists to keep out, and a client can often make it fail (slow input, a crafted header).
    pub i_understand_this_disables_auth: Option<Spanned<bool>>,
    #[serde(default)]
    pub limits: RawPluginLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginLimits {
    pub time: Option<Spanned<String>>,
    pub memory: Option<Spanned<SizeValue>>,
    pub stack: Option<Spanned<SizeValue>>,
    /// Warm instances kept per plugin; instances beyond it are created on demand and dropped after use.
    pub instances: Option<Spanned<u64>>,
}
