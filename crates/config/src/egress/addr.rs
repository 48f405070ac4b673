//! What kind of address an IP is, for tenant egress: public (reachable by default), private (only
//! when the operator allows it for the tenant), or one that a tenant's backend may never be unless the
//! operator names it by address (loopback, link-local) or at all (unspecified, multicast).
//!
//! IPv6 forms that carry an IPv4 address (`::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
//! `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the address they carry: the kernel (or a NAT64 /
//! 6to4 gateway) turns them into that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How an address may be used by a tenant's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Reachable by default.
    Public,
    /// RFC 1918, CGNAT, ULA: only when the tenant's `backends` allow it (by address or by name).
    Private(&'static str),
    /// Loopback and link-local (incl. the cloud metadata address): only when `backends` names an
    /// address range that contains it (a name can be re-pointed by DNS, a literal cannot).
    Guarded(&'static str),
    /// Unspecified, `0.0.0.0/8`, multicast, broadcast, reserved: never.
    Never(&'static str),
}

pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if o[0] == 0 {
        Class::Never("in 0.0.0.0/8 (this host)")
    } else if ip.is_loopback() {
        Class::Guarded("loopback (127.0.0.0/8)")
    } else if o[0] == 169 && o[1] == 254 {
        Class::Guarded("link-local (169.254.0.0/16, incl. the cloud metadata address)")
    } else if ip.is_multicast() {
        Class::Never("multicast (224.0.0.0/4)")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Class::Never("reserved or broadcast (240.0.0.0/4)")
    } else if o[0] == 10
        || (o[0] == 172 && (16..32).contains(&o[1]))
        || (o[0] == 192 && o[1] == 168)
    {
        Class::Private("private (RFC 1918)")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Class::Private("shared address space (100.64.0.0/10, CGNAT)")
    } else {
        Class::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Class::Never("unspecified (::)");
    }
    if ip.is_loopback() {
        return Class::Guarded("loopback (::1)");
    }
    if let Some((v4, form)) = embedded_v4(ip) {
        return match classify_v4(v4) {
            Class::Public => Class::Public,
            Class::Private(_) => Class::Private(form),
            Class::Guarded(_) => Class::Guarded(form),
            Class::Never(_) => Class::Never(form),
        };
    }
    if s[0] & 0xffc0 == 0xfe80 {
        Class::Guarded("link-local (fe80::/10)")
    } else if s[0] & 0xff00 == 0xff00 {
        Class::Never("multicast (ff00::/8)")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Class::Private("unique local (fc00::/7)")
    } else if s[0] & 0xffc0 == 0xfec0 {
        Class::Private("site-local (fec0::/10)")
    } else {
        Class::Public
    }
}

/// The IPv4 address an IPv6 address stands for, and which form it is in, for the forms that lead to
/// that IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && s[5] == 0xffff {
        Some((
            low,
            "an IPv4-mapped form (::ffff:0:0/96) of a forbidden IPv4 address",
        ))
    } else if s[..6] == [0; 6] {
        Some((
            low,
            "an IPv4-compatible form (::/96) of a forbidden IPv4 address",
        ))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some((
            low,
            "a NAT64 form (64:ff9b::/96) of a forbidden IPv4 address",
        ))
    } else if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        Some((v4, "a 6to4 form (2002::/16) of a forbidden IPv4 address"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Class {
        classify(s.parse().unwrap())
    }

    #[test]
    fn every_forbidden_range_and_its_ipv6_disguises() {
        for a in [
            "127.0.0.1",
            "127.255.1.2",
            "::1",
            "169.254.169.254",
            "fe80::1",
        ] {
            assert!(matches!(c(a), Class::Guarded(_)), "{a}: {:?}", c(a));
        }
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(matches!(c(a), Class::Never(_)), "{a}: {:?}", c(a));
        }
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "fd00::2",
            "fc00::1",
        ] {
            assert!(matches!(c(a), Class::Private(_)), "{a}: {:?}", c(a));
        }
        // The same forbidden targets, written as IPv6.
        for a in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(matches!(c(a), Class::Guarded(_)), "{a}: {:?}", c(a));
        }
        assert!(matches!(c("::ffff:10.0.0.1"), Class::Private(_)));
        assert!(matches!(c("64:ff9b::0:0"), Class::Never(_)));
        for a in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
        ] {
            assert_eq!(c(a), Class::Public, "{a}");
        }
    }
}
