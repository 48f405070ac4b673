//! The live state built from one validated config: host tables, certificates, routes with their
//! upstreams and plugin chains. A reload builds a whole new `Runtime` off the request path and swaps
//! it in atomically; requests already running keep the `Arc` they started with.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use crate::config::{Config, ConfigError, ConfigErrors, RouteConfig};
use crate::plugins::{Chain, PluginHost};
use crate::proxy::client::{Upstream, UpstreamCache};
use crate::proxy::headers::TrustedProxies;
use crate::router::{longest_prefix, HostTable};

pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

pub struct Runtime {
    pub config: Arc<Config>,
    /// Listener order is the config's; listeners themselves are bound once at start.
    pub listeners: Vec<ListenerRuntime>,
    pub sites: Vec<Arc<Site>>,
    pub trusted: TrustedProxies,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("sites", &self.sites.len())
            .finish()
    }
}

pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub tls: bool,
    pub hosts: HostTable,
    /// Sites in this table are indices into `Runtime::sites`; kept here for SNI.
    site_certs: Vec<Option<Arc<CertifiedKey>>>,
}

impl ListenerRuntime {
    pub fn certificate_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let site = match sni {
            Some(name) => self.hosts.lookup(&crate::router::normalise_host(name)),
            None => self.hosts.lookup(""),
        }?;
        self.site_certs.get(site)?.clone()
    }
}

pub struct Site {
    pub name: Arc<str>,
    pub routes: Vec<Arc<Route>>,
    pub plugins: Chain,
}

impl Site {
    pub fn route_for(&self, path: &str) -> Option<&Arc<Route>> {
        longest_prefix(self.routes.iter().map(|r| r.cfg.path.as_str()), path)
            .map(|i| &self.routes[i])
    }
}

pub struct Route {
    pub name: Arc<str>,
    pub cfg: RouteConfig,
    pub upstream: Arc<Upstream>,
    pub plugins: Chain,
    /// Open WebSocket tunnels, for `max_tunnels`.
    pub tunnels: Arc<AtomicUsize>,
}

impl Route {
    /// Reserve a tunnel slot, or `None` when the route is at its limit.
    pub fn try_open_tunnel(&self) -> Option<TunnelSlot> {
        let n = self.tunnels.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = self.cfg.max_tunnels {
            if n >= max {
                self.tunnels.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        Some(TunnelSlot(self.tunnels.clone()))
    }
}

/// Frees its tunnel slot when dropped.
pub struct TunnelSlot(Arc<AtomicUsize>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What outlives one runtime: connection pools and the plugin engine.
pub struct Builders {
    pub upstreams: UpstreamCache,
    pub plugins: PluginHost,
}

impl Runtime {
    /// Build everything `run` needs from `config`: certificates are parsed, upstream clients made and
    /// plugins compiled and initialised. All failures are reported at once.
    pub fn build(config: Config, b: &Builders) -> Result<Runtime, ConfigErrors> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let file = config.path.clone();
        let err = |field: String, message: String| ConfigError {
            file: file.clone(),
            position: None,
            field,
            message,
        };

        let mut sites = Vec::new();
        let mut certs = Vec::new();
        for (si, sc) in config.sites.iter().enumerate() {
            let cert = match &sc.tls {
                Some(t) => match crate::tls::load_certified_key(&t.cert, &t.key) {
                    Ok(ck) => Some(Arc::new(ck)),
                    Err(m) => {
                        errors.push(err(format!("site[{si}].tls"), m));
                        None
                    }
                },
                None => None,
            };
            certs.push(cert);
            let site_plugins = b.plugins.chain(&sc.plugins, &sc.name).unwrap_or_else(|e| {
                errors.extend(e);
                Chain::default()
            });
            let mut routes = Vec::new();
            for (ri, rc) in sc.routes.iter().enumerate() {
                let upstream = match b.upstreams.get(rc.timeouts.connect, rc.backend.ca.as_ref()) {
                    Ok(u) => u,
                    Err(m) => {
                        errors.push(err(format!("site[{si}].route[{ri}].ca"), m));
                        continue;
                    }
                };
                let plugins = b.plugins.chain(&rc.plugins, &sc.name).unwrap_or_else(|e| {
                    errors.extend(e);
                    Chain::default()
                });
                routes.push(Arc::new(Route {
                    name: rc.path.as_str().into(),
                    cfg: rc.clone(),
                    upstream,
                    plugins,
                    tunnels: Arc::new(AtomicUsize::new(0)),
                }));
            }
            sites.push(Arc::new(Site {
                name: sc.name.as_str().into(),
                routes,
                plugins: site_plugins,
            }));
        }

        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let mut hosts = HostTable::default();
                let mut site_certs = vec![None; config.sites.len()];
                for (si, sc) in config.sites.iter().enumerate() {
                    if !sc.listeners.contains(&l.name) {
                        continue;
                    }
                    for h in &sc.hosts {
                        hosts.insert(h, si);
                    }
                    if sc.default {
                        hosts.set_default(si);
                    }
                    site_certs[si] = certs[si].clone();
                }
                ListenerRuntime {
                    name: l.name.as_str().into(),
                    tls: l.tls,
                    hosts,
                    site_certs,
                }
            })
            .collect();

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Runtime {
            trusted: TrustedProxies(config.trusted_proxies.clone()),
            config: Arc::new(config),
            listeners,
            sites,
        })
    }

    /// Every file this runtime was built from besides the config file itself.
    pub fn inputs(&self) -> Vec<std::path::PathBuf> {
        let c = &self.config;
        let mut files = Vec::new();
        for s in &c.sites {
            if let Some(t) = &s.tls {
                files.push(t.cert.clone());
                files.push(t.key.clone());
            }
            for r in &s.routes {
                files.extend(r.backend.ca.clone());
            }
        }
        for site in &self.sites {
            site.plugins.inputs(&mut files);
            for r in &site.routes {
                r.plugins.inputs(&mut files);
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// A human-readable table of sites and routes, for `wasmgate check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        out.push_str("listeners:\n");
        for l in &c.listeners {
            out.push_str(&format!(
                "  {:<12} {:<22} {}\n",
                l.name,
                l.bind,
                if l.tls { "tls" } else { "plain" }
            ));
        }
        out.push_str("sites:\n");
        for s in &c.sites {
            let hosts = if s.hosts.is_empty() {
                "-".to_string()
            } else {
                s.hosts.join(", ")
            };
            let default = if s.default { " (default)" } else { "" };
            out.push_str(&format!(
                "  {}{default}  hosts: {hosts}  listeners: {}\n",
                s.name,
                s.listeners.join(", ")
            ));
            for p in &s.plugins {
                out.push_str(&format!("    plugin {}\n", p.name));
            }
            let mut routes: Vec<_> = s.routes.iter().collect();
            routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
            for r in routes {
                let mut flags = Vec::new();
                if r.preserve_host {
                    flags.push("preserve_host".to_string());
                }
                if r.reverse {
                    flags.push("reverse".into());
                }
                if !r.websocket {
                    flags.push("no-websocket".into());
                }
                flags.push(format!("timeout={}s", r.timeouts.response.as_secs_f64()));
                let plugins: Vec<&str> = r.plugins.iter().map(|p| p.name.as_str()).collect();
                if !plugins.is_empty() {
                    flags.push(format!("plugins=[{}]", plugins.join(", ")));
                }
                out.push_str(&format!(
                    "    {:<16} -> {:<36} {}\n",
                    r.path,
                    r.backend.url,
                    flags.join(" ")
                ));
            }
        }
        out
    }
}
