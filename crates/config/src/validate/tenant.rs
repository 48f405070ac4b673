//! A tenant's file: what it may claim (granted hosts, no default site), what it may ask for
//! (limits under the operator's caps), and the operator's `[tenants]` table that sets those.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::hosts;
use crate::model::*;
use crate::raw::*;
use crate::tenant_fs::{Confined, FileCaps};

use super::{Egress, Validator};

impl<'a> Validator<'a> {
    /// A validator for tenant `name`'s `tenant.toml` at `file`.
    pub fn for_tenant(file: &'a Path, text: &'a str, name: &str, caps: &TenantLimits) -> Self {
        let mut v = Validator::new(file, text);
        v.files = crate::FileScope::tenant(&v.base_dir);
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
        own: &'a crate::egress::OwnAddrs,
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
    pub(super) fn tenant_claims(&mut self, raw: &[Spanned<RawSite>], grants: Option<&Vec<String>>) {
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
    pub(super) fn tenant_caps(
        &mut self,
        raw: &RawTenant,
        sites: &[SiteConfig],
        caps: &TenantLimits,
    ) {
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

    pub(super) fn tenants(&mut self, raw: &RawConfig) -> Option<TenantsConfig> {
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
    pub(super) fn host_grants(
        &mut self,
        raw: &RawConfig,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
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

    pub(super) fn tenant_limits(
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
                    .filter_map(|(i, e)| match crate::egress::Allow::parse(e.get_ref()) {
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
                crate::limits::TENANT_INSTANCES_MAX,
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
    pub(super) fn count(
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

    pub(super) fn file_caps(
        &mut self,
        r: &RawTenantLimits,
        base: FileCaps,
        field: &str,
    ) -> FileCaps {
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
