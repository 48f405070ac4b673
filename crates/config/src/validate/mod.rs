//! Raw config → validated [`Config`]. Every check runs even after one fails, so a user fixing a file
//! sees all of its problems at once.

mod listen;
mod plugin;
mod site;
mod tenant;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::error::{ConfigError, Locator};
use crate::model::*;
use crate::raw::*;
use crate::tenant_fs::Confined;
use crate::units::{parse_duration, SizeValue};

pub(crate) struct Validator<'a> {
    loc: Locator<'a>,
    base_dir: PathBuf,
    errors: Vec<ConfigError>,
    /// Which files this config may name (a tenant's stay inside its directory).
    files: crate::FileScope,
    /// For a tenant's file: every file it names is opened beneath this directory (see `tenant_fs`).
    confine: Option<Confined>,
    /// For a tenant's file: the tenant's name, stamped on its sites.
    tenant: Option<String>,
    /// For a tenant's file: what its backends may reach, judged for literals as they are read.
    egress: Option<Egress<'a>>,
}

/// The egress allowances of the tenant being validated and the proxy's own sockets.
pub(crate) struct Egress<'a> {
    allow: Vec<crate::egress::Allow>,
    own: &'a crate::egress::OwnAddrs,
    binds: Vec<(std::sync::Arc<str>, SocketAddr)>,
}
impl<'a> Validator<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let base_dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Validator {
            loc: Locator::new(file, text),
            base_dir: base_dir.clone(),
            errors: Vec::new(),
            files: crate::FileScope::operator(&base_dir),
            confine: None,
            tenant: None,
            egress: None,
        }
    }

    fn err<T>(
        &mut self,
        span: std::ops::Range<usize>,
        field: &str,
        msg: impl Into<String>,
    ) -> Option<T> {
        let e = self.loc.at(span, field, msg);
        self.errors.push(e);
        None
    }

    pub fn finish(self) -> Vec<ConfigError> {
        self.errors
    }

    pub fn config(&mut self, raw: RawConfig) -> Config {
        let listeners = self.listeners(&raw.listeners);
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, cidr)| self.cidr(cidr, &format!("trusted_proxies[{i}]")))
            .collect();
        let client_address_header = self.client_address_header(&raw);
        let defaults = self.timeouts(&raw.timeout, &raw.timeouts, Timeouts::default(), "");
        let header_read_timeout = self
            .duration_opt(&raw.timeouts.header_read, "timeouts.header_read")
            .unwrap_or(Duration::from_secs(30));
        let keepalive_timeout = self
            .duration_opt(&raw.timeouts.keepalive, "timeouts.keepalive")
            .unwrap_or(Duration::from_secs(60));
        // nginx's `send_timeout` and `client_body_timeout` default (HAProxy's `timeout client` is
        // usually set near it): long enough for a slow mobile link, short enough to free the slot.
        let io_timeout = self
            .duration_opt(&raw.timeouts.io, "timeouts.io")
            .unwrap_or(Duration::from_secs(60));
        if io_timeout.is_zero() {
            if let Some(v) = &raw.timeouts.io {
                self.err::<()>(v.span(), "timeouts.io", "must be more than 0");
            }
        }
        let shutdown_grace = self
            .duration_opt(&raw.shutdown_grace, "shutdown_grace")
            .unwrap_or(Duration::from_secs(30));
        let limits = self.limits(&raw.limits);
        let sites = self.sites(&raw, &listeners, defaults, &limits);
        let cache_dir = raw.cache_dir.as_ref().map(|d| self.base_dir.join(d));
        let tenants = self.tenants(&raw);
        let admin = self.admin(&raw, &listeners);
        let (log_format, access_log_format) = self.log_formats(&raw);

        Config {
            path: self.loc.file.to_path_buf(),
            listeners,
            sites,
            trusted_proxies,
            client_address_header,
            watch: raw.watch.unwrap_or(true),
            limits,
            header_read_timeout,
            keepalive_timeout,
            shutdown_grace,
            cache_dir,
            default_timeouts: defaults,
            tenants,
            admin,
            io_timeout: if io_timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                io_timeout
            },
            log_format,
            access_log_format,
            workers: self.workers(&raw),
        }
    }

    /// The header trusted proxies report the client in (`x-forwarded-for` unless set).
    fn client_address_header(&mut self, raw: &RawConfig) -> ClientAddressHeader {
        match raw
            .client_address_header
            .as_ref()
            .map(|h| (h.get_ref().to_ascii_lowercase(), h.span()))
        {
            None => ClientAddressHeader::XForwardedFor,
            Some((h, _)) if h == "x-forwarded-for" => ClientAddressHeader::XForwardedFor,
            Some((h, _)) if h == "forwarded" => ClientAddressHeader::Forwarded,
            Some((other, span)) => self
                .err(
                    span,
                    "client_address_header",
                    format!("`{other}` is neither \"x-forwarded-for\" nor \"forwarded\""),
                )
                .unwrap_or_default(),
        }
    }

    /// Every site, checked against the listeners, defaults and limits, and against each other.
    fn sites(
        &mut self,
        raw: &RawConfig,
        listeners: &[ListenerConfig],
        defaults: Timeouts,
        limits: &Limits,
    ) -> Vec<SiteConfig> {
        let names: HashSet<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let tls_listeners: HashSet<&str> = listeners
            .iter()
            .filter(|l| l.tls)
            .map(|l| l.name.as_str())
            .collect();

        let mut sites = Vec::new();
        let mut site_names = HashSet::new();
        for (i, site) in raw.sites.iter().enumerate() {
            let field = format!("site[{i}]");
            if !site_names.insert(site.get_ref().name.get_ref().clone()) {
                let s = site.get_ref().name.span();
                self.err::<()>(s, &format!("{field}.name"), "duplicate site name");
            }
            if let Some(s) = self.site(site, &field, &names, &tls_listeners, defaults, limits) {
                sites.push(s);
            }
        }
        self.host_conflicts(&raw.sites, &sites);
        sites
    }

    /// `log_format` and `access_log_format` (which follows the first unless set).
    fn log_formats(&mut self, raw: &RawConfig) -> (LogFormat, AccessLogFormat) {
        let log_format = match raw
            .log_format
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                self.err::<()>(
                    span,
                    "log_format",
                    format!("`{other}` is neither \"text\" nor \"json\""),
                );
                LogFormat::Text
            }
        };
        let access_log_format = match raw
            .access_log_format
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None => match log_format {
                LogFormat::Text => AccessLogFormat::Text,
                LogFormat::Json => AccessLogFormat::Json,
            },
            Some(("text", _)) => AccessLogFormat::Text,
            Some(("json", _)) => AccessLogFormat::Json,
            Some(("combined", _)) => AccessLogFormat::Combined,
            Some(("common", _)) => AccessLogFormat::Common,
            Some((other, span)) => {
                self.err::<()>(
                    span,
                    "access_log_format",
                    format!("`{other}` is not one of \"text\", \"json\", \"combined\", \"common\""),
                );
                AccessLogFormat::Text
            }
        };
        (log_format, access_log_format)
    }

    /// Worker threads: one per core unless set, at most 256.
    fn workers(&mut self, raw: &RawConfig) -> usize {
        match &raw.workers {
            Some(n) if *n.get_ref() > 256 => {
                self.err::<()>(n.span(), "workers", "at most 256");
                1
            }
            Some(n) => *n.get_ref() as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn duration_opt(&mut self, raw: &Option<Spanned<String>>, field: &str) -> Option<Duration> {
        let raw = raw.as_ref()?;
        match parse_duration(raw.get_ref()) {
            Ok(d) => Some(d),
            Err(m) => self.err(raw.span(), field, m),
        }
    }

    fn size_opt(&mut self, raw: &Option<Spanned<SizeValue>>, field: &str) -> Option<u64> {
        let raw = raw.as_ref()?;
        match raw.get_ref().bytes() {
            Ok(n) => Some(n),
            Err(m) => self.err(raw.span(), field, m),
        }
    }

    fn cidr(&mut self, raw: &Spanned<String>, field: &str) -> Option<IpNet> {
        let text = raw.get_ref();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                self.err::<()>(
                    raw.span(),
                    field,
                    format!("`{text}` is not an IP address or CIDR"),
                )
            })
            .ok()
    }

    fn existing_file(&mut self, raw: &Spanned<String>, field: &str) -> Option<PathBuf> {
        if let Some(c) = &self.confine {
            // The name's shape is judged by the scope (absolute, `..`); the file itself is opened
            // beneath the tenant's directory, no symlink followed; the use opens it again so.
            let named = Path::new(raw.get_ref());
            let verdict = match self.files.resolve(raw.get_ref()) {
                Err(r @ (super::FileRefused::Absolute(_) | super::FileRefused::ParentDir(_))) => {
                    Err(r.to_string())
                }
                _ => c.check(named),
            };
            return match verdict {
                Ok(()) => Some(self.base_dir.join(named)),
                Err(m) => self.err(raw.span(), field, m),
            };
        }
        let path = match self.files.resolve(raw.get_ref()) {
            Ok(path) => path,
            Err(refused) => return self.err(raw.span(), field, refused.to_string()),
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            // A device or FIFO would never end, or block the build that reads it.
            Ok(_) => self.err(
                raw.span(),
                field,
                format!("`{}` is not a regular file", path.display()),
            ),
            Err(_) => self.err(
                raw.span(),
                field,
                format!("file `{}` does not exist", path.display()),
            ),
        }
    }
}

/// Site and plugin names go into log lines, metric labels and `/status`: letters, digits and
/// `-_.`, starting with a letter or digit, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a name: use letters, digits, `-`, `_` and `.` (starting with a letter or digit, at most 64)",
            wasmgate_core::text::escaped(name)
        ))
    }
}
