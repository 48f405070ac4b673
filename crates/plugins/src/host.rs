//! Loading plugins: the host that compiles and instantiates them for one server, and the owner
//! (site, tenant, budgets) each chain entry belongs to.

use std::path::PathBuf;
use std::sync::Arc;

use crate::chain::Chain;
use crate::instance::LoadedPlugin;
use crate::{caps, cpu, engine, quota};
use wasmgate_config::{ConfigError, PluginConfig, PluginSource};

/// Whose chain a plugin belongs to (for its log lines and its isolation).
#[derive(Clone, Copy)]
pub struct PluginOwner<'a> {
    pub site: &'a str,
    pub tenant: Option<&'a str>,
    /// The tenant's plugin CPU budget, shared by all of its plugins.
    pub cpu: Option<&'a Arc<cpu::CpuBudget>>,
    /// The tenant's live instance quota, shared by all of its plugins.
    pub quota: Option<&'a Arc<quota::InstanceQuota>>,
    /// What each of its chain entries may use beyond computing (see `caps`).
    pub grants: &'a dyn caps::Grants,
}

/// Loads plugin chains. Lives as long as the server.
pub struct PluginHost {
    pub(crate) cache_dir: Option<PathBuf>,
    /// Where plugins' calls, latencies and failures are counted.
    pub(crate) metrics: Arc<wasmgate_observe::metrics::Metrics>,
    pub(crate) engines: engine::Engines,
    /// `verify-password`'s hashing slots, shared by every plugin this host loads.
    pub(crate) hashing: crate::password::HashingPool,
    /// Runs the async instantiate + `init` of plugins being loaded: one small runtime for the
    /// host's life, not one (and a thread) per plugin.
    loader: std::sync::OnceLock<Loader>,
    /// Where heavy tenants' calls run (see `lane.rs`); its threads start at the first such call.
    pub(crate) lane: Arc<crate::lane::Lane>,
    /// Plugins this host loaded, while some runtime still uses them: a reload reuses an entry that
    /// did not change (see [`LoadedPlugin::serves_as`]) with its warm instances and decision cache.
    live: std::sync::Mutex<Vec<(Slot, std::sync::Weak<LoadedPlugin>)>>,
}

/// Where a chain entry sits: (site, chain — a route's path or `""` — and index). An unchanged
/// entry is reused at its own place only: two equal entries of one build stay two plugins, with
/// their own pools and decision caches.
type Slot = (String, String, usize);

/// The loader runtime, shut down without blocking when the host goes (a host may be dropped on
/// an async worker, where dropping a runtime would panic).
struct Loader(Option<tokio::runtime::Runtime>);

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl PluginHost {
    pub fn new(
        cache_dir: Option<PathBuf>,
        metrics: Arc<wasmgate_observe::metrics::Metrics>,
    ) -> Self {
        PluginHost {
            cache_dir: cache_dir.or_else(engine::default_cache_dir),
            metrics,
            engines: engine::Engines::default(),
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(
                crate::password::hashing_slots(),
            )),
            loader: std::sync::OnceLock::new(),
            lane: Arc::default(),
            live: Default::default(),
        }
    }

    /// Compiled components held in memory right now (each is used by some live plugin).
    pub fn components_in_memory(&self) -> usize {
        self.engines.components_in_memory()
    }

    /// Load every plugin of a chain (`chain`: the route's path, `""` for the site's own); errors
    /// name the config entry and the reason.
    pub fn chain(
        &self,
        configs: &[PluginConfig],
        owner: PluginOwner<'_>,
        chain: &str,
    ) -> Result<Chain, Vec<ConfigError>> {
        let mut plugins = Vec::new();
        let mut errors = Vec::new();
        for (c, loaded) in configs.iter().zip(self.load_all(configs, owner, chain)) {
            match loaded {
                Ok((p, kept)) => {
                    let what = if kept {
                        "plugin unchanged: kept with its warm instances"
                    } else {
                        "plugin loaded"
                    };
                    tracing::info!(plugin = %p.name, site = owner.site, tenant = owner.tenant.unwrap_or("-"), digest = %p.digest(), "{what}");
                    plugins.push(p);
                }
                Err(message) => errors.push(ConfigError {
                    file: PathBuf::from(&c.location),
                    position: None,
                    field: format!("plugin `{}` ({})", c.name, describe(&c.source)),
                    message,
                }),
            }
        }
        if errors.is_empty() {
            Ok(Chain { plugins })
        } else {
            Err(errors)
        }
    }

    /// A live plugin that can stand for `c` unchanged (`true`), or a fresh load of it.
    async fn load_or_keep(
        &self,
        c: &PluginConfig,
        owner: PluginOwner<'_>,
        slot: Slot,
    ) -> Result<(Arc<LoadedPlugin>, bool), String> {
        let (bytes, digest) = crate::instance::read_wasm(c)?;
        let caps = owner.grants.capabilities(c, &slot.1, slot.2);
        let candidates: Vec<Arc<LoadedPlugin>> = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.retain(|(_, w)| w.strong_count() > 0);
            live.iter()
                .filter(|(s, _)| *s == slot)
                .filter_map(|(_, w)| w.upgrade())
                .collect()
        };
        // Judged without the lock: `serves_as` reads the files the plugin read.
        let kept = candidates
            .into_iter()
            .find(|p| p.serves_as(c, owner, &digest, &caps.terms));
        if let Some(p) = kept {
            p.relocate(&c.location);
            return Ok((p, true));
        }
        let p = Arc::new(LoadedPlugin::load(c, owner, self, (bytes, digest), caps).await?);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((slot, Arc::downgrade(&p)));
        Ok((p, false))
    }

    /// Load `configs` in order. Called from synchronous config code (often on a blocking thread):
    /// the async instantiate + `init` run on the host's loader runtime, never nested in the
    /// caller's — from inside a runtime (`Server::start` in an async fn), on one scoped thread for
    /// the whole chain.
    fn load_all(
        &self,
        configs: &[PluginConfig],
        owner: PluginOwner<'_>,
        chain: &str,
    ) -> Vec<Result<(Arc<LoadedPlugin>, bool), String>> {
        let run = || {
            let loader = self.loader.get_or_init(|| {
                Loader(
                    tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .ok(),
                )
            });
            let Some(rt) = &loader.0 else {
                return all_failed(configs, "cannot start the plugin loader runtime");
            };
            rt.block_on(async {
                let mut out = Vec::with_capacity(configs.len());
                for (i, c) in configs.iter().enumerate() {
                    let slot = (owner.site.to_string(), chain.to_string(), i);
                    out.push(self.load_or_keep(c, owner, slot).await);
                }
                out
            })
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(run)
                    .join()
                    .unwrap_or_else(|_| all_failed(configs, "plugin loader panicked"))
            })
        } else {
            run()
        }
    }
}

/// Every entry of `configs` refused for the same reason (the loader itself failed).
fn all_failed<T>(configs: &[PluginConfig], why: &str) -> Vec<Result<T, String>> {
    configs.iter().map(|_| Err(why.to_string())).collect()
}

fn describe(source: &PluginSource) -> String {
    match source {
        PluginSource::Builtin(n) => format!("builtin {n}"),
        PluginSource::Wasm(p) => p.display().to_string(),
    }
}
