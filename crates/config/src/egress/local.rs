//! wasmgate's own sockets, which no tenant backend may reach whatever the operator allows: a route to
//! the proxy's own listener loops requests through it (and past host ownership), one to the admin
//! endpoint reads metrics and status.
//!
//! A listener bound to `0.0.0.0:P` or `[::]:P` accepts on every local address, so for such a bind
//! every address of every local interface (and all of loopback) is forbidden on port `P`. The
//! interfaces are enumerated with `getifaddrs` only when a connection's port is such a listener's
//! port — rare, and then the answer is current (addresses come and go with DHCP and pod restarts).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

/// The addresses this server listens on, by name (`web`, `admin`). Filled in when the sockets are
/// bound (ports chosen by the kernel are known only then); shared by every tenant's policy.
#[derive(Debug, Default)]
pub struct OwnAddrs(RwLock<Vec<(Arc<str>, SocketAddr)>>);

impl OwnAddrs {
    pub fn set(&self, addrs: impl IntoIterator<Item = (String, SocketAddr)>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = addrs
            .into_iter()
            .filter(|(_, a)| a.port() != 0)
            .map(|(n, a)| (n.into(), a))
            .collect();
    }

    pub fn snapshot(&self) -> Vec<(Arc<str>, SocketAddr)> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The name of the own socket that a connection to `target` would reach, if any. `extra` are
/// configured binds not (yet) in `own` (a config being checked before its sockets exist).
pub fn own_socket(
    own: &OwnAddrs,
    extra: &[(Arc<str>, SocketAddr)],
    target: SocketAddr,
) -> Option<Arc<str>> {
    let ip = target.ip().to_canonical();
    let guard = own.0.read().unwrap_or_else(|p| p.into_inner());
    let mut wildcard = None;
    for (name, a) in guard.iter().chain(extra) {
        if a.port() != target.port() {
            continue;
        }
        let bound = a.ip().to_canonical();
        if bound == ip || ip.is_unspecified() {
            return Some(name.clone());
        }
        if bound.is_unspecified() {
            wildcard = Some(name.clone());
        }
    }
    let name = wildcard?;
    drop(guard);
    is_local(ip).then_some(name)
}

/// Is `ip` an address of this machine (loopback, or on any interface)?
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || interface_addrs().contains(&ip)
}

/// Every address of every local interface.
pub fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we walk read-only and free exactly once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_through_every_local_address() {
        let own = OwnAddrs::default();
        own.set([
            ("web".to_string(), "0.0.0.0:8080".parse().unwrap()),
            ("admin".to_string(), "127.0.0.1:9000".parse().unwrap()),
        ]);
        let locals = interface_addrs();
        assert!(locals.iter().any(|a| a.is_loopback()), "{locals:?}");
        for ip in &locals {
            assert_eq!(
                own_socket(&own, &[], SocketAddr::new(*ip, 8080)).as_deref(),
                Some("web"),
                "{ip}"
            );
        }
        let hit = |s: &str| own_socket(&own, &[], s.parse().unwrap());
        assert_eq!(hit("127.0.0.2:8080").as_deref(), Some("web"));
        assert_eq!(hit("[::ffff:127.0.0.1]:9000").as_deref(), Some("admin"));
        assert_eq!(hit("0.0.0.0:9000").as_deref(), Some("admin"));
        assert_eq!(
            hit("127.0.0.2:9000"),
            None,
            "admin is bound to 127.0.0.1 only"
        );
        assert_eq!(hit("127.0.0.1:8081"), None);
        assert_eq!(hit("93.184.216.34:8080"), None, "not a local address");
    }
}
