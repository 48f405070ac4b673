//! Connection-level limits shared by every listener: open connections per client address, and the
//! backoff an accept loop takes when `accept(2)` fails (EMFILE, ENFILE, ENOBUFS).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Open connections per client address, process-wide (all listeners and workers), like nginx's
/// `limit_conn` on `$binary_remote_addr`. The address is the one the connection comes from after
/// the PROXY protocol, so clients behind one balancer are told apart.
pub struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; uncounted when dropped.
pub struct PerIpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(max: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Count a connection from `ip`, or `None` if it already has `max` open.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            table: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap();
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // No entry per address ever seen: the table holds only addresses with open connections.
                open.remove(&self.ip);
            }
        }
    }
}

/// An accept loop's pause after a failed `accept`: 10 ms doubling to 1 s, reset by a success.
/// Out of descriptors, `accept` fails at once every time: without a pause the loop spins a core
/// and floods the log. Only the first failure of a run is logged at warn.
#[derive(Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    pub fn success(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accept works again after failing");
        }
        self.failures = 0;
    }

    /// Log (the first of a run) and return how long to wait before the next `accept`.
    pub fn failure(&mut self, listener: &str, err: &std::io::Error) -> Duration {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(listener, "accept failed: {err}; backing off");
        } else {
            tracing::debug!(listener, failures = self.failures, "accept failed: {err}");
        }
        let ms = 10u64 << (self.failures - 1).min(7);
        Duration::from_millis(ms.min(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_and_releases() {
        let t = PerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = t.acquire(a).unwrap();
        let s2 = t.acquire(mapped).unwrap();
        assert!(
            t.acquire(a).is_none(),
            "the v4-mapped form is the same client"
        );
        let s3 = t.acquire(b).unwrap();
        drop(s1);
        assert_eq!(t.count(a), 1);
        let s4 = t.acquire(a).unwrap();
        drop((s2, s3, s4));
        assert!(t.open.lock().unwrap().is_empty());
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(24);
        let waits: Vec<u64> = (0..10)
            .map(|_| b.failure("x", &e).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.success();
        assert_eq!(b.failure("x", &e), Duration::from_millis(10));
    }
}
