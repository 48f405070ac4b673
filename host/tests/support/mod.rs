//! A running `wasmgate run` child process, for the tests that need the real binary: its log lines
//! streamed to a channel, its listeners' addresses read from what it prints.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_wasmgate");

pub struct Running {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub addrs: Vec<(String, std::net::SocketAddr)>,
}

impl Running {
    /// `wasmgate run --config CONFIG`, in `cwd` (so CONFIG may be relative to it).
    pub async fn start_in(cwd: &Path, config: &Path) -> Running {
        Running::start_with(cwd, config, None).await
    }

    /// Like [`Running::start_in`], with at most `nofile` open descriptors (`RLIMIT_NOFILE`).
    pub async fn start_with(cwd: &Path, config: &Path, nofile: Option<u64>) -> Running {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(cwd)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    let _ = tx.send(l);
                }
            });
        }
        let mut me = Running {
            child,
            lines,
            addrs: Vec::new(),
        };
        while me.addrs.is_empty() {
            let line = me.wait_for("listening ").await;
            if let Some(rest) = line.strip_prefix("listening ") {
                let (name, addr) = rest.split_once(' ').unwrap();
                me.addrs.push((name.to_string(), addr.parse().unwrap()));
            }
        }
        me
    }

    /// The next log line containing `needle` (within `wasmgate_tests::STATE_CHANGE`).
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + wasmgate_tests::STATE_CHANGE;
        let mut skipped = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) if l.contains(needle) => return l,
                Ok(Some(l)) => skipped.push(l),
                _ => panic!(
                    "no log line containing `{needle}`; saw:\n{}",
                    skipped.join("\n")
                ),
            }
        }
    }

    /// Every line up to and including the next one containing `needle`: for lines of two processes
    /// (a handover) whose order between them is not fixed.
    #[allow(dead_code)] // `support` is compiled into each test binary; only `cli` asks for this.
    pub async fn lines_until(&mut self, needle: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wasmgate_tests::STATE_CHANGE;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    let done = l.contains(needle);
                    seen.push(l);
                    if done {
                        return seen;
                    }
                }
                _ => panic!(
                    "no log line containing `{needle}`; saw:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Every line logged so far (without waiting).
    pub fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            out.push(l);
        }
        out
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }
}
