//! Tenants: directories of `tenants_dir`, each with a `tenant.toml` declaring that tenant's sites.
//!
//! Each tenant is loaded on its own. A tenant whose files and operator inputs (its limits, grants,
//! the listeners, the operator's default timeouts and limits) did not change since the running
//! runtime was built is reused as is — same sites, same warm plugin instances — so a change under
//! `tenants/a/` reloads tenant `a` only, and an operator change reaches every tenant. A tenant whose
//! new files fail (parse, validation, file caps, a host another tenant or the operator owns, a plugin
//! that does not compile or start) keeps serving its previous version, and the reason is logged and
//! kept for the status report; other tenants are not touched. Counters (in-flight requests and
//! tunnels, refusals) live in [`TenantCounters`] and survive reloads.
//!
//! Host ownership is decided by rule, never by the order of directory names: a claim that overlaps
//! an operator host is refused (unless the operator's grant hands that host to the tenant and the
//! operator's own is a wider wildcard); between tenants, the one the operator granted the host wins,
//! then the recorded owner (the one serving it, remembered in the state directory across restarts
//! and handovers); with neither, or both, the host goes to no one and each contender keeps its
//! previous version, or is not served.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::owners::Owners;
use super::sites::{build_sites, BuiltSite};
use super::{Builders, Runtime};
use wasmgate_config::hosts::{covers, overlap};
use wasmgate_config::tenant_fs::{self, FileCaps};
use wasmgate_config::{Config, TenantLimits};
use wasmgate_core::error::ProxyError;

/// A tenant as it serves now.
pub struct TenantRuntime {
    pub name: Arc<str>,
    /// Digest of every file in the tenant's directory when this version was loaded.
    pub fingerprint: String,
    /// Digest of the operator's settings this version was built with (see [`operator_inputs`]).
    pub inputs: String,
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
    pub cpu: Arc<wasmgate_plugins::cpu::CpuClock>,
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
    pub egress: Arc<crate::upstream::egress::EgressPolicy>,
    /// The tenant's plugin CPU budget (`None`: unlimited).
    pub cpu: Option<Arc<wasmgate_plugins::cpu::CpuBudget>>,
    pub quota: Arc<wasmgate_plugins::quota::InstanceQuota>,
    /// `wasmgate_tenant_refused_total` for requests and tunnels.
    refused: [prometheus_client::metrics::counter::Counter; 2],
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
            self.refused[usize::from(tunnel)].inc();
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

impl TenantRuntime {
    /// The host patterns this version claims, on any listener.
    pub fn claims(&self) -> Vec<&str> {
        let mut c: Vec<&str> = self
            .sites
            .iter()
            .flat_map(|s| s.cfg.hosts.iter().map(String::as_str))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// Where `claim` is written (`file:line:col`), for messages.
    fn location(&self, claim: &str) -> String {
        self.sites
            .iter()
            .flat_map(|s| s.cfg.hosts.iter().zip(&s.cfg.host_locations))
            .find(|(h, _)| *h == claim)
            .map_or_else(|| format!("tenant `{}`", self.name), |(_, at)| at.clone())
    }
}

pub(super) struct Outcome {
    pub live: Vec<Arc<TenantRuntime>>,
    pub errors: BTreeMap<String, String>,
    /// The owners to record after this build: live tenants' claims, plus the records of tenants
    /// that have a directory but are not served now (a broken tenant does not lose its hosts).
    pub owners: Owners,
}

/// One tenant during a build: the versions it could serve, best first, and why any were refused.
struct Contender {
    name: String,
    /// The new version first (if it loaded), then the previous one (if it differs).
    versions: Vec<Arc<TenantRuntime>>,
    choice: usize,
    changed: bool,
    had_previous: bool,
    why: Vec<String>,
}

impl Contender {
    fn chosen(&self) -> Option<&Arc<TenantRuntime>> {
        self.versions.get(self.choice)
    }
}

/// Load every tenant of `config`, reusing unchanged ones from `previous`, and settle who owns which
/// host (see the module doc).
pub(super) fn build_all(
    config: &Config,
    b: &Builders,
    previous: Option<&Runtime>,
    operator: &[BuiltSite],
    candidate: Option<(&str, &Path)>,
) -> Outcome {
    let mut out = Outcome {
        live: Vec::new(),
        errors: BTreeMap::new(),
        owners: Owners::new(),
    };
    let Some(tc) = &config.tenants else {
        return out;
    };
    let records = b.owners(config);
    let mut contenders = Vec::new();
    let (mut dirs, bad_names) = tenant_dirs(&tc.dir);
    if let Some((name, dir)) = candidate {
        // `wasmgate check --tenant`: this directory stands for tenant `name`, as if it had landed.
        dirs.retain(|(n, _)| n != name);
        dirs.push((name.to_string(), dir.to_path_buf()));
        dirs.sort();
    }
    for bad in bad_names {
        let why = format!(
            "{}: a tenant directory's name must be a name (letters, digits, `-`, `_`, `.`; at most 64)",
            wasmgate_core::text::escaped(&bad)
        );
        tracing::error!("tenant directory ignored: {why}");
        out.errors
            .insert(wasmgate_core::text::escaped(&bad).into_owned(), why);
    }
    // Instance slots held now, by tenants that are still there: an incumbent keeps its reservation,
    // whichever names sort first; a changed or new tenant gets what is left of the tenants' pool.
    let mut held: HashMap<String, usize> = previous
        .map(|p| p.tenants.iter())
        .into_iter()
        .flatten()
        .filter(|t| dirs.iter().any(|(n, _)| **n == *t.name))
        .map(|t| (t.name.to_string(), t.instances))
        .collect();
    for (name, dir) in &dirs {
        let others: usize = held
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(_, k)| k)
            .sum();
        let room = wasmgate_plugins::quota::TENANT_POOL.saturating_sub(others);
        let prev = previous.and_then(|p| p.tenant(name)).cloned();
        let mut c = contender(config, b, tc, (name, dir), room, prev.clone());
        if let Some(t) = c.versions.first() {
            held.insert(name.clone(), t.instances);
        }
        if let Some(p) = prev {
            if !c.versions.iter().any(|v| Arc::ptr_eq(v, &p)) {
                c.versions.push(p);
            }
        }
        contenders.push(c);
    }
    settle(&mut contenders, operator, tc, &records);
    report(&contenders, &dirs, &records, &mut out);
    out
}

/// The settled versions as the runtime takes them: who serves, who owns which host (an owner whose
/// directory is there but unserved keeps its hosts), and each refusal with its reason.
fn report(
    contenders: &[Contender],
    dirs: &[(String, std::path::PathBuf)],
    records: &Owners,
    out: &mut Outcome,
) {
    let served: std::collections::HashSet<&str> = contenders
        .iter()
        .filter(|c| c.chosen().is_some())
        .map(|c| c.name.as_str())
        .collect();
    let present: std::collections::HashSet<&str> = dirs.iter().map(|(n, _)| n.as_str()).collect();
    for (host, owner) in records {
        if present.contains(owner.as_str()) && !served.contains(owner.as_str()) {
            out.owners.insert(host.clone(), owner.clone());
        }
    }
    for c in contenders {
        let took_new = c.changed && c.choice == 0 && c.why.is_empty();
        match c.chosen() {
            Some(t) if took_new => {
                tracing::info!(tenant = %c.name, digest = %&t.fingerprint[..12], sites = t.sites.len(), "tenant loaded");
            }
            Some(_) if c.why.is_empty() => {}
            Some(_) => refuse(
                &mut out.errors,
                &c.name,
                &c.why,
                "its previous version keeps serving",
            ),
            None if c.had_previous && !c.changed => {
                refuse(&mut out.errors, &c.name, &c.why, "it is no longer served")
            }
            None => refuse(&mut out.errors, &c.name, &c.why, "it is not served"),
        }
        if let Some(t) = c.chosen() {
            for h in t.claims() {
                out.owners.insert(h.to_string(), c.name.clone());
            }
            out.live.push(t.clone());
        }
    }
}

/// One tenant's versions to choose from: the new one, if its directory changed and it loads (or
/// why not), then the one serving now.
fn contender(
    config: &Config,
    b: &Builders,
    tc: &wasmgate_config::TenantsConfig,
    (name, dir): (&String, &Path),
    room: usize,
    prev: Option<Arc<TenantRuntime>>,
) -> Contender {
    let limits = tc.limits_for(name);
    let inputs = operator_inputs(config, name, &limits);
    let mut c = Contender {
        name: name.clone(),
        versions: Vec::new(),
        choice: 0,
        changed: true,
        had_previous: prev.is_some(),
        why: Vec::new(),
    };
    match tenant_fs::walk(dir, &limits.files) {
        Err(why) => c.why.push(format!("{}: {why}", dir.display())),
        Ok(walked) => {
            let unchanged = prev
                .as_ref()
                .filter(|p| p.fingerprint == walked.digest && p.inputs == inputs);
            match unchanged {
                Some(p) => {
                    c.changed = false;
                    c.versions.push(p.clone());
                }
                None => match load(
                    config,
                    b,
                    name,
                    dir,
                    Digests {
                        files: walked.digest,
                        operator: inputs,
                    },
                    limits,
                    room,
                ) {
                    Ok(t) => c.versions.push(t),
                    Err(why) => c.why.push(why),
                },
            }
        }
    }
    c
}

/// Choose each tenant's version so that no two claims overlap. Every conflict is judged on its own
/// (grant, then record): each loser falls back to its next version, and the round repeats until no
/// claim conflicts. Losers of a round all fall back together, so the result does not depend on the
/// order the tenants are looked at.
fn settle(
    contenders: &mut [Contender],
    operator: &[BuiltSite],
    tc: &wasmgate_config::TenantsConfig,
    records: &Owners,
) {
    let judge = Judge {
        operator,
        tc,
        records,
        present: contenders.iter().map(|c| c.name.clone()).collect(),
    };
    loop {
        let losers: Vec<(usize, String, String)> = (0..contenders.len())
            .filter_map(|i| judge.first_conflict(i, contenders).map(|(c, w)| (i, c, w)))
            .collect();
        if losers.is_empty() {
            return;
        }
        for (i, claim, why) in losers {
            let c = &mut contenders[i];
            let which = if c.changed && c.choice == 0 {
                "its new version"
            } else {
                "its previous version"
            };
            let at = c.chosen().map(|v| v.location(&claim)).unwrap_or_default();
            c.why.push(format!("{at}: {which}: {why}"));
            c.choice += 1;
        }
    }
}

/// Who a contested host goes to: the operator's hosts are the operator's; between tenants a grant
/// outranks a record, and a record is one of an incumbent.
struct Judge<'a> {
    operator: &'a [BuiltSite],
    tc: &'a wasmgate_config::TenantsConfig,
    records: &'a Owners,
    /// Tenants with a directory now.
    present: std::collections::HashSet<String>,
}

impl Judge<'_> {
    fn granted(&self, tenant: &str, claim: &str) -> bool {
        self.tc
            .grants
            .get(tenant)
            .is_some_and(|g| g.iter().any(|p| covers(p, claim)))
    }

    fn owns(&self, tenant: &str, claim: &str) -> bool {
        self.records.get(claim).is_some_and(|o| o == tenant)
    }

    fn rank(&self, tenant: &str, claim: &str) -> u8 {
        2 * u8::from(self.granted(tenant, claim)) + u8::from(self.owns(tenant, claim))
    }

    fn why_rank(&self, tenant: &str, claim: &str) -> &'static str {
        match (self.granted(tenant, claim), self.owns(tenant, claim)) {
            (true, _) => "the operator granted it",
            (false, true) => "it already owns it",
            _ => "",
        }
    }

    /// The first claim of contender `i`'s chosen version that it may not have, and why.
    fn first_conflict(&self, i: usize, contenders: &[Contender]) -> Option<(String, String)> {
        let c = &contenders[i];
        let v = c.chosen()?;
        v.claims().into_iter().find_map(|claim| {
            let why = self
                .operator_conflict(&c.name, claim)
                .or_else(|| self.record_conflict(&c.name, claim, contenders))
                .or_else(|| self.tenant_conflict(i, claim, contenders))?;
            Some((claim.to_string(), why))
        })
    }

    /// The operator's hosts, on any listener (a wider wildcard yields to a grant).
    fn operator_conflict(&self, tenant: &str, claim: &str) -> Option<String> {
        let o = self
            .operator
            .iter()
            .flat_map(|s| s.cfg.hosts.iter())
            .find(|o| {
                let wider = o.starts_with("*.") && *o != claim;
                overlap(claim, o) && !(wider && self.granted(tenant, claim))
            })?;
        Some(format!("host `{claim}` belongs to the operator (`{o}`)"))
    }

    /// Recorded owners that are not served now but still have their directory.
    fn record_conflict(
        &self,
        tenant: &str,
        claim: &str,
        contenders: &[Contender],
    ) -> Option<String> {
        let (host, owner) = self.records.iter().find(|(host, owner)| {
            let absent = !contenders
                .iter()
                .any(|o| &o.name == *owner && o.chosen().is_some());
            *owner != tenant
                && absent
                && self.present.contains(*owner)
                && overlap(claim, host)
                && self.rank(tenant, claim) <= self.rank(owner, host)
        })?;
        Some(format!(
            "host `{claim}` belongs to tenant `{owner}` (recorded owner of `{host}`)"
        ))
    }

    /// Other tenants' chosen versions.
    fn tenant_conflict(&self, i: usize, claim: &str, contenders: &[Contender]) -> Option<String> {
        let me = &contenders[i].name;
        for (j, other) in contenders.iter().enumerate() {
            let Some(ov) = other.chosen().filter(|_| j != i) else {
                continue;
            };
            for theirs in ov.claims().into_iter().filter(|t| overlap(claim, t)) {
                let (mine, their) = (self.rank(me, claim), self.rank(&other.name, theirs));
                if mine > their {
                    continue;
                }
                return Some(if mine < their {
                    format!(
                        "host `{claim}` belongs to tenant `{}` ({}: `{theirs}`)",
                        other.name,
                        self.why_rank(&other.name, theirs)
                    )
                } else {
                    format!(
                        "host `{claim}` is also claimed by tenant `{}` (`{theirs}`); neither {}, so it goes to neither",
                        other.name,
                        if mine == 0 { "has a grant nor owns it" } else { "outranks the other" }
                    )
                });
            }
        }
        None
    }
}

fn refuse(errors: &mut BTreeMap<String, String>, name: &str, why: &[String], stays: &str) {
    // One line per reason, each with the tenant's name: the log can be grepped by tenant, and every
    // reason is one line (`ConfigError` escapes what it quotes).
    tracing::error!(tenant = %name, "tenant refused; {stays}");
    for reason in why.iter().flat_map(|w| w.lines()) {
        tracing::error!(tenant = %name, "tenant refused: {reason}");
    }
    errors.insert(name.to_string(), format!("{}\n({stays})", why.join("\n")));
}

/// What of the operator's config shapes a tenant besides its own files: a change here rebuilds the
/// tenant even though its directory is untouched (plugins come from the compiled-component cache).
fn operator_inputs(config: &Config, name: &str, limits: &TenantLimits) -> String {
    let tc = config.tenants.as_ref();
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        limits,
        tc.and_then(|t| t.grants.get(name)),
        config.listeners,
        config.default_timeouts,
        config.limits.max_body_bytes,
    );
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a tenant version is built from, by digest: its directory's files, and the operator's
/// settings for it (see [`operator_inputs`]).
struct Digests {
    files: String,
    operator: String,
}

fn load(
    config: &Config,
    b: &Builders,
    name: &str,
    dir: &Path,
    digests: Digests,
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
    let instances = wasmgate_plugins::quota::InstanceQuota::needed(entries);
    if instances > room {
        return Err(format!(
            "{}: the tenants' share of the plugin instance pool has room for {room} more instances; this tenant's {warm} warm instances need {instances} (what its pools can keep, twice: one set serving, one loading)",
            dir.join("tenant.toml").display()
        ));
    }
    let shared = b.tenants.get(name);
    let handle = TenantHandle {
        name: name.into(),
        egress: Arc::new(crate::upstream::egress::EgressPolicy::new(
            name,
            &limits.backends,
            b.own.clone(),
            &b.metrics,
        )),
        cpu: limits.plugin_cpu.map(|share| {
            Arc::new(wasmgate_plugins::cpu::CpuBudget::new(
                name,
                share,
                limits.plugin_time,
                shared.cpu.clone(),
                &b.metrics,
            ))
        }),
        refused: ["requests", "tunnels"].map(|what| {
            b.metrics
                .tenant_refused
                .get_or_create(&wasmgate_observe::metrics::TenantLabels {
                    tenant: name.to_string(),
                    what,
                })
                .clone()
        }),
        quota: Arc::new(wasmgate_plugins::quota::InstanceQuota {
            live: shared.instances.clone(),
            cap: instances,
        }),
        limits: limits.clone(),
        shared: shared.clone(),
    };
    let sites = build_sites(&configs, b, &dir.join("tenant.toml"), Some(&handle))
        .map_err(|e| wasmgate_config::ConfigErrors(e).to_string())?;
    Ok(Arc::new(TenantRuntime {
        name: name.into(),
        fingerprint: digests.files,
        inputs: digests.operator,
        limits,
        sites,
        shared,
        instances,
    }))
}

/// `(name, dir)` of every subdirectory with a `tenant.toml`, by name, and the names that are not
/// names. Entries of the tenants directory itself are the operator's (a symlink there is a mount).
fn tenant_dirs(root: &Path) -> (Vec<(String, PathBuf)>, Vec<String>) {
    let mut dirs = Vec::new();
    let mut bad = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `..data` and friends: Kubernetes' own entries.
        if name.starts_with('.') || !e.path().is_dir() {
            continue;
        }
        if std::fs::symlink_metadata(e.path().join("tenant.toml")).is_err() {
            continue;
        }
        match wasmgate_config::check_name(&name) {
            Ok(()) => dirs.push((name, e.path())),
            Err(_) => bad.push(name),
        }
    }
    dirs.sort();
    bad.sort();
    (dirs, bad)
}

/// Every tenant directory under `root` (with or without a `tenant.toml` yet) with its file caps.
fn all_dirs(tc: &wasmgate_config::TenantsConfig) -> Vec<(PathBuf, FileCaps)> {
    let mut out: Vec<(PathBuf, FileCaps)> = std::fs::read_dir(&tc.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && e.path().is_dir())
        .map(|e| {
            let caps = tc.limits_for(&e.file_name().to_string_lossy()).files;
            (e.path(), caps)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A digest of every tenant directory as it is on disk now, walked within each tenant's caps (a
/// directory over its caps digests as its error, which changes when it does).
pub fn disk_digest(tc: &wasmgate_config::TenantsConfig) -> String {
    let mut h = Sha256::new();
    for (dir, caps) in all_dirs(tc) {
        h.update(dir.as_os_str().as_encoded_bytes());
        match tenant_fs::walk(&dir, &caps) {
            Ok(w) => h.update(w.digest.as_bytes()),
            Err(e) => h.update(e.as_bytes()),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The directories to watch under the tenants directory: the root, and each tenant's directories up
/// to its `max_dirs` (one inotify watch each; symlinks are never followed into).
pub fn watch_dirs(tc: &wasmgate_config::TenantsConfig) -> Vec<PathBuf> {
    let mut out = vec![tc.dir.clone()];
    for (dir, caps) in all_dirs(tc) {
        match tenant_fs::walk(&dir, &caps) {
            Ok(w) => out.extend(w.dirs),
            // Over its caps: the tenant's top directory still, so fixing it is seen.
            Err(_) => out.push(dir),
        }
    }
    out
}
