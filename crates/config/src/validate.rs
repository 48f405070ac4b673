//! Raw config → validated [`Config`]. Every check runs even after one fails, so a user fixing a file
//! sees all of its problems at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use toml::Spanned;

use super::error::{ConfigError, Locator};
use super::hosts;
use super::model::*;
use super::raw::*;
use super::tenant_fs::{Confined, FileCaps};
use super::units::{parse_duration, SizeValue};

pub(super) struct Validator<'a> {
    loc: Locator<'a>,
    base_dir: PathBuf,
    errors: Vec<ConfigError>,
    /// Which files this config may name (a tenant's stay inside its directory).
    files: super::FileScope,
    /// For a tenant's file: every file it names is opened beneath this directory (see `tenant_fs`).
    confine: Option<Confined>,
    /// For a tenant's file: the tenant's name, stamped on its sites.
    tenant: Option<String>,
    /// For a tenant's file: what its backends may reach, judged for literals as they are read.
    egress: Option<Egress<'a>>,
}

/// The egress allowances of the tenant being validated and the proxy's own sockets.
struct Egress<'a> {
    allow: Vec<super::egress::Allow>,
    own: &'a super::egress::OwnAddrs,
    binds: Vec<(std::sync::Arc<str>, SocketAddr)>,
}

impl<'a> Validator<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let base_dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Validator {
            loc: Locator::new(file, text),
            base_dir: base_dir.clone(),
            errors: Vec::new(),
            files: super::FileScope::operator(&base_dir),
            confine: None,
            tenant: None,
            egress: None,
        }
    }

    /// A validator for tenant `name`'s `tenant.toml` at `file`.
    pub fn for_tenant(file: &'a Path, text: &'a str, name: &str, caps: &TenantLimits) -> Self {
        let mut v = Validator::new(file, text);
        v.files = super::FileScope::tenant(&v.base_dir);
        v.confine = Some(Confined {
            root: v.base_dir.clone(),
            max_file_bytes: caps.files.max_file_bytes,
        });
        v.tenant = Some(name.to_string());
        v
    }

    /// A tenant's sites, on the operator's listeners, with the operator's defaults, capped by the
    /// tenant's limits.
    pub fn tenant_sites(
        &mut self,
        raw: RawTenant,
        operator: &Config,
        caps: &TenantLimits,
        own: &'a super::egress::OwnAddrs,
    ) -> Vec<SiteConfig> {
        let mut binds: Vec<(std::sync::Arc<str>, SocketAddr)> = operator
            .listeners
            .iter()
            .map(|l| (l.name.as_str().into(), l.bind))
            .collect();
        binds.extend(operator.admin.as_ref().and_then(|a| match a.listen {
            AdminListen::Tcp(addr) => Some(("admin".into(), addr)),
            AdminListen::Unix(_) => None,
        }));
        binds.retain(|(_, a)| a.port() != 0);
        self.egress = Some(Egress {
            allow: caps.backends.clone(),
            own,
            binds,
        });
        let names: HashSet<&str> = operator.listeners.iter().map(|l| l.name.as_str()).collect();
        let tls: HashSet<&str> = operator
            .listeners
            .iter()
            .filter(|l| l.tls)
            .map(|l| l.name.as_str())
            .collect();
        let limits = Limits {
            max_body_bytes: operator.limits.max_body_bytes.min(caps.max_body_bytes),
            ..operator.limits.clone()
        };
        let mut sites = Vec::new();
        let mut site_names = HashSet::new();
        for (i, site) in raw.sites.iter().enumerate() {
            let field = format!("site[{i}]");
            if !site_names.insert(site.get_ref().name.get_ref().clone()) {
                self.err::<()>(
                    site.get_ref().name.span(),
                    &format!("{field}.name"),
                    "duplicate site name",
                );
            }
            if let Some(mut s) = self.site(
                site,
                &field,
                &names,
                &tls,
                operator.default_timeouts,
                &limits,
            ) {
                for route in &mut s.routes {
                    route.max_body_bytes = route.max_body_bytes.min(caps.max_body_bytes);
                }
                let all = s
                    .plugins
                    .iter_mut()
                    .chain(s.routes.iter_mut().flat_map(|r| r.plugins.iter_mut()));
                for p in all {
                    p.limits.time = p.limits.time.min(caps.plugin_time);
                    p.limits.memory = p.limits.memory.min(caps.plugin_memory);
                }
                sites.push(s);
            }
        }
        self.host_conflicts(&raw.sites, &sites);
        self.tenant_caps(&raw, &sites, caps);
        let grants = operator
            .tenants
            .as_ref()
            .and_then(|t| t.grants.get(self.tenant.as_deref().unwrap_or_default()));
        self.tenant_claims(&raw.sites, grants);
        sites
    }

    /// What a tenant may not claim at all: the default site, IP literals, `localhost`, and (when the
    /// operator granted it hosts) anything its grant does not cover.
    fn tenant_claims(&mut self, raw: &[Spanned<RawSite>], grants: Option<&Vec<String>>) {
        for (si, site) in raw.iter().enumerate() {
            let s = site.get_ref();
            if s.default {
                self.err::<()>(
                    site.span(),
                    &format!("site[{si}].default"),
                    "only the operator's config may set default = true (the catch-all site of a listener)",
                );
            }
            for (i, h) in s.hosts.iter().enumerate() {
                let Ok(pattern) = hosts::normalise(h.get_ref()) else {
                    continue; // already reported
                };
                let field = format!("site[{si}].hosts[{i}]");
                let bare = pattern.strip_prefix("*.").unwrap_or(&pattern);
                let why = if bare.parse::<std::net::IpAddr>().is_ok() {
                    Some("a tenant may not claim an IP address".to_string())
                } else if bare == "localhost" || bare.ends_with(".localhost") {
                    Some("a tenant may not claim localhost".to_string())
                } else {
                    grants
                        .filter(|g| !g.iter().any(|p| hosts::covers(p, &pattern)))
                        .map(|g| {
                            format!(
                                "`{pattern}` is outside the hosts the operator granted this tenant ({})",
                                g.join(", ")
                            )
                        })
                };
                if let Some(why) = why {
                    self.err::<()>(h.span(), &field, why);
                }
            }
        }
    }

    /// The tenant's totals against its caps, counted before anything is built: the first entry past
    /// a cap is named.
    fn tenant_caps(&mut self, raw: &RawTenant, sites: &[SiteConfig], caps: &TenantLimits) {
        if let Some(extra) = raw.sites.get(caps.max_sites) {
            self.err::<()>(
                extra.span(),
                &format!("site[{}]", caps.max_sites),
                format!(
                    "more than {} sites (tenant_limits max_sites)",
                    caps.max_sites
                ),
            );
        }
        let routes = raw.sites.iter().flat_map(|s| s.get_ref().routes.iter());
        if let Some(extra) = routes.clone().nth(caps.max_routes) {
            self.err::<()>(
                extra.span(),
                "route",
                format!(
                    "more than {} routes in all (tenant_limits max_routes)",
                    caps.max_routes
                ),
            );
        }
        let entries = raw.sites.iter().flat_map(|s| {
            let s = s.get_ref();
            s.plugins
                .iter()
                .chain(s.routes.iter().flat_map(|r| r.get_ref().plugins.iter()))
        });
        if let Some(extra) = entries.clone().nth(caps.max_plugins) {
            self.err::<()>(
                extra.span(),
                "plugin",
                format!(
                    "more than {} plugin entries in all (tenant_limits max_plugins)",
                    caps.max_plugins
                ),
            );
        }
        // The validated entries (limits applied), in the same order as the raw ones they came from.
        let plugins = sites.iter().flat_map(|s| {
            s.plugins
                .iter()
                .chain(s.routes.iter().flat_map(|r| r.plugins.iter()))
        });
        let (mut instances, mut memory) = (0usize, 0u64);
        let mut over = (false, false);
        for (p, raw) in plugins.zip(entries) {
            instances += p.limits.instances;
            memory += p.limits.instances as u64 * p.limits.memory;
            if instances > caps.max_instances && !over.0 {
                over.0 = true;
                self.err::<()>(
                    raw.span(),
                    "plugin.limits.instances",
                    format!(
                        "{instances} warm instances in all, more than {} (tenant_limits max_instances)",
                        caps.max_instances
                    ),
                );
            }
            if memory > caps.max_plugin_memory && !over.1 {
                over.1 = true;
                self.err::<()>(
                    raw.span(),
                    "plugin.limits.memory",
                    format!(
                        "{} MiB of plugin memory in all (instances × memory), more than {} MiB (tenant_limits max_plugin_memory)",
                        memory >> 20,
                        caps.max_plugin_memory >> 20
                    ),
                );
            }
        }
    }

    fn err<T>(
        &mut self,
        span: std::ops::Range<usize>,
        field: &str,
        msg: impl Into<String>,
    ) -> Option<T> {
        let e = self.loc.at(span, field, msg);
        self.errors.push(e);
        None
    }

    pub fn finish(self) -> Vec<ConfigError> {
        self.errors
    }

    pub fn config(&mut self, raw: RawConfig) -> Config {
        let listeners = self.listeners(&raw.listeners);
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, cidr)| self.cidr(cidr, &format!("trusted_proxies[{i}]")))
            .collect();
        let client_address_header = match raw
            .client_address_header
            .as_ref()
            .map(|h| (h.get_ref().to_ascii_lowercase(), h.span()))
        {
            None => ClientAddressHeader::XForwardedFor,
            Some((h, _)) if h == "x-forwarded-for" => ClientAddressHeader::XForwardedFor,
            Some((h, _)) if h == "forwarded" => ClientAddressHeader::Forwarded,
            Some((other, span)) => self
                .err(
                    span,
                    "client_address_header",
                    format!("`{other}` is neither \"x-forwarded-for\" nor \"forwarded\""),
                )
                .unwrap_or_default(),
        };
        let defaults = self.timeouts(&raw.timeout, &raw.timeouts, Timeouts::default(), "");
        let header_read_timeout = self
            .duration_opt(&raw.timeouts.header_read, "timeouts.header_read")
            .unwrap_or(Duration::from_secs(30));
        let keepalive_timeout = self
            .duration_opt(&raw.timeouts.keepalive, "timeouts.keepalive")
            .unwrap_or(Duration::from_secs(60));
        // nginx's `send_timeout` and `client_body_timeout` default (HAProxy's `timeout client` is
        // usually set near it): long enough for a slow mobile link, short enough to free the slot.
        let io_timeout = self
            .duration_opt(&raw.timeouts.io, "timeouts.io")
            .unwrap_or(Duration::from_secs(60));
        if io_timeout.is_zero() {
            if let Some(v) = &raw.timeouts.io {
                self.err::<()>(v.span(), "timeouts.io", "must be more than 0");
            }
        }
        let shutdown_grace = self
            .duration_opt(&raw.shutdown_grace, "shutdown_grace")
            .unwrap_or(Duration::from_secs(30));
        let limits = self.limits(&raw.limits);
        let names: HashSet<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let tls_listeners: HashSet<&str> = listeners
            .iter()
            .filter(|l| l.tls)
            .map(|l| l.name.as_str())
            .collect();

        let mut sites = Vec::new();
        let mut site_names = HashSet::new();
        for (i, site) in raw.sites.iter().enumerate() {
            let field = format!("site[{i}]");
            if !site_names.insert(site.get_ref().name.get_ref().clone()) {
                let s = site.get_ref().name.span();
                self.err::<()>(s, &format!("{field}.name"), "duplicate site name");
            }
            if let Some(s) = self.site(site, &field, &names, &tls_listeners, defaults, &limits) {
                sites.push(s);
            }
        }
        self.host_conflicts(&raw.sites, &sites);
        let cache_dir = raw.cache_dir.as_ref().map(|d| self.base_dir.join(d));
        let tenants = self.tenants(&raw);
        let admin = self.admin(&raw, &listeners);
        let log_format = match raw
            .log_format
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                self.err::<()>(
                    span,
                    "log_format",
                    format!("`{other}` is neither \"text\" nor \"json\""),
                );
                LogFormat::Text
            }
        };

        Config {
            path: self.loc.file.to_path_buf(),
            listeners,
            sites,
            trusted_proxies,
            client_address_header,
            watch: raw.watch.unwrap_or(true),
            limits,
            header_read_timeout,
            keepalive_timeout,
            shutdown_grace,
            cache_dir,
            default_timeouts: defaults,
            tenants,
            admin,
            io_timeout: if io_timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                io_timeout
            },
            log_format,
            workers: match &raw.workers {
                Some(n) if *n.get_ref() > 256 => {
                    self.err::<()>(n.span(), "workers", "at most 256");
                    1
                }
                Some(n) => *n.get_ref() as usize,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
        }
    }

    fn admin(&mut self, raw: &RawConfig, listeners: &[ListenerConfig]) -> Option<AdminConfig> {
        let a = raw.admin.as_ref()?;
        let token_file = a
            .token_file
            .as_ref()
            .and_then(|t| self.existing_file(t, "admin.token_file"));
        if let (Some(path), Some(raw_path)) = (&token_file, &a.token_file) {
            let empty = std::fs::read_to_string(path).map_or(true, |t| t.trim().is_empty());
            if empty {
                self.err::<()>(
                    raw_path.span(),
                    "admin.token_file",
                    format!("`{}` holds no token", path.display()),
                );
            }
        }
        let listen = match (&a.bind, &a.socket) {
            (Some(_), Some(s)) => {
                return self.err(s.span(), "admin.socket", "set bind or socket, not both")
            }
            (None, None) => {
                self.errors.push(ConfigError {
                    file: self.loc.file.to_path_buf(),
                    position: None,
                    field: "admin".into(),
                    message: "[admin] needs bind = \"127.0.0.1:9901\" or socket = \"/run/wasmgate/admin.sock\"".into(),
                });
                return None;
            }
            (None, Some(s)) => AdminListen::Unix(self.base_dir.join(s.get_ref())),
            (Some(bind), None) => {
                let Ok(addr) = bind.get_ref().parse::<SocketAddr>() else {
                    return self.err(
                        bind.span(),
                        "admin.bind",
                        format!("`{}` is not an IP:port address", bind.get_ref()),
                    );
                };
                if listeners.iter().any(|l| l.bind == addr && addr.port() != 0) {
                    return self.err(
                        bind.span(),
                        "admin.bind",
                        "the admin endpoint cannot share a proxy listener's address",
                    );
                }
                // Metrics and status name sites, tenants and errors: beyond loopback, only with a token.
                if !addr.ip().is_loopback() && a.token_file.is_none() {
                    return self.err(
                        bind.span(),
                        "admin.bind",
                        "the admin endpoint exposes metrics and status: beyond loopback it needs token_file = \"...\" (a bearer token), or use socket = \"...\" instead of bind (allow_public alone is no longer enough)",
                    );
                }
                AdminListen::Tcp(addr)
            }
        };
        let max_connections = match &a.max_connections {
            Some(n) if *n.get_ref() == 0 => {
                return self.err(n.span(), "admin.max_connections", "must be at least 1")
            }
            Some(n) => *n.get_ref(),
            None => 64,
        };
        Some(AdminConfig {
            listen,
            token_file,
            header_timeout: self
                .duration_opt(&a.header_timeout, "admin.header_timeout")
                .unwrap_or(Duration::from_secs(5)),
            lifetime: self
                .duration_opt(&a.lifetime, "admin.lifetime")
                .unwrap_or(Duration::from_secs(30)),
            max_connections,
        })
    }

    fn tenants(&mut self, raw: &RawConfig) -> Option<TenantsConfig> {
        let Some(dir) = &raw.tenants_dir else {
            if let Some((name, l)) = raw.tenant_limits.iter().next() {
                self.err::<()>(
                    l.span(),
                    &format!("tenant_limits.{name}"),
                    "tenant_limits without tenants_dir",
                );
            }
            return None;
        };
        let path = self.base_dir.join(dir.get_ref());
        if !path.is_dir() {
            return self.err(
                dir.span(),
                "tenants_dir",
                format!("`{}` is not a directory", path.display()),
            );
        }
        let base = TenantLimits::default();
        let defaults = match raw.tenant_limits.get("default") {
            Some(d) => self.tenant_limits(d, base, "tenant_limits.default"),
            None => base,
        };
        let overrides = raw
            .tenant_limits
            .iter()
            .filter(|(name, _)| name.as_str() != "default")
            .map(|(name, l)| {
                (
                    name.clone(),
                    self.tenant_limits(l, defaults.clone(), &format!("tenant_limits.{name}")),
                )
            })
            .collect();
        let grants = self.host_grants(raw);
        let state_dir = match &raw.state_dir {
            Some(d) => Some(self.base_dir.join(d)),
            None => std::env::var_os("XDG_STATE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
                .map(|d| d.join("wasmgate")),
        };
        Some(TenantsConfig {
            dir: path,
            defaults,
            overrides,
            grants,
            state_dir,
        })
    }

    /// `[tenant_limits.X] hosts = [...]`, normalised like any host (a grant in `default` is refused:
    /// one host pattern cannot belong to every tenant).
    fn host_grants(&mut self, raw: &RawConfig) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut grants = std::collections::BTreeMap::new();
        for (name, l) in &raw.tenant_limits {
            let Some(hosts) = &l.get_ref().hosts else {
                continue;
            };
            if name == "default" {
                self.err::<()>(
                    l.span(),
                    "tenant_limits.default.hosts",
                    "hosts are granted per tenant ([tenant_limits.<name>]), not to every tenant",
                );
                continue;
            }
            let mut list = Vec::new();
            for (i, h) in hosts.iter().enumerate() {
                match hosts::normalise(h.get_ref()) {
                    Ok(p) => list.push(p),
                    Err(m) => {
                        self.err::<()>(h.span(), &format!("tenant_limits.{name}.hosts[{i}]"), m);
                    }
                }
            }
            grants.insert(name.clone(), list);
        }
        grants
    }

    fn tenant_limits(
        &mut self,
        raw: &Spanned<RawTenantLimits>,
        base: TenantLimits,
        field: &str,
    ) -> TenantLimits {
        let r = raw.get_ref();
        TenantLimits {
            plugin_time: self
                .duration_opt(&r.plugin_time, &format!("{field}.plugin_time"))
                .unwrap_or(base.plugin_time),
            plugin_memory: self
                .size_opt(&r.plugin_memory, &format!("{field}.plugin_memory"))
                .unwrap_or(base.plugin_memory),
            max_requests: r
                .max_requests
                .as_ref()
                .map_or(base.max_requests, |n| *n.get_ref() as usize),
            max_tunnels: r
                .max_tunnels
                .as_ref()
                .map_or(base.max_tunnels, |n| *n.get_ref() as usize),
            max_body_bytes: self
                .size_opt(&r.max_body_bytes, &format!("{field}.max_body_bytes"))
                .unwrap_or(base.max_body_bytes),
            backends: match &r.backends {
                None => base.backends,
                Some(list) => list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| match super::egress::Allow::parse(e.get_ref()) {
                        Ok(a) => Some(a),
                        Err(m) => self.err(e.span(), &format!("{field}.backends[{i}]"), m),
                    })
                    .collect(),
            },
            max_sites: self.count(&r.max_sites, field, "max_sites", 1024, base.max_sites),
            max_routes: self.count(&r.max_routes, field, "max_routes", 65_536, base.max_routes),
            max_plugins: self.count(&r.max_plugins, field, "max_plugins", 4096, base.max_plugins),
            max_instances: self.count(
                &r.max_instances,
                field,
                "max_instances",
                super::limits::TENANT_INSTANCES_MAX,
                base.max_instances,
            ),
            max_plugin_memory: self
                .size_opt(&r.max_plugin_memory, &format!("{field}.max_plugin_memory"))
                .unwrap_or(base.max_plugin_memory),
            plugin_cpu: match &r.plugin_cpu {
                None => base.plugin_cpu,
                Some(v) => match parse_cpu_share(v.get_ref()) {
                    Ok(share) => share,
                    Err(m) => {
                        self.err::<()>(v.span(), &format!("{field}.plugin_cpu"), m);
                        base.plugin_cpu
                    }
                },
            },
            files: self.file_caps(r, base.files, field),
        }
    }

    /// A whole number from 1 to `max` (or `base` when not given).
    fn count(
        &mut self,
        raw: &Option<Spanned<u64>>,
        field: &str,
        name: &str,
        max: usize,
        base: usize,
    ) -> usize {
        match raw {
            None => base,
            Some(n) if (1..=max as u64).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.err::<()>(
                    n.span(),
                    &format!("{field}.{name}"),
                    format!("must be between 1 and {max}"),
                );
                base
            }
        }
    }

    fn file_caps(&mut self, r: &RawTenantLimits, base: FileCaps, field: &str) -> FileCaps {
        let count =
            |v: &Option<Spanned<u64>>, d: usize| v.as_ref().map_or(d, |n| *n.get_ref() as usize);
        FileCaps {
            max_file_bytes: self
                .size_opt(&r.max_file_bytes, &format!("{field}.max_file_bytes"))
                .unwrap_or(base.max_file_bytes),
            max_total_bytes: self
                .size_opt(&r.max_tenant_bytes, &format!("{field}.max_tenant_bytes"))
                .unwrap_or(base.max_total_bytes),
            max_files: count(&r.max_files, base.max_files),
            max_depth: count(&r.max_depth, base.max_depth),
            max_dirs: count(&r.max_dirs, base.max_dirs).max(1),
        }
    }

    fn listeners(&mut self, raw: &[Spanned<RawListener>]) -> Vec<ListenerConfig> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, l) in raw.iter().enumerate() {
            let l = l.get_ref();
            let field = format!("listener[{i}]");
            if !seen.insert(l.name.get_ref().clone()) {
                self.err::<()>(
                    l.name.span(),
                    &format!("{field}.name"),
                    "duplicate listener name",
                );
            }
            let bind = match l.bind.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.err::<()>(
                        l.bind.span(),
                        &format!("{field}.bind"),
                        format!(
                            "`{}` is not an IP:port address (e.g. \"0.0.0.0:443\")",
                            l.bind.get_ref()
                        ),
                    );
                    continue;
                }
            };
            let reject_unknown_sni = match &l.tls_reject_unknown_sni {
                Some(r) if !l.tls => {
                    self.err::<()>(
                        r.span(),
                        &format!("{field}.tls_reject_unknown_sni"),
                        "only a listener with tls = true has handshakes to refuse",
                    );
                    false
                }
                Some(r) => *r.get_ref(),
                None => false,
            };
            let from: Vec<IpNet> = l
                .proxy_protocol_from
                .iter()
                .enumerate()
                .filter_map(|(j, c)| self.cidr(c, &format!("{field}.proxy_protocol_from[{j}]")))
                .collect();
            let proxy_protocol = match (l.proxy_protocol, from.is_empty()) {
                (true, false) => Some(from),
                (true, true) => {
                    self.err::<()>(
                        l.name.span(),
                        &format!("{field}.proxy_protocol"),
                        "proxy_protocol = true needs proxy_protocol_from = [\"CIDR of the load balancers\", ...]: a PROXY header from anyone else would let them pick their own address",
                    );
                    None
                }
                (false, false) => {
                    self.err::<()>(
                        l.proxy_protocol_from[0].span(),
                        &format!("{field}.proxy_protocol_from"),
                        "proxy_protocol_from without proxy_protocol = true",
                    );
                    None
                }
                (false, true) => None,
            };
            out.push(ListenerConfig {
                name: l.name.get_ref().clone(),
                bind,
                tls: l.tls,
                reject_unknown_sni,
                proxy_protocol,
            });
        }
        if raw.is_empty() {
            self.errors.push(ConfigError {
                file: self.loc.file.to_path_buf(),
                position: None,
                field: "listener".into(),
                message: "no [[listener]] is defined: nothing would accept connections".into(),
            });
        }
        out
    }

    fn site(
        &mut self,
        raw: &Spanned<RawSite>,
        field: &str,
        listeners: &HashSet<&str>,
        tls_listeners: &HashSet<&str>,
        defaults: Timeouts,
        limits: &Limits,
    ) -> Option<SiteConfig> {
        let s = raw.get_ref();
        let name = s.name.get_ref().clone();
        let mut ok = true;
        if let Err(m) = check_name(&name) {
            ok = false;
            self.err::<()>(s.name.span(), &format!("{field}.name"), m);
        }
        for l in s.listeners.get_ref() {
            if !listeners.contains(l.as_str()) {
                ok = false;
                self.err::<()>(
                    s.listeners.span(),
                    &format!("{field}.listeners"),
                    format!("no listener is named `{l}`"),
                );
            } else if tls_listeners.contains(l.as_str()) && s.tls.is_none() {
                ok = false;
                self.err::<()>(
                    raw.span(),
                    &format!("{field}.tls"),
                    format!(
                        "site `{name}` is on TLS listener `{l}` but has no tls = {{ cert, key }}"
                    ),
                );
            }
        }
        if s.listeners.get_ref().is_empty() {
            self.err::<()>(
                s.listeners.span(),
                &format!("{field}.listeners"),
                "a site needs at least one listener",
            );
        }
        let mut hosts = Vec::new();
        let mut host_locations = Vec::new();
        for (i, h) in s.hosts.iter().enumerate() {
            match hosts::normalise(h.get_ref()) {
                Ok(n) => {
                    let (line, col) = self.loc.position(h.span().start);
                    host_locations.push(format!("{}:{line}:{col}", self.loc.file.display()));
                    hosts.push(n);
                }
                Err(m) => {
                    ok = false;
                    self.err::<()>(h.span(), &format!("{field}.hosts[{i}]"), m);
                }
            }
        }
        if hosts.is_empty() && !s.default {
            self.err::<()>(
                raw.span(),
                &format!("{field}.hosts"),
                "a site needs hosts = [...] or default = true",
            );
        }
        let tls = s.tls.as_ref().and_then(|t| {
            let cert = self.existing_file(&t.cert, &format!("{field}.tls.cert"));
            let key = self.existing_file(&t.key, &format!("{field}.tls.key"));
            Some(TlsFiles {
                cert: cert?,
                key: key?,
            })
        });
        let timeouts = self.timeouts(&s.timeout, &s.timeouts, defaults, field);
        for (sub, v) in [
            ("header_read", &s.timeouts.header_read),
            ("keepalive", &s.timeouts.keepalive),
            ("io", &s.timeouts.io),
        ] {
            if let Some(v) = v {
                self.err::<()>(
                    v.span(),
                    &format!("{field}.timeouts.{sub}"),
                    "only the top-level [timeouts] can set this: the site is not known before the headers are read",
                );
            }
        }
        let max_body = self
            .size_opt(&s.max_body_bytes, &format!("{field}.max_body_bytes"))
            .unwrap_or(limits.max_body_bytes);
        let plugins = self.plugins(&s.plugins, &format!("{field}.plugin"));

        let mut routes: Vec<RouteConfig> = Vec::new();
        for (i, r) in s.routes.iter().enumerate() {
            let rfield = format!("{field}.route[{i}]");
            if let Some(route) = self.route(r, &rfield, s.preserve_host, timeouts, max_body) {
                if routes.iter().any(|o| o.path == route.path) {
                    self.err::<()>(
                        r.get_ref().path.span(),
                        &format!("{rfield}.path"),
                        "duplicate route path in this site",
                    );
                } else if let Some(o) = routes.iter().find(|o| {
                    (o.case_insensitive || route.case_insensitive)
                        && o.path.eq_ignore_ascii_case(&route.path)
                }) {
                    // Which of the two would `/API/x` belong to? Neither answer is right.
                    self.err::<()>(
                        r.get_ref().path.span(),
                        &format!("{rfield}.path"),
                        format!(
                            "`{}` and `{}` differ only in case, and case_insensitive makes them the same route",
                            route.path, o.path
                        ),
                    );
                }
                routes.push(route);
            }
        }
        if s.routes.is_empty() && s.plugins.is_empty() {
            self.err::<()>(
                raw.span(),
                &format!("{field}.route"),
                "a site needs at least one [[site.route]] or a [[site.plugin]] that answers",
            );
        }
        ok.then_some(SiteConfig {
            name,
            listeners: s.listeners.get_ref().clone(),
            hosts,
            host_locations,
            default: s.default,
            tls,
            routes,
            plugins,
            tenant: self.tenant.clone(),
        })
    }

    fn route(
        &mut self,
        raw: &Spanned<RawRoute>,
        field: &str,
        site_preserve_host: bool,
        site_timeouts: Timeouts,
        site_max_body: u64,
    ) -> Option<RouteConfig> {
        let r = raw.get_ref();
        let path = r.path.get_ref();
        let mut path_ok = path.starts_with('/')
            && !path.contains(['?', '#', ' '])
            && !path.chars().any(|c| c.is_control() || c.is_whitespace());
        if !path_ok {
            self.err::<()>(
                r.path.span(),
                &format!("{field}.path"),
                "a route path starts with `/` and has no query, spaces or control characters",
            );
        } else {
            // Requests are matched in normal form: a prefix written otherwise would never match.
            match wasmgate_core::path::normalize_path(path) {
                Ok(n) if n == *path => {}
                Ok(n) => {
                    path_ok = false;
                    self.err::<()>(
                        r.path.span(),
                        &format!("{field}.path"),
                        format!("requests are matched in normal form: write `{n}`"),
                    );
                }
                Err(e) => {
                    path_ok = false;
                    self.err::<()>(r.path.span(), &format!("{field}.path"), e.reason());
                }
            }
        }
        let ca =
            r.ca.as_ref()
                .and_then(|c| self.existing_file(c, &format!("{field}.ca")));
        let backend = self.backend(&r.backend, &format!("{field}.backend"), ca);
        let allowed_origins = r.allowed_origins.as_ref().map(|list| {
            list.iter()
                .map(|o| o.get_ref().trim_end_matches('/').to_ascii_lowercase())
                .collect()
        });
        let max_tunnels = r.max_tunnels.as_ref().map(|n| *n.get_ref() as usize);
        let timeouts = self.timeouts(&r.timeout, &r.timeouts, site_timeouts, field);
        let max_body_bytes = self
            .size_opt(&r.max_body_bytes, &format!("{field}.max_body_bytes"))
            .unwrap_or(site_max_body);
        let plugins = self.plugins(&r.plugins, &format!("{field}.plugin"));
        Some(RouteConfig {
            path: path.clone(),
            backend: backend?,
            reverse: r.reverse,
            reverse_cookie_path: r.reverse_cookie_path,
            preserve_host: r.preserve_host.unwrap_or(site_preserve_host),
            timeouts,
            websocket: r.websocket.unwrap_or(true),
            allowed_origins,
            max_tunnels,
            max_body_bytes,
            case_insensitive: r.case_insensitive,
            plugins,
        })
        .filter(|_| path_ok)
    }

    fn backend(
        &mut self,
        raw: &Spanned<String>,
        field: &str,
        ca: Option<PathBuf>,
    ) -> Option<Backend> {
        let text = raw.get_ref();
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => return self.err(raw.span(), field, format!("`{text}` is not a URL: {e}")),
        };
        let (tls, websocket_scheme, default_port) = match uri.scheme_str() {
            Some("http") => (false, false, 80),
            Some("https") => (true, false, 443),
            Some("ws") => (false, true, 80),
            Some("wss") => (true, true, 443),
            _ => {
                return self.err(
                    raw.span(),
                    field,
                    format!("`{text}` must start with http://, https://, ws:// or wss://"),
                )
            }
        };
        let Some(auth) = uri.authority() else {
            return self.err(raw.span(), field, format!("`{text}` has no host"));
        };
        if uri.query().is_some() || text.contains('#') {
            return self.err(
                raw.span(),
                field,
                "a backend URL may not carry a query or fragment",
            );
        }
        if auth.as_str().contains('@') {
            return self.err(
                raw.span(),
                field,
                "credentials in the backend URL are not supported",
            );
        }
        let host = auth.host().to_string();
        let port = auth.port_u16().unwrap_or(default_port);
        if let Some(e) = &self.egress {
            if let Err(why) = super::egress::check_literal(&e.allow, e.own, &e.binds, &host, port) {
                return self.err(
                    raw.span(),
                    field,
                    format!("backend refused by the tenant egress policy: {why}"),
                );
            }
        }
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Some(Backend {
            url: text.clone(),
            tls,
            websocket_scheme,
            authority,
            host,
            port,
            path: if uri.path().is_empty() {
                "/".into()
            } else {
                uri.path().to_string()
            },
            ca,
        })
    }

    fn plugins(&mut self, raw: &[Spanned<RawPlugin>], field: &str) -> Vec<PluginConfig> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, p)| self.plugin(p, &format!("{field}[{i}]")))
            .collect()
    }

    fn plugin(&mut self, raw: &Spanned<RawPlugin>, field: &str) -> Option<PluginConfig> {
        let p = raw.get_ref();
        let source = match (&p.builtin, &p.wasm) {
            (Some(b), None) => {
                if !super::builtins::exists(b.get_ref()) {
                    return self.err(
                        b.span(),
                        &format!("{field}.builtin"),
                        format!(
                            "no built-in plugin is named `{}` (there are: {})",
                            b.get_ref(),
                            super::builtins::NAMES.join(", ")
                        ),
                    );
                }
                PluginSource::Builtin(b.get_ref().clone())
            }
            (None, Some(w)) => PluginSource::Wasm(self.existing_file(w, &format!("{field}.wasm"))?),
            _ => {
                return self.err(
                    raw.span(),
                    field,
                    "a plugin needs exactly one of builtin = \"…\" or wasm = \"…\"",
                )
            }
        };
        if let Some(n) = &p.name {
            if let Err(m) = check_name(n) {
                return self.err(raw.span(), &format!("{field}.name"), m);
            }
        }
        let name = p.name.clone().unwrap_or_else(|| match &source {
            PluginSource::Builtin(n) => n.clone(),
            // A file's stem is the tenant's to choose: it becomes a name only if it is one.
            PluginSource::Wasm(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| check_name(s).is_ok())
                .unwrap_or_else(|| "plugin".into()),
        });
        let on_error = match p
            .on_error
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("deny", _)) => OnError::Deny,
            Some(("allow", _)) => OnError::Allow,
            Some((other, span)) => {
                return self.err(
                    span,
                    &format!("{field}.on_error"),
                    format!("`{other}` is neither \"deny\" nor \"allow\""),
                )
            }
        };
        self.fail_open(p, &source, on_error, field);
        let d = PluginLimits::default();
        let limits = PluginLimits {
            time: self
                .duration_opt(&p.limits.time, &format!("{field}.limits.time"))
                .unwrap_or(d.time),
            memory: self
                .size_opt(&p.limits.memory, &format!("{field}.limits.memory"))
                .unwrap_or(d.memory),
            stack: self
                .size_opt(&p.limits.stack, &format!("{field}.limits.stack"))
                .unwrap_or(d.stack),
            instances: p
                .limits
                .instances
                .as_ref()
                .map_or(d.instances, |n| *n.get_ref() as usize),
        };
        if limits.time.is_zero() || limits.time > Duration::from_secs(10) {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.time"),
                "must be between 1ms and 10s",
            );
        }
        if limits.memory < (1 << 20) || limits.memory > (256 << 20) {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.memory"),
                "must be between 1MiB and 256MiB",
            );
        }
        if limits.stack < (64 << 10) || limits.stack > (8 << 20) {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.stack"),
                "must be between 64KiB and 8MiB",
            );
        }
        // Each distinct stack size needs a wasmtime engine of its own: sizes round up to a few fixed
        // classes, so no config (a tenant's least of all) can make the process create many.
        let limits = PluginLimits {
            stack: super::limits::stack_class(limits.stack),
            ..limits
        };
        if limits.instances == 0 || limits.instances > 64 {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.instances"),
                "must be between 1 and 64",
            );
        }
        let config = match &p.config {
            Some(table) => serde_json::to_value(table).unwrap_or(serde_json::Value::Null),
            None => serde_json::json!({}),
        };
        let (line, col) = self.loc.position(raw.span().start);
        Some(PluginConfig {
            name,
            source,
            config,
            on_error,
            limits,
            files: self.files.clone(),
            confined: self.confine.clone(),
            location: format!("{}:{line}:{col}", self.loc.file.display()),
        })
    }

    /// `on_error = "allow"` on an access-control built-in is a bypass any client that can make the
    /// plugin fail may use; it takes `i_understand_this_disables_auth = true` to be accepted.
    fn fail_open(&mut self, p: &RawPlugin, source: &PluginSource, on_error: OnError, field: &str) {
        let opt_in = p.i_understand_this_disables_auth.as_ref();
        let guard = match source {
            PluginSource::Builtin(n) if super::builtins::ACCESS_CONTROL.contains(&n.as_str()) => {
                Some(n)
            }
            _ => None,
        };
        match (on_error, guard, opt_in.map(|o| (*o.get_ref(), o.span()))) {
            (OnError::Allow, Some(name), None | Some((false, _))) => {
                let span = p.on_error.as_ref().map_or(0..0, |s| s.span());
                self.err::<()>(
                    span,
                    &format!("{field}.on_error"),
                    format!(
                        "`on_error = \"allow\"` on `{name}` lets every request it would refuse through whenever it fails, and a client can make it fail (slow credentials, a crafted header); remove it to fail closed, or add `i_understand_this_disables_auth = true`"
                    ),
                );
            }
            (OnError::Deny, _, Some((true, span))) => {
                self.err::<()>(
                    span,
                    &format!("{field}.i_understand_this_disables_auth"),
                    "only meaningful with `on_error = \"allow\"`",
                );
            }
            _ => {}
        }
    }

    fn timeouts(
        &mut self,
        short: &Option<Spanned<String>>,
        raw: &RawTimeouts,
        base: Timeouts,
        field: &str,
    ) -> Timeouts {
        let dot = if field.is_empty() {
            String::new()
        } else {
            format!("{field}.")
        };
        let shorthand = self.duration_opt(short, &format!("{dot}timeout"));
        Timeouts {
            connect: self
                .duration_opt(&raw.connect, &format!("{dot}timeouts.connect"))
                .unwrap_or(base.connect),
            response: self
                .duration_opt(&raw.response, &format!("{dot}timeouts.response"))
                .or(shorthand)
                .unwrap_or(base.response),
            idle: self
                .duration_opt(&raw.idle, &format!("{dot}timeouts.idle"))
                .or(shorthand)
                .unwrap_or(base.idle),
        }
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        let d = Limits::default();
        let max_header_bytes = self
            .size_opt(&raw.max_header_bytes, "limits.max_header_bytes")
            .unwrap_or(d.max_header_bytes as u64);
        if max_header_bytes < 8192 {
            if let Some(v) = &raw.max_header_bytes {
                self.err::<()>(v.span(), "limits.max_header_bytes", "must be at least 8KiB");
            }
        }
        Limits {
            max_header_bytes: max_header_bytes.max(8192) as usize,
            max_body_bytes: self
                .size_opt(&raw.max_body_bytes, "limits.max_body_bytes")
                .unwrap_or(d.max_body_bytes),
            max_connections: raw
                .max_connections
                .as_ref()
                .map_or(d.max_connections, |n| *n.get_ref() as usize),
            max_connections_per_ip: match &raw.max_connections_per_ip {
                Some(n) if *n.get_ref() == 0 => self.err(
                    n.span(),
                    "limits.max_connections_per_ip",
                    "must be at least 1 (leave it out for no limit)",
                ),
                Some(n) => Some(*n.get_ref() as usize),
                None => None,
            },
            min_rate: self.min_rate(raw),
        }
    }

    /// `min_rate = "1KiB/s"` (bytes per second, with a size unit), judged over `min_rate_window`.
    fn min_rate(&mut self, raw: &RawLimits) -> Option<MinRate> {
        let window = self
            .duration_opt(&raw.min_rate_window, "limits.min_rate_window")
            .unwrap_or(Duration::from_secs(10));
        let Some(rate) = &raw.min_rate else {
            if let Some(w) = &raw.min_rate_window {
                self.err::<()>(
                    w.span(),
                    "limits.min_rate_window",
                    "min_rate_window without min_rate",
                );
            }
            return None;
        };
        let text = rate.get_ref().trim();
        let Some(size) = text.strip_suffix("/s") else {
            return self.err(
                rate.span(),
                "limits.min_rate",
                format!("`{text}` is not a rate: write e.g. \"1KiB/s\""),
            );
        };
        let bytes_per_sec = match super::units::parse_size(size) {
            Ok(0) => return self.err(rate.span(), "limits.min_rate", "must be more than 0/s"),
            Ok(n) => n,
            Err(m) => return self.err(rate.span(), "limits.min_rate", m),
        };
        if window < Duration::from_secs(1) {
            if let Some(w) = &raw.min_rate_window {
                self.err::<()>(w.span(), "limits.min_rate_window", "must be at least 1s");
            }
            return None;
        }
        Some(MinRate {
            bytes_per_sec,
            window,
        })
    }

    fn duration_opt(&mut self, raw: &Option<Spanned<String>>, field: &str) -> Option<Duration> {
        let raw = raw.as_ref()?;
        match parse_duration(raw.get_ref()) {
            Ok(d) => Some(d),
            Err(m) => self.err(raw.span(), field, m),
        }
    }

    fn size_opt(&mut self, raw: &Option<Spanned<SizeValue>>, field: &str) -> Option<u64> {
        let raw = raw.as_ref()?;
        match raw.get_ref().bytes() {
            Ok(n) => Some(n),
            Err(m) => self.err(raw.span(), field, m),
        }
    }

    fn cidr(&mut self, raw: &Spanned<String>, field: &str) -> Option<IpNet> {
        let text = raw.get_ref();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                self.err::<()>(
                    raw.span(),
                    field,
                    format!("`{text}` is not an IP address or CIDR"),
                )
            })
            .ok()
    }

    fn existing_file(&mut self, raw: &Spanned<String>, field: &str) -> Option<PathBuf> {
        if let Some(c) = &self.confine {
            // The name's shape is judged by the scope (absolute, `..`); the file itself is opened
            // beneath the tenant's directory, no symlink followed; the use opens it again so.
            let named = Path::new(raw.get_ref());
            let verdict = match self.files.resolve(raw.get_ref()) {
                Err(r @ (super::FileRefused::Absolute(_) | super::FileRefused::ParentDir(_))) => {
                    Err(r.to_string())
                }
                _ => c.check(named),
            };
            return match verdict {
                Ok(()) => Some(self.base_dir.join(named)),
                Err(m) => self.err(raw.span(), field, m),
            };
        }
        let path = match self.files.resolve(raw.get_ref()) {
            Ok(path) => path,
            Err(refused) => return self.err(raw.span(), field, refused.to_string()),
        };
        if path.is_file() {
            Some(path)
        } else {
            self.err(
                raw.span(),
                field,
                format!("file `{}` does not exist", path.display()),
            )
        }
    }

    /// Two sites on one listener may not claim the same host, and a listener has one default site.
    fn host_conflicts(&mut self, raw: &[Spanned<RawSite>], sites: &[SiteConfig]) {
        let mut owner: HashMap<(String, String), String> = HashMap::new();
        for site in sites {
            let span = raw
                .iter()
                .find(|r| r.get_ref().name.get_ref() == &site.name)
                .map_or(0..0, |r| r.span());
            for l in &site.listeners {
                let mut claims: Vec<String> = site.hosts.clone();
                if site.default {
                    claims.push("(default site)".into());
                }
                for h in claims {
                    if let Some(prev) = owner.insert((l.clone(), h.clone()), site.name.clone()) {
                        self.err::<()>(
                            span.clone(),
                            &format!("site `{}`", site.name),
                            format!(
                                "host `{h}` on listener `{l}` is already claimed by site `{prev}`"
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// `"25%"` of one core → `Some(0.25)`; `"unlimited"` → `None`.
fn parse_cpu_share(text: &str) -> Result<Option<f64>, String> {
    let t = text.trim();
    if t == "unlimited" {
        return Ok(None);
    }
    let pct = t
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| {
            format!("`{t}` is not a share of one core such as \"25%\" (or \"unlimited\")")
        })?;
    if !(1.0..=6400.0).contains(&pct) {
        return Err(format!("`{t}` must be between 1% and 6400% (64 cores)"));
    }
    Ok(Some(pct / 100.0))
}

/// Site and plugin names go into log lines, metric labels and `/status`: letters, digits and
/// `-_.`, starting with a letter or digit, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a name: use letters, digits, `-`, `_` and `.` (starting with a letter or digit, at most 64)",
            wasmgate_core::text::escaped(name)
        ))
    }
}
