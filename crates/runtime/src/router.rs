//! Choosing a site by host and a route by path. Pure functions over plain data, unit-tested here.

use std::borrow::Cow;
use std::collections::HashMap;

/// Host → site index for one listener.
#[derive(Debug, Default)]
pub struct HostTable {
    exact: HashMap<String, usize>,
    /// `(".example.org", site)` for `*.example.org`, longest suffix first.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl HostTable {
    pub fn insert(&mut self, pattern: &str, site: usize) {
        match pattern.strip_prefix('*') {
            Some(suffix) => {
                self.wildcards.push((suffix.to_string(), site));
                self.wildcards
                    .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
            }
            None => {
                self.exact.insert(pattern.to_string(), site);
            }
        }
    }

    pub fn set_default(&mut self, site: usize) {
        self.default = Some(site);
    }

    /// The site for a normalised host name (see [`normalise_host`]), else the default site.
    pub fn lookup(&self, host: &str) -> Option<usize> {
        self.lookup_named(host).or(self.default)
    }

    /// The site that names `host` among its hosts (exactly or by wildcard); never the default.
    pub fn lookup_named(&self, host: &str) -> Option<usize> {
        if let Some(&s) = self.exact.get(host) {
            return Some(s);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| {
                // `*.example.org` covers exactly one more label: `a.example.org`, not `example.org`
                // nor `a.b.example.org` (as TLS wildcard certificates do).
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && !host[..host.len() - suffix.len()].contains('.')
            })
            .map(|&(_, s)| s)
    }
}

/// `Host`/`:authority`/SNI → lower-case name without port or trailing dot; IPv6 literals without
/// brackets. Anything that is not a plausible host name or IP address comes back as the whole
/// (trimmed, lower-cased) input: it can never equal a configured host, and normalising twice gives the
/// same answer (found by the `router` fuzz target: `[[` became `[`, then ``).
pub fn normalise_host(authority: &str) -> Cow<'_, str> {
    // The common case, already normal (`app.example.org`, `127.0.0.1:8080`): borrowed, no allocation.
    let (name, port) = authority.split_once(':').unwrap_or((authority, ""));
    let normal_name = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c);
    if !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name.bytes().all(normal_name)
        && port.bytes().all(|c| c.is_ascii_digit())
    {
        return Cow::Borrowed(name);
    }
    Cow::Owned(normalise_slow(authority))
}

fn normalise_slow(authority: &str) -> String {
    let whole = authority.trim().to_ascii_lowercase();
    let host = if let Some(rest) = whole.strip_prefix('[') {
        rest.split_once(']')
            .map_or(whole.as_str(), |(inside, _)| inside)
    } else if whole.matches(':').count() > 1 {
        // A bare IPv6 literal: there is no port to split off.
        whole.as_str()
    } else {
        match whole.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
            _ => whole.as_str(),
        }
    };
    let host = host.trim_end_matches('.');
    let plausible = host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty()
            && !host.starts_with('.')
            && host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_'));
    if plausible {
        host.to_string()
    } else {
        whole
    }
}

/// Does the route prefix `prefix` cover `path`? Only on whole segments: `/socket` covers `/socket`
/// and `/socket/x`, not `/socketx`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.ends_with('/')
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Index of the longest route prefix covering `path`. `prefixes` in any order. Unlike Apache's
/// first-match ProxyPass, order in the config never matters.
pub fn longest_prefix<'a>(
    prefixes: impl IntoIterator<Item = &'a str>,
    path: &str,
) -> Option<usize> {
    prefixes
        .into_iter()
        .enumerate()
        .filter(|(_, p)| prefix_matches(p, path))
        .max_by_key(|(_, p)| p.len())
        .map(|(i, _)| i)
}

/// The route a path selects, by [`pick_route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The route at this index serves the path.
    Route(usize),
    /// The path is this route's prefix without its trailing slash (`/ops` for `/ops/`): nginx answers
    /// it with a redirect to the prefix, unless another route is written exactly as the path.
    AddSlash(usize),
    Nothing,
}

impl Pick {
    /// The route chosen, either way.
    pub fn index(self) -> Option<usize> {
        match self {
            Pick::Route(i) | Pick::AddSlash(i) => Some(i),
            Pick::Nothing => None,
        }
    }
}

/// Does `prefix` cover `path`, comparing ASCII letters case-insensitively when `fold`?
pub fn prefix_matches_as(prefix: &str, path: &str, fold: bool) -> bool {
    if !fold {
        return prefix_matches(prefix, path);
    }
    let (p, q) = (prefix.as_bytes(), path.as_bytes());
    q.len() >= p.len()
        && q[..p.len()].eq_ignore_ascii_case(p)
        && (q.len() == p.len() || p.ends_with(b"/") || q[p.len()] == b'/')
}

/// The route for `path` among `(prefix, case_insensitive)` pairs: the longest prefix covering it, or
/// the slash redirect (see [`Pick::AddSlash`]). One pass, no allocation. Folding keeps lengths (ASCII
/// only), so [`map_path`] cuts a case-insensitive prefix off at the same place.
pub fn pick_route<'a>(routes: impl IntoIterator<Item = (&'a str, bool)>, path: &str) -> Pick {
    let mut best: Option<(usize, usize)> = None;
    let mut exact = false;
    let mut slash = None;
    for (i, (prefix, fold)) in routes.into_iter().enumerate() {
        if prefix_matches_as(prefix, path, fold) {
            exact |= prefix.len() == path.len();
            if best.is_none_or(|(len, _)| prefix.len() > len) {
                best = Some((prefix.len(), i));
            }
        } else if slash.is_none() && is_slash_of(prefix, path, fold) {
            slash = Some(i);
        }
    }
    match (slash, best) {
        (Some(i), _) if !exact => Pick::AddSlash(i),
        (_, Some((_, i))) => Pick::Route(i),
        _ => Pick::Nothing,
    }
}

/// Is `prefix` exactly `path` plus a trailing `/`?
fn is_slash_of(prefix: &str, path: &str, fold: bool) -> bool {
    prefix.len() == path.len() + 1
        && prefix.ends_with('/')
        && if fold {
            prefix.as_bytes()[..path.len()].eq_ignore_ascii_case(path.as_bytes())
        } else {
            prefix.starts_with(path)
        }
}

/// Would a route chosen for the lenient reading of a path (see `wasmgate_core::path::lenient_reading`)
/// be `strict`, the one chosen for the path itself? `folded` are the routes' prefixes read the same
/// way, in route order. Routes whose prefixes fold to the same text tie, and any of them agrees.
pub fn lenient_agrees<'a>(
    folded: impl IntoIterator<Item = &'a str>,
    lenient: &str,
    strict: Option<usize>,
) -> bool {
    let mut best = None;
    let mut strict_len = None;
    let mut exact = false;
    let (mut slash, mut strict_slash) = (false, false);
    for (i, prefix) in folded.into_iter().enumerate() {
        let mine = strict == Some(i);
        if prefix_matches(prefix, lenient) {
            exact |= prefix.len() == lenient.len();
            best = best.max(Some(prefix.len()));
            if mine {
                strict_len = Some(prefix.len());
            }
        } else if is_slash_of(prefix, lenient, false) {
            slash = true;
            strict_slash |= mine;
        }
    }
    if slash && !exact {
        return strict_slash;
    }
    match strict {
        None => best.is_none(),
        Some(_) => strict_len.is_some() && strict_len == best,
    }
}

/// ProxyPass mapping: the matched `prefix` of `path` is replaced by the backend's `base` path, joined on
/// exactly one `/` (Apache would produce `//` or glue segments together when the slashes disagree).
pub fn map_path(prefix: &str, base: &str, path: &str) -> String {
    let rest = &path[prefix.len().min(path.len())..];
    if rest.is_empty() {
        // `/socket` → `ws://b/socket`; `/app/` → `http://b/x/`.
        return base.to_string();
    }
    let mut out = String::with_capacity(base.len() + rest.len() + 1);
    out.push_str(base.trim_end_matches('/'));
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_exact_wildcard_default() {
        let mut t = HostTable::default();
        t.insert("chat.example.org", 0);
        t.insert("*.example.org", 1);
        assert_eq!(t.lookup("chat.example.org"), Some(0));
        assert_eq!(t.lookup("api.example.org"), Some(1));
        assert_eq!(t.lookup("a.b.example.org"), None);
        assert_eq!(t.lookup("example.org"), None);
        t.set_default(2);
        assert_eq!(t.lookup("other.test"), Some(2));
        assert_eq!(t.lookup_named("other.test"), None);
        assert_eq!(t.lookup_named("api.example.org"), Some(1));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalise_host("Chat.Example.ORG:8443"), "chat.example.org");
        assert_eq!(normalise_host("chat.example.org."), "chat.example.org");
        assert_eq!(normalise_host("[::1]:443"), "::1");
        assert_eq!(normalise_host("127.0.0.1"), "127.0.0.1");
        assert_eq!(normalise_host("::1"), "::1");
        // Garbage stays as it is, so normalising is idempotent (fuzz regression).
        for garbage in ["[[", "[", ":", "x.:.", "[]]", "a b"] {
            let once = normalise_host(garbage);
            assert_eq!(normalise_host(&once), once, "{garbage:?}");
        }
        assert_eq!(normalise_host("[["), "[[");
        // The borrowing fast path agrees with the full normalisation.
        for a in [
            "app.test",
            "app.test:8080",
            "127.0.0.1:80",
            "a-b_c.d",
            "x:",
            "a..b",
            "a.b:1:2",
        ] {
            assert_eq!(normalise_host(a), normalise_slow(a), "{a}");
        }
    }

    #[test]
    fn prefixes_match_on_segments() {
        assert!(prefix_matches("/socket", "/socket"));
        assert!(prefix_matches("/socket", "/socket/x"));
        assert!(!prefix_matches("/socket", "/socketx"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/app/", "/app/x"));
        assert!(!prefix_matches("/app/", "/app"));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        // The seed's order: `/` before `/socket`. Apache would send /socket to `/`.
        let routes = ["/", "/socket"];
        assert_eq!(longest_prefix(routes, "/socket"), Some(1));
        assert_eq!(longest_prefix(routes, "/socket/a"), Some(1));
        assert_eq!(longest_prefix(routes, "/socketx"), Some(0));
        assert_eq!(longest_prefix(["/a"], "/b"), None);
    }

    #[test]
    fn proxypass_mapping() {
        assert_eq!(map_path("/", "/", "/x"), "/x");
        assert_eq!(map_path("/app/", "/", "/app/x"), "/x");
        assert_eq!(map_path("/app/", "/base/", "/app/x/y"), "/base/x/y");
        assert_eq!(map_path("/socket", "/socket", "/socket"), "/socket");
        assert_eq!(
            map_path("/socket", "/socket", "/socket/room"),
            "/socket/room"
        );
        assert_eq!(map_path("/app", "/base/", "/app/x"), "/base/x");
        assert_eq!(map_path("/app/", "/base", "/app/x"), "/base/x");
        assert_eq!(map_path("/app/", "/base/", "/app/"), "/base/");
    }

    #[test]
    fn routes_are_picked_with_case_folding_and_slash_redirects() {
        let routes = [
            ("/", false),
            ("/admin", false),
            ("/ops/", false),
            ("/Docs", true),
        ];
        assert_eq!(pick_route(routes, "/admin/x"), Pick::Route(1));
        assert_eq!(pick_route(routes, "/ADMIN/x"), Pick::Route(0));
        assert_eq!(pick_route(routes, "/docs/a"), Pick::Route(3));
        assert_eq!(pick_route(routes, "/DOCS"), Pick::Route(3));
        assert_eq!(pick_route(routes, "/docsx"), Pick::Route(0));
        assert_eq!(pick_route(routes, "/ops"), Pick::AddSlash(2));
        assert_eq!(pick_route(routes, "/ops/"), Pick::Route(2));
        assert_eq!(pick_route(routes, "/OPS"), Pick::Route(0));
        assert_eq!(pick_route([("/x/", true)], "/X"), Pick::AddSlash(0));
        // A route written exactly as the path wins over the redirect.
        assert_eq!(
            pick_route([("/ops/", false), ("/ops", false)], "/ops"),
            Pick::Route(1)
        );
        assert_eq!(pick_route([("/a", false)], "/b"), Pick::Nothing);
        // Non-ASCII bytes never panic the folded comparison.
        assert_eq!(pick_route([("/é", true)], "/É"), Pick::Nothing);
        assert_eq!(pick_route([("/ab", true)], "/é"), Pick::Nothing);
    }

    #[test]
    fn the_lenient_route_must_be_the_strict_one() {
        let folded = ["/", "/admin", "/ops/"];
        assert!(lenient_agrees(folded, "/api/projects", Some(0)));
        assert!(!lenient_agrees(folded, "/admin/x", Some(0)));
        assert!(lenient_agrees(folded, "/admin/x", Some(1)));
        assert!(
            !lenient_agrees(folded, "/ops", Some(0)),
            "`/OPS` would reach /ops/ via the slash"
        );
        assert!(lenient_agrees(folded, "/ops", Some(2)));
        assert!(!lenient_agrees(["/admin"], "/admin", None));
        assert!(lenient_agrees(["/admin"], "/public", None));
        // `/API` and `/api` fold to the same prefix: either agrees, `/` does not.
        let twins = ["/", "/api", "/api"];
        assert!(lenient_agrees(twins, "/api/x", Some(1)));
        assert!(lenient_agrees(twins, "/api/x", Some(2)));
        assert!(!lenient_agrees(twins, "/api/x", Some(0)));
    }
}
