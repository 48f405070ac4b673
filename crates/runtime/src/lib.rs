//! The live state built from one validated config: host tables, certificates, routes with their
//! upstreams and plugin chains. A reload builds a whole new `Runtime` off the request path and swaps
//! it in atomically; requests already running keep the `Arc` they started with.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

pub mod caps;
pub mod certs;
pub mod forwarded;
mod owners;
pub mod router;
pub mod sites;
mod tenants;
pub mod upstream;

pub use tenants::{TenantHandle, TenantRuntime, TenantShared, TenantSlot};

use crate::forwarded::TrustedProxies;
use crate::router::{lenient_agrees, pick_route, HostTable, Pick};
use crate::sites::{build_sites, BuiltSite};
use crate::upstream::client::{Upstream, UpstreamCache};
use wasmgate_config::{Config, ConfigErrors, RouteConfig, SiteConfig};
use wasmgate_plugins::{Chain, PluginHost};

pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

pub struct Runtime {
    pub config: Arc<Config>,
    /// Listener order is the config's; listeners themselves are bound once at start.
    pub listeners: Vec<ListenerRuntime>,
    /// The operator's sites, then each live tenant's.
    pub sites: Vec<Arc<Site>>,
    pub trusted: TrustedProxies,
    pub tenants: Vec<Arc<TenantRuntime>>,
    /// Why a tenant's latest files were refused (it serves its previous version, if it had one).
    pub tenant_errors: std::collections::BTreeMap<String, String>,
    /// Tenant host → tenant, as this runtime leaves it (recorded by [`Builders::remember_owners`]).
    pub owners: owners::Owners,
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
    /// The site whose certificate a handshake without SNI gets, and the only site such a connection
    /// may reach: the listener's default site, else its first operator site in config order
    /// (Apache's rule). `None` with `tls_reject_unknown_sni`: such handshakes fail.
    pub no_sni_site: Option<usize>,
    /// `tls_reject_unknown_sni`: a name no site lists fails the handshake, default site or not.
    reject_unknown_sni: bool,
}

impl ListenerRuntime {
    /// The site a handshake with this server name (or none) is for.
    pub fn tls_site(&self, sni: Option<&str>) -> Option<usize> {
        match sni {
            Some(name) if self.reject_unknown_sni => self
                .hosts
                .lookup_named(&crate::router::normalise_host(name)),
            Some(name) => self.hosts.lookup(&crate::router::normalise_host(name)),
            None => self.no_sni_site,
        }
    }

    pub fn certificate_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.site_certs.get(self.tls_site(sni)?)?.clone()
    }
}

pub struct Site {
    pub name: Arc<str>,
    /// The tenant that owns this site, with its limits and counters; `None` for the operator's.
    pub tenant: Option<TenantHandle>,
    pub routes: Vec<Arc<Route>>,
    pub plugins: Chain,
    /// Metric handles for requests that match no route.
    pub metrics: Arc<wasmgate_observe::metrics::RouteMetrics>,
    /// Each route's prefix as lenient backends read it (see `wasmgate_core::path::lenient_reading`), in route
    /// order, for [`Site::lenient_agrees`].
    folded: Vec<String>,
    /// Every prefix is its own lenient reading: a path that reads the same leniently (plain lower
    /// case) then selects the same route both ways, and needs no second look.
    plain_prefixes: bool,
}

impl Site {
    fn new(
        name: &str,
        tenant: Option<TenantHandle>,
        routes: Vec<Arc<Route>>,
        plugins: Chain,
        metrics: Arc<wasmgate_observe::metrics::RouteMetrics>,
    ) -> Site {
        let folded: Vec<String> = routes.iter().map(|r| fold_prefix(&r.cfg.path)).collect();
        let plain_prefixes = folded.iter().zip(&routes).all(|(f, r)| *f == r.cfg.path);
        Site {
            name: name.into(),
            tenant,
            routes,
            plugins,
            metrics,
            folded,
            plain_prefixes,
        }
    }

    /// The route for a normalised path (see [`crate::router::pick_route`]).
    pub fn pick(&self, path: &str) -> Pick {
        pick_route(
            self.routes
                .iter()
                .map(|r| (r.cfg.path.as_str(), r.cfg.case_insensitive)),
            path,
        )
    }

    pub fn route(&self, pick: Pick) -> Option<&Arc<Route>> {
        pick.index().map(|i| &self.routes[i])
    }

    /// Does `lenient`, a path as lenient backends read it (normalised again), select the route of
    /// `pick`? `borrowed` says the lenient reading is the path itself.
    pub fn lenient_agrees(&self, lenient: &str, borrowed: bool, pick: Pick) -> bool {
        (borrowed && self.plain_prefixes)
            || lenient_agrees(
                self.folded.iter().map(String::as_str),
                lenient,
                pick.index(),
            )
    }
}

/// A route prefix read as [`wasmgate_core::path::lenient_reading`] reads request paths.
fn fold_prefix(prefix: &str) -> String {
    let read = wasmgate_core::path::lenient_reading(prefix);
    wasmgate_core::path::normalize_path(&read).unwrap_or_else(|_| read.into_owned())
}

pub struct Route {
    pub name: Arc<str>,
    pub cfg: RouteConfig,
    pub upstream: Arc<Upstream>,
    /// How the backend is reached: directly for the operator, through the tenant's egress policy.
    pub connector: crate::upstream::egress::Connector,
    pub plugins: Chain,
    /// Open WebSocket tunnels, for `max_tunnels`.
    pub tunnels: Arc<AtomicUsize>,
    pub metrics: Arc<wasmgate_observe::metrics::RouteMetrics>,
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

/// What the process's shutdown sees: the set of tasks it waits for (connections, tunnels, backend
/// connection drivers) and the signal that draining started. Made here, where the first tasks that
/// need it (backend connections) are built; the serving layer shares the same two.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    pub tasks: tokio_util::task::TaskTracker,
    pub draining: tokio_util::sync::CancellationToken,
}

/// What outlives one runtime: connection pools, the plugin engine, tenants' counters.
pub struct Builders {
    /// The server's metrics: every route, plugin and tenant built here counts into them.
    pub metrics: Arc<wasmgate_observe::metrics::Metrics>,
    pub upstreams: UpstreamCache,
    /// The server's task set and shutdown signal, which backend connections join.
    pub life: Lifecycle,
    /// What plugins may use beyond computing: clock, local store, outbound client.
    pub caps: caps::HostCaps,
    pub plugins: PluginHost,
    pub tenants: tenants::TenantCounters,
    /// The server's bound sockets, which no tenant backend may reach (filled in once bound).
    pub own: Arc<wasmgate_config::egress::OwnAddrs>,
    /// Who owns each tenant host: read from the state directory on first use, then kept here (so a
    /// state directory that cannot be written still gives the right answer within the process).
    owners: std::sync::Mutex<Option<owners::Owners>>,
}

impl Builders {
    pub fn new(
        cache_dir: Option<std::path::PathBuf>,
        metrics: Arc<wasmgate_observe::metrics::Metrics>,
    ) -> Builders {
        let life = Lifecycle::default();
        let upstreams = UpstreamCache::new(life.clone());
        let clock: Arc<dyn wasmgate_plugins::caps::Clock> = Arc::new(caps::SystemClock::new());
        let caps = caps::HostCaps {
            kv: Arc::new(caps::kv::LocalKv::new(clock.clone(), Default::default())),
            clock,
            // Without a CA file nothing is read, and the web PKI roots always make a config.
            client: upstreams
                .get(caps::OUTBOUND_CONNECT_TIMEOUT, None)
                .expect("the web PKI client config builds"),
        };
        Builders {
            upstreams,
            life,
            caps,
            plugins: PluginHost::new(cache_dir, metrics.clone()),
            metrics,
            tenants: Default::default(),
            own: Default::default(),
            owners: Default::default(),
        }
    }

    fn owners(&self, config: &Config) -> owners::Owners {
        let mut o = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        o.get_or_insert_with(|| match &config.tenants {
            Some(t) => owners::load(t.state_dir.as_deref(), &t.dir),
            None => Default::default(),
        })
        .clone()
    }

    /// `rt` went live: its host owners are the record from now on, here and in the state directory.
    pub fn remember_owners(&self, rt: &Runtime) {
        let Some(t) = &rt.config.tenants else {
            return;
        };
        *self.owners.lock().unwrap_or_else(|p| p.into_inner()) = Some(rt.owners.clone());
        if let Some(dir) = &t.state_dir {
            if let Err(e) = owners::save(dir, &t.dir, &rt.owners) {
                tracing::warn!(state_dir = %dir.display(), "cannot record tenant host owners (a restart will not know them): {e}");
            }
        }
    }
}

impl Runtime {
    /// Build everything `run` needs from `config`: certificates are parsed, upstream clients made and
    /// plugins compiled and initialised. Errors in the operator's config are all reported at once and
    /// refuse the whole config; a tenant's errors refuse only that tenant's change (see `tenants.rs`).
    /// `previous` is the running runtime, whose unchanged tenants are reused as they are.
    pub fn build(
        config: Config,
        b: &Builders,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, ConfigErrors> {
        Runtime::build_with(config, b, previous, None)
    }

    /// `wasmgate check --tenant`: build `config` as a reload would if tenant `name`'s directory
    /// became `dir` — the tenants now on disk (with the recorded owners) are the running ones, the
    /// candidate is the change, judged by the same code. Nothing is recorded.
    pub fn check_tenant(
        config: Config,
        b: &Builders,
        name: &str,
        dir: &std::path::Path,
    ) -> Result<Runtime, ConfigErrors> {
        if config.tenants.is_none() {
            return Err(ConfigErrors::single(
                &config.path,
                "tenants_dir",
                "this configuration has no tenants_dir: there is nothing to check a tenant against",
            ));
        }
        let current = Runtime::build(config.clone(), b, None)?;
        *b.owners.lock().unwrap_or_else(|p| p.into_inner()) = Some(current.owners.clone());
        Runtime::build_with(config, b, Some(&current), Some((name, dir)))
    }

    fn build_with(
        config: Config,
        b: &Builders,
        previous: Option<&Runtime>,
        candidate: Option<(&str, &std::path::Path)>,
    ) -> Result<Runtime, ConfigErrors> {
        let operator = build_sites(&config.sites, b, &config.path, None).map_err(ConfigErrors)?;
        let tenants = tenants::build_all(&config, b, previous, &operator, candidate);
        let all: Vec<&BuiltSite> = operator
            .iter()
            .chain(tenants.live.iter().flat_map(|t| t.sites.iter()))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let mut hosts = HostTable::default();
                let mut site_certs = vec![None; all.len()];
                let (mut default, mut first) = (None, None);
                for (si, bs) in all.iter().enumerate() {
                    if !bs.cfg.listeners.contains(&l.name) {
                        continue;
                    }
                    for h in &bs.cfg.hosts {
                        hosts.insert(h, si);
                    }
                    if bs.cfg.default {
                        hosts.set_default(si);
                    }
                    // A tenant's site never answers for a connection that named no site.
                    if bs.cfg.tenant.is_none() && bs.cert.is_some() {
                        first = first.or(Some(si));
                        if bs.cfg.default {
                            default = Some(si);
                        }
                    }
                    site_certs[si] = bs.cert.clone();
                }
                ListenerRuntime {
                    name: l.name.as_str().into(),
                    tls: l.tls,
                    hosts,
                    site_certs,
                    no_sni_site: (l.tls && !l.reject_unknown_sni)
                        .then(|| default.or(first))
                        .flatten(),
                    reject_unknown_sni: l.reject_unknown_sni,
                }
            })
            .collect();
        let sites = all.iter().map(|bs| bs.site.clone()).collect();
        Ok(Runtime {
            trusted: TrustedProxies::new(
                config.trusted_proxies.clone(),
                config.client_address_header,
            ),
            config: Arc::new(config),
            listeners,
            sites,
            tenants: tenants.live,
            tenant_errors: tenants.errors,
            owners: tenants.owners,
        })
    }

    pub fn tenant(&self, name: &str) -> Option<&Arc<TenantRuntime>> {
        self.tenants.iter().find(|t| &*t.name == name)
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
        if let Some(t) = &c.tenants {
            // Tenants' files are the tenants directory's walk (see `tenant_digest`), never read here.
            files.retain(|f| !f.starts_with(&t.dir));
        }
        files.sort();
        files.dedup();
        files
    }

    /// A digest of the tenants directory as it is on disk now (walked safely, within each tenant's
    /// caps): part of the reload fingerprint, so a new tenant or a changed tenant file is a change.
    pub fn tenant_digest(&self) -> String {
        self.config
            .tenants
            .as_ref()
            .map(tenants::disk_digest)
            .unwrap_or_default()
    }

    /// The directories under the tenants directory the watcher should watch (each is one watch).
    pub fn tenant_watch_dirs(&self) -> Vec<std::path::PathBuf> {
        self.config
            .tenants
            .as_ref()
            .map(tenants::watch_dirs)
            .unwrap_or_default()
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
                match (l.tls, l.reject_unknown_sni) {
                    (true, true) => "tls (reject unknown SNI)",
                    (true, false) => "tls",
                    _ => "plain",
                }
            ));
        }
        out.push_str("sites:\n");
        for s in &c.sites {
            describe_site(&mut out, s);
        }
        if let Some(t) = &c.tenants {
            out.push_str(&format!("tenants ({}):\n", t.dir.display()));
            for tenant in &self.tenants {
                out.push_str(&format!(
                    "  tenant {}  digest {}\n",
                    tenant.name,
                    &tenant.fingerprint[..12]
                ));
                for bs in &tenant.sites {
                    describe_site(&mut out, &bs.cfg);
                }
            }
        }
        out
    }
}

fn describe_site(out: &mut String, s: &SiteConfig) {
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
        if r.case_insensitive {
            flags.push("case_insensitive".into());
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
