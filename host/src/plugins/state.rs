//! What a plugin instance's store holds, and the host functions the WIT `host` interface promises —
//! and nothing more: WASI is linked with an empty context (no preopens, no environment, no sockets;
//! stdout and stderr go to wasmgate's log line by line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Level};

/// Who a plugin instance is, for its log lines.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: Arc<str>,
    pub site: Arc<str>,
    pub tenant: Option<Arc<str>>,
    pub digest: Arc<str>,
}

/// Files a plugin may read during `init`: resolved inside `base_dir`, read once at load time, and
/// recorded so the watcher reloads the plugin when one changes.
#[derive(Debug)]
pub struct ConfigFiles {
    pub base_dir: PathBuf,
    /// A tenant's plugin: files are opened beneath the tenant's directory, no symlink followed.
    pub confined: Option<crate::config::tenant_fs::Confined>,
    pub read: Mutex<BTreeMap<PathBuf, Result<Vec<u8>, String>>>,
}

impl ConfigFiles {
    fn read(&self, rel: &str) -> Result<Vec<u8>, String> {
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "`{rel}` must be a relative path inside the config directory"
            ));
        }
        let path = self.base_dir.join(rel_path);
        if self.confined.is_none() {
            // A symlink may not lead out of the operator's directory either.
            if let (Ok(real), Ok(root)) = (path.canonicalize(), self.base_dir.canonicalize()) {
                if !real.starts_with(&root) {
                    return Err(format!("`{rel}` leads outside the config directory"));
                }
            }
        }
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.entry(path.clone())
            .or_insert_with(|| match &self.confined {
                Some(c) => c.read(rel_path),
                None => std::fs::read(&path)
                    .map_err(|e| format!("cannot read `{}`: {e}", path.display())),
            })
            .clone()
    }
}

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    pub who: Identity,
    pub files: Arc<ConfigFiles>,
    /// `read-config-file` works only while `init` runs.
    pub in_init: bool,
    /// The request being handled, for log lines.
    pub request_id: Option<String>,
    /// Epoch ticks the current call has run into, and how many it may (see `instance.rs` on
    /// deadlines). Ticks, not wall time: a call that yielded and then waited for its worker is not
    /// charged for the wait.
    pub ticks_used: u64,
    pub ticks_allowed: u64,
    started: Instant,
}

impl State {
    pub fn new(who: Identity, files: Arc<ConfigFiles>, memory: u64) -> State {
        let wasi = WasiCtx::builder()
            .stdout(LogOutput {
                who: who.clone(),
                stream: "stdout",
            })
            .stderr(LogOutput {
                who: who.clone(),
                stream: "stderr",
            })
            .build();
        State {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory as usize)
                .trap_on_grow_failure(true)
                .build(),
            who,
            files,
            in_init: false,
            request_id: None,
            ticks_used: 0,
            ticks_allowed: 1000,
            started: Instant::now(),
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::wasmgate::plugin::types::Host for State {}

impl bindings::wasmgate::plugin::host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let w = &self.who;
        let id = self.request_id.as_deref().unwrap_or("-");
        // The guest's text is data: escaped, so it cannot start a line that looks like the host's.
        let message: String = message.chars().take(4096).collect();
        let message = crate::log::escaped(&message);
        let tenant = w.tenant.as_deref().unwrap_or("-");
        match level {
            Level::Trace => {
                tracing::trace!(target: "wasmgate::plugin", plugin = %w.name, site = %w.site, tenant = %tenant, id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "wasmgate::plugin", plugin = %w.name, site = %w.site, tenant = %tenant, id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "wasmgate::plugin", plugin = %w.name, site = %w.site, tenant = %tenant, id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "wasmgate::plugin", plugin = %w.name, site = %w.site, tenant = %tenant, id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "wasmgate::plugin", plugin = %w.name, site = %w.site, tenant = %tenant, id, "{message}")
            }
        }
    }

    fn monotonic_now(&mut self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn wall_now(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn read_config_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        if !self.in_init {
            return Err("read-config-file is only available during init".into());
        }
        self.files.read(&path)
    }
}

/// A plugin's stdout or stderr, written to the log a line at a time.
struct LogOutput {
    who: Identity,
    stream: &'static str,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogStream {
            who: self.who.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this; wasmgate links WASIp2.
        Box::new(tokio::io::sink())
    }
}

struct LogStream {
    who: Identity,
    stream: &'static str,
    line: Vec<u8>,
}

/// Longest line kept; a plugin printing without newlines cannot grow host memory.
const MAX_LINE: usize = 4096;

impl LogStream {
    fn emit(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            let tenant = self.who.tenant.as_deref().unwrap_or("-");
            tracing::info!(target: "wasmgate::plugin", plugin = %self.who.name, site = %self.who.site, tenant = %tenant, stream = %self.stream, "{}", crate::log::escaped(text.trim_end()));
            self.line.clear();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        for &b in bytes.iter() {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit();
                if b == b'\n' {
                    continue;
                }
            }
            self.line.push(b);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.emit();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}
