//! Hot reload: watch the config file and every file it references (certificates, CA bundles, wasm,
//! files plugins read), debounce, and swap in a new runtime when their content really changed. A
//! config or plugin that fails to load is refused with its errors logged; the running one stays.
//!
//! Directories are watched rather than files, so editors' write-to-temp-then-rename and Kubernetes
//! ConfigMap `..data` symlink swaps are both seen; the content fingerprint filters out the noise.
//!
//! [`Shared`] is the control state a reload works on (builders, status) around the pipeline's
//! [`ServeCtx`]; the pipeline never sees it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

use wasmgate_config::{Config, ConfigErrors};
use wasmgate_proxy::ctx::ServeCtx;
use wasmgate_runtime::{Builders, Runtime};

/// Quiet time after the last file event before a reload is attempted.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Reloads one server from one config file. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    pub shared: Arc<Shared>,
    pub path: PathBuf,
}

impl Reloader {
    /// Read the config file and swap it in; errors leave the running config in place. Returns the
    /// restart-only settings that differ from the ones the process started with, and — either way
    /// — the digest of the inputs as judged (read once, off the async workers, after the swap).
    pub async fn reload(&self) -> (Result<Vec<&'static str>, ConfigErrors>, String) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = Config::load(&this.path).and_then(|config| this.shared.reload(config));
            if result.is_err() && this.shared.serve.runtime.load().config.tenants.is_some() {
                // The operator's file is refused, but tenants reload on their own regardless.
                let _ = this.shared.reload_tenants();
            }
            let digest = fingerprint(&this.path, &this.shared.serve.runtime.load());
            (result, digest)
        })
        .await
        .unwrap_or_else(|e| {
            let failed = ConfigErrors::single(&self.path, "", format!("reload task failed: {e}"));
            (Err(failed), String::new())
        })
    }

    /// Reload and log the outcome (and count it for `/status` and `/metrics`).
    pub async fn reload_and_log(&self, why: &str) -> bool {
        let (result, digest) = self.reload().await;
        self.shared.publish(result.is_ok().then(|| digest.clone()));
        {
            let mut st = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(pending) => {
                    st.reloads_ok += 1;
                    st.restart_pending = pending.iter().map(|s| s.to_string()).collect();
                }
                Err(e) => {
                    st.reloads_failed += 1;
                    st.last_error = Some(e.to_string());
                }
            }
        }
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.shared
            .serve
            .metrics
            .reloads
            .get_or_create(&wasmgate_observe::metrics::ResultLabels { result: outcome })
            .inc();
        match result {
            Ok(pending) => {
                tracing::info!(config = %self.path.display(), digest = %digest.get(..12).unwrap_or("-"), trigger = why, "configuration reloaded");
                if !pending.is_empty() {
                    tracing::warn!(
                        config = %self.path.display(),
                        "not applied until a restart (or a SIGUSR2 handover): {}; the process keeps the values it started with",
                        pending.join(", ")
                    );
                }
                true
            }
            Err(errors) => {
                tracing::error!(
                    config = %self.path.display(),
                    trigger = why,
                    "reload refused; the running configuration stays:\n{errors}"
                );
                false
            }
        }
    }

    /// The digest of the config and every file it names, read on a blocking thread.
    async fn fingerprint(&self) -> String {
        let (path, rt) = (self.path.clone(), self.shared.serve.runtime.load_full());
        tokio::task::spawn_blocking(move || fingerprint(&path, &rt))
            .await
            .unwrap_or_default()
    }

    /// Watch the files behind the running config until the server shuts down.
    /// The digest of what is live is taken before this returns: a change made after it is seen.
    pub async fn watch(self) -> notify::Result<tokio::task::JoinHandle<()>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(ev.paths);
                }
            }
        })?;
        let mut dirs = WatchedDirs::default();
        let mut watched = Watched::of(&self.path, &self.shared.serve.runtime.load());
        dirs.sync(&mut watcher, &watched);
        let mut last = self.fingerprint().await;
        tracing::info!(digest = %last.get(..12).unwrap_or("-"), dirs = dirs.0.len(), "watching configuration for changes");
        Ok(tokio::spawn(async move {
            let draining = self.shared.serve.draining.clone();
            loop {
                let paths = tokio::select! {
                    ev = rx.recv() => match ev { Some(p) => p, None => return },
                    _ = draining.cancelled() => return,
                };
                // Other files in the same directories (a log file, say) are not worth a look.
                if !paths.iter().any(|p| watched.contains(p)) {
                    continue;
                }
                // Debounce: wait until events stop for a moment.
                while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let now = self.fingerprint().await;
                if now != last {
                    self.reload_and_log("file change").await;
                    // Whether it loaded or not, this content has been judged; wait for the next
                    // change. The digest taken *before* the build: a write landing while it runs
                    // then differs from it and is reloaded too (a digest taken after the build
                    // would fold that write in, unapplied).
                    last = now;
                }
                // Even with the content unchanged, a `..data` swap moved the files' real location:
                // watch where they are now.
                watched = Watched::of(&self.path, &self.shared.serve.runtime.load());
                dirs.sync(&mut watcher, &watched);
            }
        }))
    }
}

/// Which event paths can change the configuration, and the directories to watch for them.
///
/// Events name a file as `<watched directory>/<entry>`, and every directory is watched under its
/// canonical name, so a file is known by canonical names: where it really is (an edit, an editor's
/// rename-over or a `rm` shows up there) and every symlink met on the way to it (re-pointing one is a
/// change too). Comparing canonical names makes a relative `--config`, `./` and symlinked
/// directories all agree. The names are computed while the files exist, so a deletion still matches.
///
/// A Kubernetes ConfigMap volume holds `name -> ..data/name` and `..data -> ..2024_01_01_00_00_00.1`;
/// an update writes a new timestamped directory and renames a new `..data` over the old one (an event
/// on `..data`, a symlink on the way), then deletes the old directory. Where the files really are is
/// different after every swap, so the names are recomputed after each batch of events.
#[derive(Debug, Default)]
struct Watched {
    names: BTreeSet<PathBuf>,
    /// Directories to watch (non-recursively), canonical.
    dirs: BTreeSet<PathBuf>,
    /// The tenants directory, canonical: any event under it is relevant.
    tenants: Option<PathBuf>,
    /// The tenants directory and each tenant's directories, watched one by one within the tenant's
    /// caps: a recursive watch would follow a tenant's 100k directories for everyone's inotify budget.
    /// A directory created later is seen by its parent's watch and added after the reload it triggers.
    tenant_dirs: Vec<PathBuf>,
}

impl Watched {
    fn of(config: &Path, rt: &Runtime) -> Watched {
        let tenants = rt.config.tenants.as_ref().map(|t| t.dir.as_path());
        let mut w = Watched::files(
            std::iter::once(config.to_path_buf()).chain(rt.inputs()),
            tenants,
        );
        w.tenant_dirs = rt.tenant_watch_dirs();
        w
    }

    fn files(files: impl IntoIterator<Item = PathBuf>, tenants: Option<&Path>) -> Watched {
        let mut w = Watched {
            tenants: tenants.map(|t| resolve(t).real),
            ..Watched::default()
        };
        for file in files {
            let Resolved { real, links } = resolve(&file);
            for name in links.into_iter().chain([real]) {
                if let Some(dir) = name.parent() {
                    w.dirs.insert(dir.to_path_buf());
                }
                w.names.insert(name);
            }
        }
        w
    }

    fn contains(&self, event: &Path) -> bool {
        let p = absolute(event);
        self.names.contains(&p)
            || self.tenants.as_ref().is_some_and(|t| p.starts_with(t))
            // A directory on the way to a watched file was replaced.
            || self.names.iter().any(|f| f.starts_with(&p))
    }
}

/// A path resolved the way the kernel resolves it, remembering the symlinks it went through.
struct Resolved {
    /// The canonical path (of the nearest existing directory, plus the rest as written, for a file
    /// that does not exist).
    real: PathBuf,
    /// Every symlink met, as `canonical directory/name`.
    links: Vec<PathBuf>,
}

/// The kernel gives up after 40 symlinks (ELOOP); so do we.
const MAX_LINKS: usize = 40;

fn resolve(path: &Path) -> Resolved {
    use std::path::Component;
    // Components still to walk, last first.
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    let push = |pending: &mut Vec<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push(&mut pending, &absolute(path));
    let mut real = PathBuf::from("/");
    let mut links = Vec::new();
    while let Some(c) = pending.pop() {
        if c == ".." {
            real.pop();
            continue;
        }
        let next = real.join(&c);
        match std::fs::read_link(&next) {
            Ok(target) if links.len() < MAX_LINKS => {
                links.push(next);
                if target.is_absolute() {
                    real = PathBuf::from("/");
                }
                push(&mut pending, &target);
            }
            _ => real = next,
        }
    }
    Resolved { real, links }
}

/// The directories being watched now.
#[derive(Default)]
struct WatchedDirs(BTreeSet<(PathBuf, bool)>);

impl WatchedDirs {
    /// Watch what `w` needs and stop watching what it no longer does (a deleted `..<timestamp>`
    /// directory). A directory that cannot be watched now (not there yet) is tried again next time.
    fn sync(&mut self, watcher: &mut impl Watcher, w: &Watched) {
        let want: BTreeSet<(PathBuf, bool)> = w
            .dirs
            .iter()
            .map(|d| (d.clone(), false))
            .chain(w.tenant_dirs.iter().map(|t| (t.clone(), false)))
            .collect();
        for gone in self.0.difference(&want) {
            // Fails when the directory went away, taking its watch with it: nothing to do then.
            let _ = watcher.unwatch(&gone.0);
        }
        self.0.retain(|d| want.contains(d));
        for (dir, recursive) in want {
            if self.0.contains(&(dir.clone(), recursive)) {
                continue;
            }
            let mode = if recursive {
                // A tenant directory created later is seen too.
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.0.insert((dir, recursive));
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch: {e}"),
            }
        }
    }
}

/// `path` made absolute against the working directory, `.` components dropped (`..` and symlinks
/// are [`resolve`]'s job).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A digest of the config file and every file it references, as they are on disk now.
pub fn fingerprint(config: &Path, rt: &Runtime) -> String {
    let mut h = Sha256::new();
    for file in std::iter::once(config.to_path_buf()).chain(rt.inputs()) {
        h.update(file.as_os_str().as_encoded_bytes());
        match std::fs::read(&file) {
            Ok(bytes) => h.update(Sha256::digest(&bytes)),
            Err(_) => h.update(b"<missing>"),
        }
    }
    h.update(rt.tenant_digest().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlinked_directory_is_watched_where_it_really_is() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/tokens.txt"), "t").unwrap();
        symlink(root.join("real"), root.join("link")).unwrap();
        let w = Watched::files([root.join("link/./tokens.txt")], None);
        assert!(w.contains(&root.join("real/tokens.txt")), "{w:?}");
        assert!(
            w.contains(&root.join("link")),
            "re-pointing the link: {w:?}"
        );
        assert!(!w.contains(&root.join("real/access.log")), "{w:?}");
        assert!(
            w.dirs.contains(&root.join("real")) && w.dirs.contains(&root),
            "{w:?}"
        );
    }

    #[test]
    fn a_configmap_swap_is_seen_and_the_next_one_too() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let version = |name: &str, tokens: &str| {
            std::fs::create_dir(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("tokens.txt"), tokens).unwrap();
            symlink(name, dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        };
        version("..2026_01", "a");
        symlink("..data/tokens.txt", dir.join("tokens.txt")).unwrap();
        let files = || [dir.join("tokens.txt")];
        let w = Watched::files(files(), None);
        for p in ["tokens.txt", "..data", "..2026_01/tokens.txt", "..2026_01"] {
            assert!(w.contains(&dir.join(p)), "{p}: {w:?}");
        }
        assert!(w.dirs.contains(&dir.join("..2026_01")), "{w:?}");
        assert!(!w.contains(&dir.join("other.txt")), "{w:?}");

        // The swap: a new timestamped directory, `..data` renamed over, the old one deleted.
        version("..2026_02", "b");
        std::fs::remove_dir_all(dir.join("..2026_01")).unwrap();
        assert!(
            w.contains(&dir.join("..data")),
            "the swap itself is an event"
        );
        let w = Watched::files(files(), None);
        assert!(w.contains(&dir.join("..2026_02/tokens.txt")), "{w:?}");
        assert!(!w.dirs.contains(&dir.join("..2026_01")), "{w:?}");
        assert!(w.dirs.contains(&dir.join("..2026_02")), "{w:?}");
    }

    #[test]
    fn resolving_follows_the_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("../..", root.join("a/b/up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let r = resolve(&root.join("a/b/up/a/./x/../file"));
        assert_eq!(r.real, root.join("a/file"));
        assert_eq!(r.links, vec![root.join("a/b/up")]);
        // A loop ends after the kernel's 40 links, like the kernel's ELOOP.
        assert_eq!(resolve(&root.join("loop")).links.len(), MAX_LINKS);
    }
}

/// The process's control state: what serving shares (`serve`), and what only reloads, the admin
/// endpoint and shutdown use.
pub struct Shared {
    pub serve: Arc<ServeCtx>,
    pub builders: Builders,
    /// What `/status` reports about the configuration and reloads.
    pub status: std::sync::Mutex<ReloadStatus>,
    /// Fires when the server is gone: worker threads end their event loops.
    pub stopped: CancellationToken,
    /// The config the process started with: restart-only settings are judged against it, not
    /// against the last reload (which carried them without applying them).
    pub started: Arc<Config>,
    /// Held while a runtime is built and swapped in: a SIGHUP, the watcher and `Server::reload`
    /// may ask at once, and each build starts from the runtime live when it began (incumbent
    /// tenants, kept plugins), so two at once could store over each other's result.
    pub building: std::sync::Mutex<()>,
}

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Digest of the live config file and every file it references.
    pub digest: String,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_error: Option<String>,
    /// Restart-only settings the live config file changes but the process still runs with the
    /// values it started with (see `wasmgate_config::lifetimes`).
    pub restart_pending: Vec<String>,
}

impl Shared {
    /// Record the live plugin versions, and the config digest when a new config went live, for
    /// `/status` and `/metrics`.
    pub fn publish(&self, digest: Option<String>) {
        let rt = self.serve.runtime.load();
        let m = &self.serve.metrics;
        if let Some(digest) = digest {
            m.config_info.clear();
            m.config_info
                .get_or_create(&wasmgate_observe::metrics::DigestLabels {
                    digest: digest.clone(),
                })
                .set(1);
            self.status.lock().unwrap_or_else(|p| p.into_inner()).digest = digest;
        }
        m.plugin_info.clear();
        m.plugin_config_problems.clear();
        for site in &rt.sites {
            for chain in
                std::iter::once(&site.plugins).chain(site.routes.iter().map(|r| &r.plugins))
            {
                for p in chain.plugins() {
                    let labels = wasmgate_observe::metrics::PluginInfoLabels {
                        plugin: p.name.clone(),
                        site: site.name.to_string(),
                        tenant: site
                            .tenant
                            .as_ref()
                            .map_or("-".to_string(), |t| t.name.to_string()),
                        digest: p.digest().to_string(),
                    };
                    m.plugin_info.get_or_create(&labels).set(1);
                    let refused = p.problems.len() + p.more_problems;
                    if refused > 0 {
                        let labels = wasmgate_observe::metrics::PluginLabels {
                            plugin: labels.plugin,
                            site: labels.site,
                            tenant: labels.tenant,
                        };
                        m.plugin_config_problems
                            .get_or_create(&labels)
                            .inc_by(refused as i64);
                    }
                }
            }
        }
    }

    /// Reload tenants against the running operator config (used when the operator's file is broken:
    /// tenants keep reloading on their own).
    pub fn reload_tenants(&self) -> Result<(), ConfigErrors> {
        let _one_at_a_time = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.serve.runtime.load();
        let config = (*current.config).clone();
        let next = Runtime::build(config, &self.builders, Some(&current))?;
        self.builders.remember_owners(&next);
        self.serve.runtime.store(Arc::new(next));
        Ok(())
    }

    /// Swap in a runtime built from `config`; returns the restart-only settings it changes from
    /// the ones the process started with, which it does not apply.
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, ConfigErrors> {
        let _one_at_a_time = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.serve.runtime.load();
        let sockets = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.name.clone(), l.bind, l.tls))
                .collect::<Vec<_>>()
        };
        // PROXY protocol sources are read per connection, so they reload; sockets do not.
        if sockets(&config) != sockets(&current.config) {
            return Err(ConfigErrors::single(
                &config.path,
                "listener",
                "listeners changed (name, bind or tls): that needs a restart",
            ));
        }
        let pending = wasmgate_config::lifetimes::restart_only_changes(&self.started, &config);
        let next = Runtime::build(config, &self.builders, Some(&current))?;
        self.builders.remember_owners(&next);
        self.serve.runtime.store(Arc::new(next));
        Ok(pending)
    }
}
