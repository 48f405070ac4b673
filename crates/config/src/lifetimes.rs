//! Which settings a reload applies and which only a restart does. Sites, routes, plugins, backends,
//! certificates, trusted proxies, tenants and their limits, request-body limits, shutdown_grace
//! reload live; what the process set up once at start — its sockets and their accept limits, its
//! worker threads, its logging, the admin listener, the connection watchdog's timers, the compile
//! cache — stays until a restart (or a `SIGUSR2` handover, which is one without dropping traffic).
//!
//! Listeners themselves are not in this list: a reload that changes them is refused whole, because
//! routes naming a new listener could not be served.

use crate::Config;

/// The restart-only settings that `new` changes from `old`, by the names a config file uses.
///
/// Every field is named, reloadable or not (no `..`): a setting added to the model does not
/// compile until it is put on one side or the other here.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        // Reloaded: the whole serving snapshot is rebuilt from these.
        path: _,
        sites: _,
        trusted_proxies: _,
        client_address_header: _,
        shutdown_grace: _,
        default_timeouts: _,
        tenants: _,
        // Refused whole when they change (see the module's comment).
        listeners: _,
        // Restart-only, compared below.
        watch: _,
        limits: _,
        header_read_timeout: _,
        keepalive_timeout: _,
        cache_dir: _,
        admin: _,
        io_timeout: _,
        log_format: _,
        access_log_format: _,
        workers: _,
    } = old;
    let (a, b) = (&old.limits, &new.limits);
    let crate::Limits {
        max_body_bytes: _, // reloaded: judged per request
        max_header_bytes: _,
        max_connections: _,
        max_connections_per_ip: _,
        min_rate: _,
    } = a;
    let changed = [
        ("workers", old.workers != new.workers),
        ("admin", old.admin != new.admin),
        ("cache_dir", old.cache_dir != new.cache_dir),
        ("log_format", old.log_format != new.log_format),
        (
            "access_log_format",
            old.access_log_format != new.access_log_format,
        ),
        ("watch", old.watch != new.watch),
        (
            "timeouts.header_read",
            old.header_read_timeout != new.header_read_timeout,
        ),
        (
            "timeouts.keepalive",
            old.keepalive_timeout != new.keepalive_timeout,
        ),
        // Request bodies take the new values at once; the watchdog judging how fast a client reads
        // its responses keeps the old until a restart.
        (
            "timeouts.io (for responses)",
            old.io_timeout != new.io_timeout,
        ),
        ("limits.min_rate (for responses)", a.min_rate != b.min_rate),
        (
            "limits.max_header_bytes",
            a.max_header_bytes != b.max_header_bytes,
        ),
        (
            "limits.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "limits.max_connections_per_ip",
            a.max_connections_per_ip != b.max_connections_per_ip,
        ),
    ];
    changed
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
}
