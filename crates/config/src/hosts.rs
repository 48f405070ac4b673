//! Host names as configs write them and as ownership compares them: one normal form
//! ([`normalise`]), and the two relations tenants' claims are judged by ([`overlap`], [`covers`]).

/// Lower-case, no port, no trailing dot; `*.` allowed only as the first label.
pub fn normalise(h: &str) -> Result<String, String> {
    let mut h = h.trim().trim_end_matches('.').to_ascii_lowercase();
    if !h.is_ascii() {
        // IDN: one spelling for comparison and routing, the punycode one clients send.
        let (star, rest) = match h.strip_prefix("*.") {
            Some(rest) => ("*.", rest),
            None => ("", h.as_str()),
        };
        match idna::domain_to_ascii(rest) {
            Ok(a) => h = format!("{star}{a}"),
            Err(_) => return Err(format!("`{h}` is not a valid internationalised host name")),
        }
    }
    let bare = h.strip_prefix("*.").unwrap_or(&h);
    let valid = !bare.is_empty()
        && bare
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if valid || bare.parse::<std::net::IpAddr>().is_ok() {
        Ok(h)
    } else {
        Err(format!(
            "`{h}` is not a host name (write names without scheme or port; `*.` only in front)"
        ))
    }
}

/// Can one request host match both patterns?
pub fn overlap(a: &str, b: &str) -> bool {
    fn wildcard_matches(pattern: &str, host: &str) -> bool {
        match pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.') && label != "*"),
            None => false,
        }
    }
    a == b || wildcard_matches(a, b) || wildcard_matches(b, a)
}

/// Does the operator's grant `grant` cover the claim `claim`? An exact grant covers that host; a
/// grant `*.acme.example` covers every name under `acme.example`, wildcards included, at any depth
/// (the tenant owns the subtree).
pub fn covers(grant: &str, claim: &str) -> bool {
    if grant == claim {
        return true;
    }
    let Some(suffix) = grant.strip_prefix("*.") else {
        return false;
    };
    let bare = claim.strip_prefix("*.").unwrap_or(claim);
    bare.len() > suffix.len()
        && bare.ends_with(suffix)
        && bare[..bare.len() - suffix.len()].ends_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_follow_routing() {
        assert!(overlap("a.test", "a.test"));
        assert!(overlap("*.platform.example", "login.platform.example"));
        assert!(overlap("login.platform.example", "*.platform.example"));
        assert!(!overlap("*.platform.example", "platform.example"));
        assert!(!overlap("*.platform.example", "a.b.platform.example"));
        assert!(!overlap("*.platform.example", "*.b.platform.example"));
        assert!(!overlap("a.test", "b.test"));
    }

    #[test]
    fn grants_cover_their_subtree() {
        assert!(covers("acme.example", "acme.example"));
        assert!(!covers("acme.example", "www.acme.example"));
        assert!(covers("*.acme.example", "www.acme.example"));
        assert!(covers("*.acme.example", "a.b.acme.example"));
        assert!(covers("*.acme.example", "*.acme.example"));
        assert!(covers("*.acme.example", "*.eu.acme.example"));
        assert!(!covers("*.acme.example", "acme.example"));
        assert!(!covers("*.acme.example", "evilacme.example"));
    }
}
