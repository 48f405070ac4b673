//! Tenants: directories of `tenants_dir`, each with a `tenant.toml` declaring that tenant's sites.
//!
//! Each tenant is loaded on its own. A tenant whose files did not change since the running runtime
//! was built is reused as is — same sites, same warm plugin instances — so a change under
//! `tenants/a/` reloads tenant `a` only. A tenant whose new files fail (parse, validation, a host
//! another tenant or the operator owns, a plugin that does not compile or start) keeps serving its
//! previous version, and the reason is logged and kept for the status report; other tenants are not
//! touched. Counters (in-flight requests and tunnels, refusals) live in [`TenantCounters`] and survive
//! reloads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{build_sites, Builders, BuiltSite, Runtime};
use crate::config::{Config, TenantLimits};
use crate::error::ProxyError;

/// A tenant as it serves now.
pub struct TenantRuntime {
    pub name: Arc<str>,
    /// Digest of every file in the tenant's directory when this version was loaded.
    pub fingerprint: String,
    pub limits: TenantLimits,
    pub sites: Vec<BuiltSite>,
    pub shared: Arc<TenantShared>,
    /// Plugin instance slots reserved for this tenant out of `quota::TENANT_POOL`.
    pub instances: usize,
}

/// Per-tenant counters, kept across reloads.
#[derive(Debug, Default)]
pub struct TenantShared {
    pub requests: AtomicUsize,
    pub tunnels: AtomicUsize,
    pub refused_requests: AtomicU64,
    pub refused_tunnels: AtomicU64,
    /// The tenant's plugin CPU clock (see `plugins::cpu`): debt outlives a reload.
    pub cpu: Arc<crate::plugins::cpu::CpuClock>,
    /// Live plugin instances of every version of the tenant.
    pub instances: Arc<AtomicUsize>,
}

/// What a tenant's site carries on the request path.
#[derive(Clone, Debug)]
pub struct TenantHandle {
    pub name: Arc<str>,
    pub limits: TenantLimits,
    pub shared: Arc<TenantShared>,
    /// What the tenant's backends may reach; every connection of theirs goes through it.
    pub egress: Arc<crate::egress::EgressPolicy>,
    /// The tenant's plugin CPU budget (`None`: unlimited).
    pub cpu: Option<Arc<crate::plugins::cpu::CpuBudget>>,
    pub quota: Arc<crate::plugins::quota::InstanceQuota>,
}

/// Holds one in-flight request (or tunnel) of a tenant; released on drop.
pub struct TenantSlot {
    shared: Arc<TenantShared>,
    tunnel: bool,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let c = if self.tunnel {
            &self.shared.tunnels
        } else {
            &self.shared.requests
        };
        c.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantHandle {
    /// Count a request in, or refuse it (503) when the tenant is at `max_requests`.
    pub fn begin_request(&self) -> Result<TenantSlot, ProxyError> {
        self.take(false, self.limits.max_requests)
    }

    /// Count a tunnel in, or refuse it (503) when the tenant is at `max_tunnels`.
    pub fn begin_tunnel(&self) -> Result<TenantSlot, ProxyError> {
        self.take(true, self.limits.max_tunnels)
    }

    fn take(&self, tunnel: bool, max: usize) -> Result<TenantSlot, ProxyError> {
        let (c, refused) = if tunnel {
            (&self.shared.tunnels, &self.shared.refused_tunnels)
        } else {
            (&self.shared.requests, &self.shared.refused_requests)
        };
        if c.fetch_add(1, Ordering::AcqRel) >= max {
            c.fetch_sub(1, Ordering::AcqRel);
            refused.fetch_add(1, Ordering::Relaxed);
            let what = if tunnel { "tunnels" } else { "requests" };
            crate::metrics::get()
                .tenant_refused
                .get_or_create(&crate::metrics::TenantLabels {
                    tenant: self.name.to_string(),
                    what,
                })
                .inc();
            return Err(ProxyError::TenantLimit {
                tenant: self.name.to_string(),
                what: if tunnel { "tunnels" } else { "requests" },
                max,
            });
        }
        Ok(TenantSlot {
            shared: self.shared.clone(),
            tunnel,
        })
    }
}

/// Counters by tenant name, for the life of the server.
#[derive(Default)]
pub struct TenantCounters(Mutex<HashMap<String, Arc<TenantShared>>>);

impl TenantCounters {
    fn get(&self, name: &str) -> Arc<TenantShared> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

pub(super) struct Outcome {
    pub live: Vec<Arc<TenantRuntime>>,
    pub errors: BTreeMap<String, String>,
}

/// Load every tenant of `config`, reusing unchanged ones from `previous`.
pub(super) fn build_all(
    config: &Config,
    b: &Builders,
    previous: Option<&Runtime>,
    operator: &[BuiltSite],
) -> Outcome {
    let mut out = Outcome {
        live: Vec::new(),
        errors: BTreeMap::new(),
    };
    let Some(tc) = &config.tenants else {
        return out;
    };
    // (listener, host) pairs already served: the operator's first, then tenants in name order.
    let mut claimed: HashMap<(String, String), String> = HashMap::new();
    for s in operator {
        claim(&mut claimed, &s.cfg, "the operator");
    }
    let dirs = tenant_dirs(&tc.dir);
    // Instance slots held now, by tenants that are still there: an incumbent keeps its reservation,
    // whichever names sort first; a changed or new tenant gets what is left of the tenants' pool.
    let mut held: HashMap<String, usize> = previous
        .map(|p| p.tenants.iter())
        .into_iter()
        .flatten()
        .filter(|t| dirs.iter().any(|(n, _)| **n == *t.name))
        .map(|t| (t.name.to_string(), t.instances))
        .collect();
    for (name, dir) in dirs {
        let fingerprint = fingerprint(&dir);
        let others: usize = held
            .iter()
            .filter(|(n, _)| **n != name)
            .map(|(_, k)| k)
            .sum();
        let room = crate::plugins::quota::TENANT_POOL.saturating_sub(others);
        let limits = tc.limits_for(&name);
        let prev = previous.and_then(|p| p.tenant(&name)).cloned();
        let unchanged = prev
            .as_ref()
            .filter(|p| p.fingerprint == fingerprint && p.limits == limits);
        let limits = limits.clone();
        let candidate = match unchanged {
            Some(p) => Ok(p.clone()),
            None => load(config, b, &name, &dir, fingerprint, limits, room),
        };
        let chosen = match candidate {
            Ok(t) => match conflict(&claimed, &t) {
                None => {
                    if unchanged.is_none() {
                        tracing::info!(tenant = %name, digest = %&t.fingerprint[..12], sites = t.sites.len(), "tenant loaded");
                    }
                    Some(t)
                }
                Some(why) => {
                    refuse(&mut out.errors, &name, why, prev.is_some());
                    prev.filter(|p| conflict(&claimed, p).is_none())
                }
            },
            Err(why) => {
                refuse(&mut out.errors, &name, why, prev.is_some());
                prev.filter(|p| conflict(&claimed, p).is_none())
            }
        };
        match &chosen {
            Some(t) => held.insert(name.clone(), t.instances),
            None => held.remove(&name),
        };
        if let Some(t) = chosen {
            for s in &t.sites {
                claim(&mut claimed, &s.cfg, &format!("tenant `{name}`"));
            }
            out.live.push(t);
        }
    }
    out
}

fn refuse(errors: &mut BTreeMap<String, String>, name: &str, why: String, keeps_old: bool) {
    let stays = if keeps_old {
        "its previous version keeps serving"
    } else {
        "it is not served"
    };
    tracing::error!(tenant = %name, "tenant refused; {stays}:\n{why}");
    errors.insert(name.to_string(), why);
}

fn load(
    config: &Config,
    b: &Builders,
    name: &str,
    dir: &Path,
    fingerprint: String,
    limits: TenantLimits,
    room: usize,
) -> Result<Arc<TenantRuntime>, String> {
    let configs = config
        .load_tenant_with(dir, name, &b.own)
        .map_err(|e| e.to_string())?;
    let entries = configs
        .iter()
        .flat_map(|s| {
            s.plugins
                .iter()
                .chain(s.routes.iter().flat_map(|r| r.plugins.iter()))
        })
        .map(|p| p.limits.instances);
    let warm: usize = entries.clone().sum();
    let instances = crate::plugins::quota::InstanceQuota::needed(entries);
    if instances > room {
        return Err(format!(
            "{}: the tenants' share of the plugin instance pool has room for {room} more instances; this tenant's {warm} warm instances need {instances} (what its pools can keep, twice: one set serving, one loading)",
            dir.join("tenant.toml").display()
        ));
    }
    let shared = b.tenants.get(name);
    let handle = TenantHandle {
        name: name.into(),
        egress: Arc::new(crate::egress::EgressPolicy::new(
            name,
            &limits.backends,
            b.own.clone(),
        )),
        cpu: limits.plugin_cpu.map(|share| {
            Arc::new(crate::plugins::cpu::CpuBudget::new(
                name,
                share,
                limits.plugin_time,
                shared.cpu.clone(),
            ))
        }),
        quota: Arc::new(crate::plugins::quota::InstanceQuota {
            live: shared.instances.clone(),
            cap: instances,
        }),
        limits: limits.clone(),
        shared: shared.clone(),
    };
    let sites = build_sites(&configs, b, &dir.join("tenant.toml"), Some(&handle))
        .map_err(|e| crate::config::ConfigErrors(e).to_string())?;
    Ok(Arc::new(TenantRuntime {
        name: name.into(),
        fingerprint,
        limits,
        sites,
        shared,
        instances,
    }))
}

fn claim(
    claimed: &mut HashMap<(String, String), String>,
    site: &crate::config::SiteConfig,
    owner: &str,
) {
    for l in &site.listeners {
        for h in site
            .hosts
            .iter()
            .cloned()
            .chain(site.default.then(|| "(default site)".to_string()))
        {
            claimed
                .entry((l.clone(), h))
                .or_insert_with(|| owner.to_string());
        }
    }
}

fn conflict(claimed: &HashMap<(String, String), String>, t: &TenantRuntime) -> Option<String> {
    let mut seen = HashSet::new();
    for s in &t.sites {
        for l in &s.cfg.listeners {
            for h in s
                .cfg
                .hosts
                .iter()
                .cloned()
                .chain(s.cfg.default.then(|| "(default site)".to_string()))
            {
                if let Some(owner) = claimed.get(&(l.clone(), h.clone())) {
                    return Some(format!("host `{h}` on listener `{l}` belongs to {owner}"));
                }
                seen.insert((l.clone(), h));
            }
        }
    }
    None
}

/// `(name, dir)` of every subdirectory with a `tenant.toml`, by name.
fn tenant_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("tenant.toml").is_file())
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    dirs.sort();
    dirs
}

/// Every regular file below `dir` (symlinks to files included: ConfigMaps are made of them).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if out.len() < 10_000 {
                    stack.push(p);
                }
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn fingerprint(dir: &Path) -> String {
    let mut h = Sha256::new();
    for f in walk(dir) {
        h.update(
            f.strip_prefix(dir)
                .unwrap_or(&f)
                .as_os_str()
                .as_encoded_bytes(),
        );
        h.update(
            std::fs::read(&f)
                .map(|b| Sha256::digest(&b).to_vec())
                .unwrap_or_default(),
        );
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
