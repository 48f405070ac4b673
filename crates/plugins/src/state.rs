//! What a plugin instance's store holds, and the host functions the WIT `host` interface promises —
//! and nothing more: WASI is linked with an empty context (no preopens, no environment, no sockets;
//! stdout and stderr go to wasmgate's log line by line).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Level, PasswordVerdict};
use super::password::Passwords;
use wasmgate_config::FileScope;

/// Config problems kept per plugin, and the length of each message: a plugin reporting every line
/// of a huge file cannot grow host memory without bound.
const MAX_PROBLEMS: usize = 256;
const MAX_PROBLEM_LEN: usize = 512;

/// See [`State::host_wait`].
#[derive(Debug, Default)]
pub struct HostWait {
    /// Nanoseconds spent in finished host work during the current call.
    pub done_ns: std::sync::atomic::AtomicU64,
    /// Host work is under way right now.
    pub busy: std::sync::atomic::AtomicBool,
}

/// Marks host work as under way until dropped (also when the call is abandoned mid-way).
struct HostWaiting(Arc<HostWait>, Instant);

impl HostWaiting {
    fn start(w: Arc<HostWait>) -> HostWaiting {
        w.busy.store(true, std::sync::atomic::Ordering::SeqCst);
        HostWaiting(w, Instant::now())
    }
}

impl Drop for HostWaiting {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        let ns = self.1.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.0.done_ns.fetch_add(ns, SeqCst);
        self.0.busy.store(false, SeqCst);
    }
}

/// A line of a config file that a plugin refused (WIT `report-config-problem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file as the host resolved it.
    pub file: String,
    /// 1-based; 0 for the whole file.
    pub line: u32,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            n => write!(f, "{}:{n}: {}", self.file, self.message),
        }
    }
}

/// What a plugin declared through the `init`-only imports. Every instance runs `init`; the host
/// keeps what the first one (at load time) declared.
#[derive(Debug, Default, Clone)]
pub struct Declared {
    pub identity_headers: Vec<http::HeaderName>,
    /// Names given to `identity-headers` that are not header names, or that the proxy owns.
    pub bad_identity_headers: Vec<String>,
    pub problems: Vec<ConfigProblem>,
    /// Problems past `MAX_PROBLEMS`, counted only.
    pub more_problems: usize,
}

/// Who a plugin instance is, for its log lines.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: Arc<str>,
    pub site: Arc<str>,
    pub tenant: Option<Arc<str>>,
    pub digest: Arc<str>,
}

/// Files a plugin may read during `init`: named as its config's [`FileScope`] allows (an operator's
/// anywhere, a tenant's inside its directory), read once at load time, and recorded so the watcher
/// reloads the plugin when one changes.
#[derive(Debug)]
pub struct ConfigFiles {
    pub scope: FileScope,
    /// A tenant's plugin: files are opened beneath the tenant's directory, no symlink followed.
    pub confined: Option<wasmgate_config::tenant_fs::Confined>,
    pub read: Mutex<BTreeMap<PathBuf, Result<Vec<u8>, String>>>,
}

impl ConfigFiles {
    /// Does every file the plugin read still read the same (same bytes, or the same refusal)?
    /// Blocking I/O: called while a runtime is built, off the async workers.
    pub fn unchanged(&self) -> bool {
        // A copy, so the reads below do not hold the lock an instantiating worker may want.
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner()).clone();
        read.iter().all(|(path, before)| {
            let now = match &self.confined {
                Some(c) => match path.strip_prefix(self.scope.dir()) {
                    Ok(name) => c.read(name),
                    Err(_) => return false,
                },
                // The key is the path as `FileScope::read` resolved it then.
                None => wasmgate_config::read_resolved(path),
            };
            &now == before
        })
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        use wasmgate_config::FileRefused;
        // A tenant's name is judged by its shape here (absolute, `..`) and opened beneath its
        // directory by `tenant_fs`, which refuses every symlink; the operator's resolves anywhere.
        let path = match (self.scope.resolve(name), &self.confined) {
            (Err(r @ (FileRefused::Absolute(_) | FileRefused::ParentDir(_))), _) => {
                return Err(r.to_string())
            }
            (_, Some(_)) => self.scope.dir().join(name),
            (r, None) => r.map_err(|e| e.to_string())?,
        };
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.entry(path)
            .or_insert_with(|| match &self.confined {
                Some(c) => c.read(std::path::Path::new(name)),
                None => self.scope.read(name).map(|(_, bytes)| bytes),
            })
            .clone()
    }
}

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: super::memory::MemoryLimiter,
    pub who: Identity,
    pub files: Arc<ConfigFiles>,
    /// `read-config-file` works only while `init` runs.
    pub in_init: bool,
    /// The request being handled, for log lines.
    pub request_id: Option<String>,
    /// Its client address, for `verify-password`'s throttle.
    pub client: Option<IpAddr>,
    /// Set by `limit-decision-cache` during an `on-request` call (reset before each call).
    pub max_age: Option<Duration>,
    pub declared: Declared,
    pub passwords: Arc<Passwords>,
    /// Time the current call spent waiting for host work done on its behalf (password hashing),
    /// which its wall-clock bound does not count (see `instance::within`).
    pub host_wait: Arc<HostWait>,
    /// Epoch ticks the current call has run into, and how many it may (see `instance.rs` on
    /// deadlines). Ticks, not wall time: a call that yielded and then waited for its worker is not
    /// charged for the wait.
    pub ticks_used: u64,
    pub ticks_allowed: u64,
    /// A tenant's call: the nanoseconds its stretches ran so far, and its limit (`limits.time`).
    pub ran_ns: u64,
    pub limit_ns: u64,
    /// The tenant's plugin CPU budget (`None` for the operator's plugins), and when the current
    /// stretch of guest execution began (`cpu::stretch_now`; written by the yield future on resumption).
    pub cpu: Option<Arc<super::cpu::CpuBudget>>,
    pub stretch: Arc<std::sync::atomic::AtomicU64>,
    /// What the plugin entry was granted: the clock its `monotonic-now`/`wall-now` read, and the
    /// store and outbound client the coming host functions will use.
    pub caps: super::caps::Capabilities,
}

impl State {
    pub fn new(
        who: Identity,
        files: Arc<ConfigFiles>,
        passwords: Arc<Passwords>,
        memory: u64,
        cpu: Option<Arc<super::cpu::CpuBudget>>,
        caps: super::caps::Capabilities,
    ) -> State {
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
            limits: super::memory::MemoryLimiter::new(memory as usize),
            who,
            files,
            in_init: false,
            request_id: None,
            client: None,
            max_age: None,
            declared: Declared::default(),
            passwords,
            host_wait: Arc::default(),
            ticks_used: 0,
            ticks_allowed: 1000,
            ran_ns: 0,
            limit_ns: u64::MAX,
            cpu,
            // Instantiation and `init` run guest code too: charged from here.
            stretch: Arc::new(super::cpu::stretch_now().into()),
            caps,
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
        let message = wasmgate_core::text::escaped(&message);
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
        self.caps.clock.monotonic().as_nanos() as u64
    }

    fn wall_now(&mut self) -> u64 {
        self.caps.clock.wall().as_millis() as u64
    }

    fn read_config_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        if !self.in_init {
            return Err("read-config-file is only available during init".into());
        }
        self.files.read(&path)
    }

    fn identity_headers(&mut self, names: Vec<String>) {
        if !self.in_init {
            return self.init_only("identity-headers");
        }
        for n in names {
            match http::HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) if !super::convert::is_forbidden(h.as_str()) => {
                    if !self.declared.identity_headers.contains(&h) {
                        self.declared.identity_headers.push(h);
                    }
                }
                _ => self.declared.bad_identity_headers.push(n),
            }
        }
    }

    fn report_config_problem(&mut self, path: String, line: u32, message: String) {
        if !self.in_init {
            return self.init_only("report-config-problem");
        }
        if self.declared.problems.len() >= MAX_PROBLEMS {
            self.declared.more_problems += 1;
            return;
        }
        // As the host resolved it when the plugin read it (the name as given if it does not resolve).
        let file = self
            .files
            .scope
            .resolve(&path)
            .map_or(path, |p| p.display().to_string());
        let message: String = message.chars().take(MAX_PROBLEM_LEN).collect();
        self.declared.problems.push(ConfigProblem {
            file,
            line,
            message,
        });
    }

    fn limit_decision_cache(&mut self, max_age_ms: u64) {
        let d = Duration::from_millis(max_age_ms);
        self.max_age = Some(self.max_age.map_or(d, |m| m.min(d)));
    }

    async fn verify_password(
        &mut self,
        hash: String,
        password: Vec<u8>,
    ) -> Result<PasswordVerdict, String> {
        let passwords = self.passwords.clone();
        let _waiting = HostWaiting::start(self.host_wait.clone());
        passwords.verify(hash, password, self.client).await
    }
}

impl State {
    fn init_only(&self, what: &str) {
        tracing::warn!(target: "wasmgate::plugin", plugin = %self.who.name, site = %self.who.site, "{what} is only available during init; call ignored");
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
            tracing::info!(target: "wasmgate::plugin", plugin = %self.who.name, site = %self.who.site, tenant = %tenant, stream = %self.stream, "{}", wasmgate_core::text::escaped(text.trim_end()));
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
