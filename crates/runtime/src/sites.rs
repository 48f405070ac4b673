//! Building one file's sites: certificates (a tenant's read beneath its directory), each route's
//! upstream client and plugin chains, with every error collected and named by its field.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use wasmgate_config::{ConfigError, RouteConfig, SiteConfig};
use wasmgate_plugins::{Chain, PluginOwner};

use crate::upstream::client::Upstream;
use crate::{caps, Builders, Route, Site, TenantHandle};

/// One site, built: its runtime form plus what the host tables and SNI need.
#[derive(Clone)]
pub struct BuiltSite {
    pub cfg: SiteConfig,
    pub site: Arc<Site>,
    pub cert: Option<Arc<CertifiedKey>>,
}

/// Build sites: parse certificates, get upstream clients, load plugin chains. `field` names the
/// sites in error messages (`site[0]`…); every error is collected.
pub fn build_sites(
    configs: &[SiteConfig],
    b: &Builders,
    file: &std::path::Path,
    tenant: Option<&TenantHandle>,
) -> Result<Vec<BuiltSite>, Vec<ConfigError>> {
    let mut sb = SiteBuild {
        b,
        file,
        tenant,
        // A tenant's files (certificate, key, CA bundle) are opened beneath its directory.
        confined: tenant.and_then(|t| {
            Some(wasmgate_config::tenant_fs::Confined {
                root: file.parent()?.to_path_buf(),
                max_file_bytes: t.limits.files.max_file_bytes,
            })
        }),
        errors: Vec::new(),
        cas: Default::default(),
    };
    let built: Vec<BuiltSite> = configs
        .iter()
        .enumerate()
        .map(|(si, sc)| sb.site(si, sc))
        .collect();
    if sb.errors.is_empty() {
        Ok(built)
    } else {
        Err(sb.errors)
    }
}

/// One file's sites being built, and the errors found so far.
struct SiteBuild<'a> {
    b: &'a Builders,
    file: &'a std::path::Path,
    tenant: Option<&'a TenantHandle>,
    confined: Option<wasmgate_config::tenant_fs::Confined>,
    errors: Vec<ConfigError>,
    /// CA bundles read so far: routes naming the same file share one read (and so one version of
    /// it, even if it is rotated while the build runs).
    cas: std::collections::HashMap<std::path::PathBuf, Vec<u8>>,
}

impl SiteBuild<'_> {
    fn fail(&mut self, field: String, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: None,
            field,
            message,
        });
    }

    /// A file the config names: beneath the tenant's directory for a tenant.
    fn read(&self, path: &std::path::Path) -> Result<Vec<u8>, String> {
        match &self.confined {
            Some(c) => c.read(path),
            None => {
                std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
            }
        }
    }

    fn site(&mut self, si: usize, sc: &SiteConfig) -> BuiltSite {
        let cert = sc.tls.as_ref().and_then(|t| {
            let pair = self.read(&t.cert).and_then(|cert| {
                crate::certs::certified_key_from_pem(&cert, &t.cert, &self.read(&t.key)?, &t.key)
            });
            pair.map_err(|m| self.fail(format!("site[{si}].tls"), m))
                .ok()
                .map(Arc::new)
        });
        let connector = match self.tenant {
            Some(t) => crate::upstream::egress::Connector::Tenant(t.egress.clone()),
            None => crate::upstream::egress::Connector::Operator,
        };
        let grants = caps::HostGrants {
            caps: &self.b.caps,
            site: &sc.name,
            tenant: sc.tenant.as_deref(),
            via: &connector,
        };
        let owner = PluginOwner {
            site: &sc.name,
            tenant: sc.tenant.as_deref(),
            cpu: self.tenant.and_then(|t| t.cpu.as_ref()),
            quota: self.tenant.map(|t| &t.quota),
            grants: &grants,
        };
        let site_plugins = self.chain(&sc.plugins, owner, "");
        let routes = (sc.routes.iter().enumerate())
            .filter_map(|(ri, rc)| self.route(si, ri, sc, rc, owner, &connector))
            .collect();
        let metrics = self.metrics(sc, "-");
        BuiltSite {
            cfg: sc.clone(),
            site: Arc::new(Site::new(
                &sc.name,
                self.tenant.cloned(),
                routes,
                site_plugins,
                metrics,
            )),
            cert,
        }
    }

    fn route(
        &mut self,
        si: usize,
        ri: usize,
        sc: &SiteConfig,
        rc: &RouteConfig,
        owner: PluginOwner<'_>,
        connector: &crate::upstream::egress::Connector,
    ) -> Option<Arc<Route>> {
        // Without its client the build fails: its plugins are not loaded for nothing.
        let upstream = self
            .upstream(rc)
            .map_err(|m| self.fail(format!("site[{si}].route[{ri}].ca"), m))
            .ok()?;
        let plugins = self.chain(&rc.plugins, owner, &rc.path);
        Some(Arc::new(Route {
            name: rc.path.as_str().into(),
            cfg: rc.clone(),
            upstream,
            connector: connector.clone(),
            plugins,
            tunnels: Arc::new(AtomicUsize::new(0)),
            metrics: self.metrics(sc, &rc.path),
        }))
    }

    /// The route's client: for its connect timeout and the bytes of its CA bundle (read as the
    /// operator's, or beneath the tenant's directory, within its file-size cap).
    fn upstream(&mut self, rc: &RouteConfig) -> Result<Arc<Upstream>, String> {
        let Some(path) = &rc.backend.ca else {
            return (self.b.upstreams.get(rc.timeouts.connect, None)).map_err(|e| e.to_string());
        };
        if !self.cas.contains_key(path) {
            let pem = match &self.confined {
                None => crate::certs::read_ca(path).map_err(|e| e.to_string())?,
                Some(c) => c.read(path)?,
            };
            self.cas.insert(path.clone(), pem);
        }
        let ca = Some((path.as_path(), self.cas[path].as_slice()));
        self.b
            .upstreams
            .get(rc.timeouts.connect, ca)
            .map_err(|e| e.to_string())
    }

    fn chain(
        &mut self,
        configs: &[wasmgate_config::PluginConfig],
        owner: PluginOwner<'_>,
        chain: &str,
    ) -> Chain {
        self.b
            .plugins
            .chain(configs, owner, chain)
            .unwrap_or_else(|e| {
                self.errors.extend(e);
                Chain::default()
            })
    }

    fn metrics(
        &self,
        sc: &SiteConfig,
        route: &str,
    ) -> Arc<wasmgate_observe::metrics::RouteMetrics> {
        Arc::new(wasmgate_observe::metrics::RouteMetrics::new(
            &self.b.metrics,
            &sc.name,
            route,
            sc.tenant.as_deref(),
        ))
    }
}
