//! Sites, their routes and backends, and the limits and timeouts a site or route may set.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use toml::Spanned;

use crate::hosts;
use crate::model::*;
use crate::raw::*;

use super::{check_name, Validator};

/// The largest request head accepted (below hyper's 65,534-byte URI limit).
const MAX_HEADER_BYTES: u64 = 64 * 1024;

impl<'a> Validator<'a> {
    pub(super) fn site(
        &mut self,
        raw: &Spanned<RawSite>,
        field: &str,
        listeners: &HashSet<&str>,
        tls_listeners: &HashSet<&str>,
        defaults: Timeouts,
        limits: &Limits,
    ) -> Option<SiteConfig> {
        let s = raw.get_ref();
        let name = s.name.get_ref().clone();
        let mut ok = true;
        if let Err(m) = check_name(&name) {
            ok = false;
            self.err::<()>(s.name.span(), &format!("{field}.name"), m);
        }
        ok &= self.site_listeners(raw, field, listeners, tls_listeners);
        let (hosts, host_locations, hosts_ok) = self.site_hosts(raw, field);
        ok &= hosts_ok;
        let tls = s.tls.as_ref().and_then(|t| {
            let cert = self.existing_file(&t.cert, &format!("{field}.tls.cert"));
            let key = self.existing_file(&t.key, &format!("{field}.tls.key"));
            Some(TlsFiles {
                cert: cert?,
                key: key?,
            })
        });
        let timeouts = self.timeouts(&s.timeout, &s.timeouts, defaults, field);
        for (sub, v) in [
            ("header_read", &s.timeouts.header_read),
            ("keepalive", &s.timeouts.keepalive),
            ("io", &s.timeouts.io),
        ] {
            if let Some(v) = v {
                self.err::<()>(
                    v.span(),
                    &format!("{field}.timeouts.{sub}"),
                    "only the top-level [timeouts] can set this: the site is not known before the headers are read",
                );
            }
        }
        let max_body = self
            .size_opt(&s.max_body_bytes, &format!("{field}.max_body_bytes"))
            .unwrap_or(limits.max_body_bytes);
        let plugins = self.plugins(&s.plugins, &format!("{field}.plugin"));
        let routes = self.site_routes(raw, field, timeouts, max_body);
        ok.then_some(SiteConfig {
            name,
            listeners: s.listeners.get_ref().clone(),
            hosts,
            host_locations,
            default: s.default,
            tls,
            routes,
            plugins,
            tenant: self.tenant.clone(),
        })
    }

    /// Each listener named exists, and a site on a TLS listener has a certificate.
    fn site_listeners(
        &mut self,
        raw: &Spanned<RawSite>,
        field: &str,
        listeners: &HashSet<&str>,
        tls_listeners: &HashSet<&str>,
    ) -> bool {
        let s = raw.get_ref();
        let mut ok = true;
        for l in s.listeners.get_ref() {
            if !listeners.contains(l.as_str()) {
                ok = false;
                self.err::<()>(
                    s.listeners.span(),
                    &format!("{field}.listeners"),
                    format!("no listener is named `{l}`"),
                );
            } else if tls_listeners.contains(l.as_str()) && s.tls.is_none() {
                ok = false;
                self.err::<()>(
                    raw.span(),
                    &format!("{field}.tls"),
                    format!(
                        "site `{}` is on TLS listener `{l}` but has no tls = {{ cert, key }}",
                        s.name.get_ref()
                    ),
                );
            }
        }
        if s.listeners.get_ref().is_empty() {
            self.err::<()>(
                s.listeners.span(),
                &format!("{field}.listeners"),
                "a site needs at least one listener",
            );
        }
        ok
    }

    /// The site's hosts, normalised, with where each is written (for conflicts between files);
    /// whether all of them were valid.
    fn site_hosts(
        &mut self,
        raw: &Spanned<RawSite>,
        field: &str,
    ) -> (Vec<String>, Vec<String>, bool) {
        let s = raw.get_ref();
        let (mut hosts, mut locations, mut ok) = (Vec::new(), Vec::new(), true);
        for (i, h) in s.hosts.iter().enumerate() {
            match hosts::normalise(h.get_ref()) {
                Ok(n) => {
                    let (line, col) = self.loc.position(h.span().start);
                    locations.push(format!("{}:{line}:{col}", self.loc.file.display()));
                    hosts.push(n);
                }
                Err(m) => {
                    ok = false;
                    self.err::<()>(h.span(), &format!("{field}.hosts[{i}]"), m);
                }
            }
        }
        if hosts.is_empty() && !s.default {
            self.err::<()>(
                raw.span(),
                &format!("{field}.hosts"),
                "a site needs hosts = [...] or default = true",
            );
        }
        (hosts, locations, ok)
    }

    /// The site's routes; two routes one path could belong to are refused.
    fn site_routes(
        &mut self,
        raw: &Spanned<RawSite>,
        field: &str,
        timeouts: Timeouts,
        max_body: u64,
    ) -> Vec<RouteConfig> {
        let s = raw.get_ref();
        let mut routes: Vec<RouteConfig> = Vec::new();
        for (i, r) in s.routes.iter().enumerate() {
            let rfield = format!("{field}.route[{i}]");
            let Some(route) = self.route(r, &rfield, s.preserve_host, timeouts, max_body) else {
                continue;
            };
            if routes.iter().any(|o| o.path == route.path) {
                self.err::<()>(
                    r.get_ref().path.span(),
                    &format!("{rfield}.path"),
                    "duplicate route path in this site",
                );
            } else if let Some(o) = routes.iter().find(|o| {
                (o.case_insensitive || route.case_insensitive)
                    && o.path.eq_ignore_ascii_case(&route.path)
            }) {
                // Which of the two would `/API/x` belong to? Neither answer is right.
                self.err::<()>(
                    r.get_ref().path.span(),
                    &format!("{rfield}.path"),
                    format!(
                        "`{}` and `{}` differ only in case, and case_insensitive makes them the same route",
                        route.path, o.path
                    ),
                );
            }
            routes.push(route);
        }
        if s.routes.is_empty() && s.plugins.is_empty() {
            self.err::<()>(
                raw.span(),
                &format!("{field}.route"),
                "a site needs at least one [[site.route]] or a [[site.plugin]] that answers",
            );
        }
        routes
    }

    pub(super) fn route(
        &mut self,
        raw: &Spanned<RawRoute>,
        field: &str,
        site_preserve_host: bool,
        site_timeouts: Timeouts,
        site_max_body: u64,
    ) -> Option<RouteConfig> {
        let r = raw.get_ref();
        let path = r.path.get_ref();
        let mut path_ok = path.starts_with('/')
            && !path.contains(['?', '#', ' '])
            && !path.chars().any(|c| c.is_control() || c.is_whitespace());
        if !path_ok {
            self.err::<()>(
                r.path.span(),
                &format!("{field}.path"),
                "a route path starts with `/` and has no query, spaces or control characters",
            );
        } else {
            // Requests are matched in normal form: a prefix written otherwise would never match.
            match wasmgate_core::path::normalize_path(path) {
                Ok(n) if n == *path => {}
                Ok(n) => {
                    path_ok = false;
                    self.err::<()>(
                        r.path.span(),
                        &format!("{field}.path"),
                        format!("requests are matched in normal form: write `{n}`"),
                    );
                }
                Err(e) => {
                    path_ok = false;
                    self.err::<()>(r.path.span(), &format!("{field}.path"), e.reason());
                }
            }
        }
        let ca =
            r.ca.as_ref()
                .and_then(|c| self.existing_file(c, &format!("{field}.ca")));
        let backend = self.backend(&r.backend, &format!("{field}.backend"), ca);
        let allowed_origins = r.allowed_origins.as_ref().map(|list| {
            list.iter()
                .map(|o| o.get_ref().trim_end_matches('/').to_ascii_lowercase())
                .collect()
        });
        let max_tunnels = r.max_tunnels.as_ref().map(|n| *n.get_ref() as usize);
        let timeouts = self.timeouts(&r.timeout, &r.timeouts, site_timeouts, field);
        let max_body_bytes = self
            .size_opt(&r.max_body_bytes, &format!("{field}.max_body_bytes"))
            .unwrap_or(site_max_body);
        let plugins = self.plugins(&r.plugins, &format!("{field}.plugin"));
        Some(RouteConfig {
            path: path.clone(),
            backend: backend?,
            reverse: r.reverse,
            reverse_cookie_path: r.reverse_cookie_path,
            preserve_host: r.preserve_host.unwrap_or(site_preserve_host),
            timeouts,
            websocket: r.websocket.unwrap_or(true),
            allowed_origins,
            max_tunnels,
            max_body_bytes,
            case_insensitive: r.case_insensitive,
            plugins,
        })
        .filter(|_| path_ok)
    }

    pub(super) fn backend(
        &mut self,
        raw: &Spanned<String>,
        field: &str,
        ca: Option<PathBuf>,
    ) -> Option<Backend> {
        let text = raw.get_ref();
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => return self.err(raw.span(), field, format!("`{text}` is not a URL: {e}")),
        };
        let (tls, websocket_scheme, default_port) = match uri.scheme_str() {
            Some("http") => (false, false, 80),
            Some("https") => (true, false, 443),
            Some("ws") => (false, true, 80),
            Some("wss") => (true, true, 443),
            _ => {
                return self.err(
                    raw.span(),
                    field,
                    format!("`{text}` must start with http://, https://, ws:// or wss://"),
                )
            }
        };
        let Some(auth) = uri.authority() else {
            return self.err(raw.span(), field, format!("`{text}` has no host"));
        };
        if uri.query().is_some() || text.contains('#') {
            return self.err(
                raw.span(),
                field,
                "a backend URL may not carry a query or fragment",
            );
        }
        if auth.as_str().contains('@') {
            return self.err(
                raw.span(),
                field,
                "credentials in the backend URL are not supported",
            );
        }
        let host = auth.host().to_string();
        let port = auth.port_u16().unwrap_or(default_port);
        if let Some(e) = &self.egress {
            if let Err(why) = crate::egress::check_literal(&e.allow, e.own, &e.binds, &host, port) {
                return self.err(
                    raw.span(),
                    field,
                    format!("backend refused by the tenant egress policy: {why}"),
                );
            }
        }
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Some(Backend {
            url: text.clone(),
            tls,
            websocket_scheme,
            authority,
            host,
            port,
            path: if uri.path().is_empty() {
                "/".into()
            } else {
                uri.path().to_string()
            },
            ca,
        })
    }

    pub(super) fn timeouts(
        &mut self,
        short: &Option<Spanned<String>>,
        raw: &RawTimeouts,
        base: Timeouts,
        field: &str,
    ) -> Timeouts {
        let dot = if field.is_empty() {
            String::new()
        } else {
            format!("{field}.")
        };
        let shorthand = self.duration_opt(short, &format!("{dot}timeout"));
        Timeouts {
            connect: self
                .duration_opt(&raw.connect, &format!("{dot}timeouts.connect"))
                .unwrap_or(base.connect),
            response: self
                .duration_opt(&raw.response, &format!("{dot}timeouts.response"))
                .or(shorthand)
                .unwrap_or(base.response),
            idle: self
                .duration_opt(&raw.idle, &format!("{dot}timeouts.idle"))
                .or(shorthand)
                .unwrap_or(base.idle),
        }
    }

    pub(super) fn limits(&mut self, raw: &RawLimits) -> Limits {
        let d = Limits::default();
        let max_header_bytes = self
            .size_opt(&raw.max_header_bytes, "limits.max_header_bytes")
            .unwrap_or(d.max_header_bytes as u64);
        // At most 64KiB: past it hyper's own URI limit would answer 414 where the log says 431.
        if !(8192..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
            if let Some(v) = &raw.max_header_bytes {
                self.err::<()>(
                    v.span(),
                    "limits.max_header_bytes",
                    "must be between 8KiB and 64KiB",
                );
            }
        }
        Limits {
            max_header_bytes: max_header_bytes.clamp(8192, MAX_HEADER_BYTES) as usize,
            max_body_bytes: self
                .size_opt(&raw.max_body_bytes, "limits.max_body_bytes")
                .unwrap_or(d.max_body_bytes),
            max_connections: raw
                .max_connections
                .as_ref()
                .map_or(d.max_connections, |n| *n.get_ref() as usize),
            max_connections_per_ip: match &raw.max_connections_per_ip {
                Some(n) if *n.get_ref() == 0 => self.err(
                    n.span(),
                    "limits.max_connections_per_ip",
                    "must be at least 1 (leave it out for no limit)",
                ),
                Some(n) => Some(*n.get_ref() as usize),
                None => None,
            },
            min_rate: self.min_rate(raw),
        }
    }

    /// `min_rate = "1KiB/s"` (bytes per second, with a size unit), judged over `min_rate_window`.
    pub(super) fn min_rate(&mut self, raw: &RawLimits) -> Option<MinRate> {
        let window = self
            .duration_opt(&raw.min_rate_window, "limits.min_rate_window")
            .unwrap_or(Duration::from_secs(10));
        let Some(rate) = &raw.min_rate else {
            if let Some(w) = &raw.min_rate_window {
                self.err::<()>(
                    w.span(),
                    "limits.min_rate_window",
                    "min_rate_window without min_rate",
                );
            }
            return None;
        };
        let text = rate.get_ref().trim();
        let Some(size) = text.strip_suffix("/s") else {
            return self.err(
                rate.span(),
                "limits.min_rate",
                format!("`{text}` is not a rate: write e.g. \"1KiB/s\""),
            );
        };
        let bytes_per_sec = match crate::units::parse_size(size) {
            Ok(0) => return self.err(rate.span(), "limits.min_rate", "must be more than 0/s"),
            Ok(n) => n,
            Err(m) => return self.err(rate.span(), "limits.min_rate", m),
        };
        if window < Duration::from_secs(1) {
            if let Some(w) = &raw.min_rate_window {
                self.err::<()>(w.span(), "limits.min_rate_window", "must be at least 1s");
            }
            return None;
        }
        Some(MinRate {
            bytes_per_sec,
            window,
        })
    }

    /// Two sites on one listener may not claim the same host, and a listener has one default site.
    pub(super) fn host_conflicts(&mut self, raw: &[Spanned<RawSite>], sites: &[SiteConfig]) {
        let mut owner: HashMap<(String, String), String> = HashMap::new();
        for site in sites {
            let span = raw
                .iter()
                .find(|r| r.get_ref().name.get_ref() == &site.name)
                .map_or(0..0, |r| r.span());
            for l in &site.listeners {
                let mut claims: Vec<String> = site.hosts.clone();
                if site.default {
                    claims.push("(default site)".into());
                }
                for h in claims {
                    if let Some(prev) = owner.insert((l.clone(), h.clone()), site.name.clone()) {
                        self.err::<()>(
                            span.clone(),
                            &format!("site `{}`", site.name),
                            format!(
                                "host `{h}` on listener `{l}` is already claimed by site `{prev}`"
                            ),
                        );
                    }
                }
            }
        }
    }
}
