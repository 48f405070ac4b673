//! Routing: host normalisation and lookup, longest-prefix route choice and ProxyPass mapping on
//! arbitrary input. Never panics, and the chosen route really covers the path.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wasmgate_runtime::router::{
    lenient_agrees, longest_prefix, map_path, normalise_host, pick_route, prefix_matches, prefix_matches_as, HostTable, Pick,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    patterns: Vec<&'a str>,
    default: Option<u8>,
    authority: &'a str,
    prefixes: Vec<&'a str>,
    /// Which routes are `case_insensitive`, by position.
    folds: Vec<bool>,
    bases: Vec<&'a str>,
    path: &'a str,
}

fuzz_target!(|i: Input<'_>| {
    let mut table = HostTable::default();
    for (n, p) in i.patterns.iter().enumerate() {
        // Config validation only lets normalised patterns through.
        if let Ok(p) = wasmgate_config::hosts::normalise(p) {
            table.insert(&p, n);
        }
    }
    if let Some(d) = i.default {
        table.set_default(d as usize);
    }
    let host = normalise_host(i.authority);
    assert_eq!(normalise_host(&host), host, "host normalisation is not idempotent: {:?}", i.authority);
    let _ = table.lookup(&host);

    // Routes as config validation accepts them; the path as request handling produces it.
    let prefixes: Vec<&str> = i.prefixes.iter().copied().filter(|p| p.starts_with('/') && !p.contains(['?', '#', ' '])).collect();
    let Ok(path) = wasmgate_core::path::normalize_path(i.path) else { return };
    if let Some(idx) = longest_prefix(prefixes.iter().copied(), &path) {
        let prefix = prefixes[idx];
        assert!(prefix_matches(prefix, &path));
        assert!(prefixes.iter().filter(|p| prefix_matches(p, &path)).all(|p| p.len() <= prefix.len()));
        let base = i.bases.first().map(|b| if b.starts_with('/') { b.to_string() } else { format!("/{b}") }).unwrap_or_else(|| "/".into());
        let mapped = map_path(prefix, &base, &path);
        assert!(mapped.starts_with(base.trim_end_matches('/')), "{prefix:?} {base:?} {path:?} -> {mapped:?}");
    }

    // The pick with case-insensitive routes: what it chooses covers the path (or is the path plus `/`),
    // and cutting the prefix off for the backend never splits a character.
    let routes: Vec<(&str, bool)> = prefixes.iter().enumerate().map(|(n, p)| (*p, i.folds.get(n).copied().unwrap_or(false))).collect();
    let pick = pick_route(routes.iter().copied(), &path);
    match pick {
        Pick::Route(n) => {
            let (prefix, fold) = routes[n];
            assert!(prefix_matches_as(prefix, &path, fold), "{prefix:?} {fold} {path:?}");
            let _ = map_path(prefix, "/", &path);
        }
        Pick::AddSlash(n) => {
            let (prefix, fold) = routes[n];
            assert_eq!(prefix.len(), path.len() + 1, "{prefix:?} {path:?}");
            assert!(prefix_matches_as(prefix, &format!("{path}/"), fold), "{prefix:?} {path:?}");
        }
        Pick::Nothing => assert!(routes.iter().all(|(p, f)| !prefix_matches_as(p, &path, *f))),
    }
    // A path read exactly as the routes are (no folding anywhere) always agrees with itself.
    if i.folds.iter().all(|f| !f) {
        assert!(lenient_agrees(prefixes.iter().copied(), &path, pick.index()), "{prefixes:?} {path:?}");
    }
});
