//! Hot reload: watch the config file and every file it references (certificates, CA bundles, wasm,
//! files plugins read), debounce, and swap in a new runtime when their content really changed. A
//! config or plugin that fails to load is refused with its errors logged; the running one stays.
//!
//! Directories are watched rather than files, so editors' write-to-temp-then-rename and Kubernetes
//! ConfigMap `..data` symlink swaps are both seen; the content fingerprint filters out the noise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::{Config, ConfigErrors};
use crate::runtime::Runtime;
use crate::server::Shared;

/// Quiet time after the last file event before a reload is attempted.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Reloads one server from one config file. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) path: PathBuf,
}

impl Reloader {
    /// Read the config file and swap it in; errors leave the running config in place.
    pub async fn reload(&self) -> Result<String, ConfigErrors> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = Config::load(&this.path).and_then(|config| this.shared.reload(config));
            if result.is_err() && this.shared.runtime.load().config.tenants.is_some() {
                // The operator's file is refused, but tenants reload on their own regardless.
                let _ = this.shared.reload_tenants();
            }
            result?;
            Ok(fingerprint(&this.path, &this.shared.runtime.load()))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors::single(
                &self.path,
                "",
                format!("reload task failed: {e}"),
            ))
        })
    }

    /// Reload and log the outcome (and count it for `/status` and `/metrics`).
    pub async fn reload_and_log(&self, why: &str) -> bool {
        let result = self.reload().await;
        self.shared.publish(result.as_ref().ok().cloned());
        {
            let mut st = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(_) => st.reloads_ok += 1,
                Err(e) => {
                    st.reloads_failed += 1;
                    st.last_error = Some(e.to_string());
                }
            }
        }
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        crate::metrics::get()
            .reloads
            .get_or_create(&crate::metrics::ResultLabels { result: outcome })
            .inc();
        match result {
            Ok(digest) => {
                tracing::info!(config = %self.path.display(), digest = %&digest[..12], trigger = why, "configuration reloaded");
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

    /// Watch the files behind the running config until the server shuts down.
    pub fn watch(self) -> notify::Result<tokio::task::JoinHandle<()>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(ev.paths);
                }
            }
        })?;
        let mut watched = BTreeSet::new();
        watch_dirs(
            &mut watcher,
            &mut watched,
            &self.path,
            &self.shared.runtime.load(),
        );
        let mut relevant = Relevant::of(&self.path, &self.shared.runtime.load());
        let mut last = fingerprint(&self.path, &self.shared.runtime.load());
        tracing::info!(digest = %&last[..12], dirs = watched.len(), "watching configuration for changes");
        Ok(tokio::spawn(async move {
            let draining = self.shared.draining.clone();
            loop {
                let paths = tokio::select! {
                    ev = rx.recv() => match ev { Some(p) => p, None => return },
                    _ = draining.cancelled() => return,
                };
                // Other files in the same directories (a log file, say) are not worth a look.
                if !paths.iter().any(|p| relevant.contains(p)) {
                    continue;
                }
                // Debounce: wait until events stop for a moment.
                while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let now = fingerprint(&self.path, &self.shared.runtime.load());
                if now == last {
                    continue;
                }
                self.reload_and_log("file change").await;
                // Whether it loaded or not, this content has been judged; wait for the next change.
                last = fingerprint(&self.path, &self.shared.runtime.load());
                relevant = Relevant::of(&self.path, &self.shared.runtime.load());
                watch_dirs(
                    &mut watcher,
                    &mut watched,
                    &self.path,
                    &self.shared.runtime.load(),
                );
            }
        }))
    }
}

/// Which paths' events can change the configuration.
struct Relevant {
    files: BTreeSet<PathBuf>,
    tenants: Option<PathBuf>,
}

impl Relevant {
    fn of(config: &Path, rt: &Runtime) -> Relevant {
        let files = std::iter::once(config.to_path_buf())
            .chain(rt.inputs())
            .collect();
        Relevant {
            files,
            tenants: rt.config.tenants.as_ref().map(|t| t.dir.clone()),
        }
    }

    fn contains(&self, p: &Path) -> bool {
        self.files.contains(p)
            // Kubernetes ConfigMap updates swap `..data` and `..<timestamp>` entries.
            || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".."))
            || self.tenants.as_ref().is_some_and(|t| p.starts_with(t))
            // A directory on the way to a watched file was replaced.
            || self.files.iter().any(|f| f.starts_with(p))
    }
}

fn watch_dirs(w: &mut impl Watcher, watched: &mut BTreeSet<PathBuf>, config: &Path, rt: &Runtime) {
    // The tenants directory and each tenant's directories one by one, within the tenant's caps: a
    // recursive watch would follow a tenant's 100k directories (or its symlinks) for everyone's
    // inotify budget. A directory created later is seen by its parent's watch and added after the
    // reload it triggers.
    for dir in rt.tenant_watch_dirs() {
        if watched.insert(dir.clone()) {
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), "cannot watch: {e}");
            }
        }
    }
    for file in std::iter::once(config.to_path_buf()).chain(rt.inputs()) {
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        if watched.insert(dir.clone()) {
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), "cannot watch: {e}");
            }
        }
    }
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
