//! Zero-downtime restart by passing the listening sockets to a successor process.
//!
//! `SIGUSR2` makes a running wasmgate start its successor (the binary at the same path, same
//! arguments) with the listening sockets inherited as file descriptors. The successor adopts them
//! instead of binding, starts serving, and sends its predecessor `SIGQUIT`; the predecessor stops
//! accepting, lets requests and tunnels in flight finish, and exits.
//!
//! Why passing sockets rather than `SO_REUSEPORT`: with two separate reuseport sockets, the kernel
//! splits new connections between them, and connections still queued in the old socket when it
//! closes are reset — exactly the refused connections a handover must avoid. A passed socket is one
//! kernel socket with one accept queue, shared until the old process lets go. It also needs no
//! socket option that would let any other process of the same user bind the port.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;

const ENV_FDS: &str = "WASMGATE_LISTEN_FDS";
const ENV_PREDECESSOR: &str = "WASMGATE_HANDOVER_FROM";

/// The sockets the predecessor passed. Process-wide on purpose: they are this process's file
/// descriptors, named in its environment, and each may be adopted once — a per-server table would
/// let two servers in one process adopt the same descriptor.
static INHERITED: Mutex<Option<HashMap<String, std::net::TcpListener>>> = Mutex::new(None);

/// Was this process started by a predecessor handing over (and has not yet released it)?
pub fn is_successor() -> bool {
    std::env::var_os(ENV_PREDECESSOR).is_some()
}

/// Take the inherited listening socket for `listener`, if a predecessor passed one.
pub fn take_inherited(listener: &str) -> Option<std::net::TcpListener> {
    let mut guard = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(read_env);
    map.remove(listener)
}

fn read_env() -> HashMap<String, std::net::TcpListener> {
    let Ok(spec) = std::env::var(ENV_FDS) else {
        return HashMap::new();
    };
    // Not for our own successors: they get a fresh list.
    std::env::remove_var(ENV_FDS);
    spec.split(',')
        .filter_map(|pair| {
            let (name, fd) = pair.split_once('=')?;
            let fd: RawFd = fd.parse().ok()?;
            // SAFETY: the predecessor put exactly these descriptors, listening TCP sockets, in our
            // environment and passed them open across exec; nothing else in this process owns them.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            l.set_nonblocking(true).ok()?;
            Some((name.to_string(), l))
        })
        .collect()
}

/// Start the successor with `listeners` (name, fd) inherited. Returns its pid.
pub fn spawn_successor(listeners: &[(String, RawFd)]) -> std::io::Result<u32> {
    let mut passed = Vec::new();
    for (name, fd) in listeners {
        // `dup` gives a descriptor without close-on-exec: exactly the ones we mean to pass.
        // SAFETY: `fd` is an open listening socket owned by the running server.
        let dup = unsafe { libc::dup(*fd) };
        if dup < 0 {
            let err = std::io::Error::last_os_error();
            close_all(&passed);
            return Err(err);
        }
        passed.push((name.clone(), dup));
    }
    let spec: Vec<String> = passed.iter().map(|(n, fd)| format!("{n}={fd}")).collect();
    let exe = std::env::current_exe()?;
    // After a package upgrade the running binary's inode is gone; its path now names the new one.
    let exe = std::path::PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    let child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ENV_FDS, spec.join(","))
        .env(ENV_PREDECESSOR, std::process::id().to_string())
        .spawn();
    close_all(&passed);
    Ok(child?.id())
}

fn close_all(fds: &[(String, RawFd)]) {
    for (_, fd) in fds {
        // SAFETY: these are our own duplicates, not used elsewhere.
        unsafe { libc::close(*fd) };
    }
}

/// Called once serving: tell the predecessor (if we are a successor) to drain and exit.
pub fn release_predecessor() {
    let Some(pid) = std::env::var(ENV_PREDECESSOR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    std::env::remove_var(ENV_PREDECESSOR);
    tracing::info!(
        predecessor = pid,
        "serving on the inherited sockets; telling the predecessor to drain"
    );
    // SAFETY: plain kill(2) on the pid our parent gave us.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
}

/// Tell systemd (`Type=notify`) that this process is ready and is the service's main process — after
/// a handover that is the successor, so systemd follows it instead of stopping the service when the
/// predecessor exits. Needs `NotifyAccess=all`. Does nothing outside systemd.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(message.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(message.as_bytes(), &path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
