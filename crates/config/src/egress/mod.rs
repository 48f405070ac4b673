//! The tenant egress rules, as pure judgements: what an address is (`addr`), which are wasmgate's own
//! (`local`), what the operator allowed (`rules`), and the verdicts built from them — at load time for
//! a literal address ([`check_literal`]), at connect time for each address a name resolved to
//! ([`check_resolved`]). Connecting itself is the upstream layer's (`egress::Connector`).

mod addr;
mod local;
mod rules;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use addr::{classify, Class};
pub use local::{interface_addrs, OwnAddrs};
pub use rules::Allow;

/// The load-time check of a tenant backend written as `host` (from a URL, brackets allowed) and
/// `port`: an address literal is judged now; `localhost` (and names under it) stand for loopback;
/// legacy numeric forms (`127.1`, `0x7f000001`), which resolvers read as IPv4 addresses, are refused
/// as ambiguous. Other names are judged after each resolution, at connect time. `binds` are the
/// configured listener and admin addresses (the live ones are in `own`).
pub fn check_literal(
    allow: &[Allow],
    own: &OwnAddrs,
    binds: &[(Arc<str>, SocketAddr)],
    host: &str,
    port: u16,
) -> Result<(), String> {
    let host = bare_host(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return judge(allow, own, binds, &host, SocketAddr::new(ip, port))
            .map_err(|why| format!("`{host}` is {why}"));
    }
    if host == "localhost" || host.ends_with(".localhost") {
        let loopback = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let mut why = Vec::new();
        for ip in loopback {
            match judge(allow, own, binds, &host, SocketAddr::new(ip, port)) {
                Ok(()) => return Ok(()),
                Err(w) => why.push(w),
            }
        }
        return Err(format!(
            "`{host}` resolves to loopback, which is {}",
            why[0]
        ));
    }
    let last = host.rsplit('.').next().unwrap_or_default();
    let numeric = !last.is_empty()
        && (last.chars().all(|c| c.is_ascii_digit())
            || last.len() > 2 && last[..2].eq_ignore_ascii_case("0x"));
    if numeric {
        return Err(format!(
            "`{host}` is a numeric host that resolvers read as an IPv4 address in a legacy form; write the address as a.b.c.d"
        ));
    }
    Ok(())
}

/// May a connection to `host` (a backend's host as written in the config) go to `addr`, which it
/// resolved to? The reason when not; it reads after "… is".
pub fn check_resolved(
    allow: &[Allow],
    own: &OwnAddrs,
    host: &str,
    addr: SocketAddr,
) -> Result<(), String> {
    judge(allow, own, &[], &bare_host(host), addr)
}

/// The verdict for one address, given the allowances. The reason reads after "… is".
fn judge(
    allow: &[Allow],
    own: &OwnAddrs,
    binds: &[(Arc<str>, SocketAddr)],
    host: &str,
    addr: SocketAddr,
) -> Result<(), String> {
    let ip = addr.ip().to_canonical();
    let port = addr.port();
    if let Some(name) = local::own_socket(own, binds, addr) {
        let what = if &*name == "admin" {
            "the admin endpoint".to_string()
        } else {
            format!("wasmgate's own listener `{name}`")
        };
        return Err(format!("{what}, which a tenant backend may never be"));
    }
    let by_addr = || allow.iter().any(|a| a.covers_addr(ip, port));
    let by_name = || allow.iter().any(|a| a.covers_name(host, port));
    // Classified as written: an IPv6 form of a forbidden IPv4 address is named as such.
    match classify(addr.ip()) {
        Class::Public => Ok(()),
        Class::Private(_) if by_addr() || by_name() => Ok(()),
        Class::Guarded(_) if by_addr() => Ok(()),
        Class::Private(why) => Err(format!(
            "{why}, not allowed for this tenant (the operator can allow it in [tenant_limits.<tenant>] backends)"
        )),
        Class::Guarded(why) => Err(format!(
            "{why}, not allowed for this tenant (only an address range in [tenant_limits.<tenant>] backends can allow it)"
        )),
        Class::Never(why) => Err(format!("{why}, which no backend may be")),
    }
}

/// A URL host as a resolver and the allowances see it: no brackets, lower case, no trailing dot.
fn bare_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &[&str]) -> Vec<Allow> {
        list.iter().map(|s| Allow::parse(s).unwrap()).collect()
    }

    fn lit(allowed: &[&str], host: &str, port: u16) -> Result<(), String> {
        let own = OwnAddrs::default();
        own.set([
            ("web".to_string(), "127.0.0.1:8080".parse().unwrap()),
            ("admin".to_string(), "127.0.0.1:9901".parse().unwrap()),
        ]);
        check_literal(&allow(allowed), &own, &[], host, port)
    }

    #[test]
    fn literals_are_judged_at_load() {
        assert!(lit(&[], "127.0.0.1", 3000)
            .unwrap_err()
            .contains("loopback"));
        assert!(lit(&[], "[::1]", 3000).unwrap_err().contains("loopback"));
        assert!(lit(&[], "169.254.169.254", 80)
            .unwrap_err()
            .contains("metadata"));
        assert!(lit(&[], "10.1.2.3", 80).unwrap_err().contains("RFC 1918"));
        assert!(lit(&[], "[::ffff:127.0.0.1]", 80)
            .unwrap_err()
            .contains("IPv4-mapped"));
        assert!(lit(&[], "localhost", 80).unwrap_err().contains("loopback"));
        assert!(lit(&[], "app.localhost.", 80)
            .unwrap_err()
            .contains("loopback"));
        assert!(lit(&[], "127.1", 80).unwrap_err().contains("legacy form"));
        assert!(lit(&[], "0x7f000001", 80)
            .unwrap_err()
            .contains("legacy form"));
        assert!(lit(&[], "93.184.216.34", 80).is_ok());
        assert!(
            lit(&[], "example.com", 80).is_ok(),
            "names are judged at connect time"
        );

        assert!(lit(&["10.1.0.0/16"], "10.1.2.3", 80).is_ok());
        assert!(lit(&["10.1.0.0/16"], "10.2.0.1", 80).is_err());
        assert!(lit(&["127.0.0.1:3000"], "127.0.0.1", 3000).is_ok());
        assert!(lit(&["127.0.0.1:3000"], "localhost", 3000).is_ok());
        assert!(lit(&["127.0.0.1:3000"], "127.0.0.1", 3001).is_err());
        // A name entry opens private ranges for that name only, never loopback.
        assert!(lit(&["localhost"], "localhost", 80).is_err());
        // Allowing all of loopback still leaves the proxy's own sockets out.
        let own = lit(&["127.0.0.0/8"], "127.0.0.1", 8080).unwrap_err();
        assert!(own.contains("own listener `web`"), "{own}");
        let admin = lit(&["127.0.0.0/8"], "127.0.0.1", 9901).unwrap_err();
        assert!(admin.contains("admin endpoint"), "{admin}");
        assert!(
            lit(&["0.0.0.0/0"], "0.0.0.0", 80).is_err(),
            "unspecified is never allowed"
        );
    }
}
