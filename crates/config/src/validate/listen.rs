//! Listeners and the admin endpoint (which must not share a listener's address).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::error::ConfigError;
use crate::model::*;
use crate::raw::*;

use super::Validator;

impl<'a> Validator<'a> {
    pub(super) fn listeners(&mut self, raw: &[Spanned<RawListener>]) -> Vec<ListenerConfig> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, l) in raw.iter().enumerate() {
            let l = l.get_ref();
            let field = format!("listener[{i}]");
            if !seen.insert(l.name.get_ref().clone()) {
                self.err::<()>(
                    l.name.span(),
                    &format!("{field}.name"),
                    "duplicate listener name",
                );
            }
            let bind = match l.bind.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.err::<()>(
                        l.bind.span(),
                        &format!("{field}.bind"),
                        format!(
                            "`{}` is not an IP:port address (e.g. \"0.0.0.0:443\")",
                            l.bind.get_ref()
                        ),
                    );
                    continue;
                }
            };
            let reject_unknown_sni = match &l.tls_reject_unknown_sni {
                Some(r) if !l.tls => {
                    self.err::<()>(
                        r.span(),
                        &format!("{field}.tls_reject_unknown_sni"),
                        "only a listener with tls = true has handshakes to refuse",
                    );
                    false
                }
                Some(r) => *r.get_ref(),
                None => false,
            };
            let proxy_protocol = self.proxy_protocol(l, &field);
            out.push(ListenerConfig {
                name: l.name.get_ref().clone(),
                bind,
                tls: l.tls,
                reject_unknown_sni,
                proxy_protocol,
            });
        }
        if raw.is_empty() {
            self.errors.push(ConfigError {
                file: self.loc.file.to_path_buf(),
                position: None,
                field: "listener".into(),
                message: "no [[listener]] is defined: nothing would accept connections".into(),
            });
        }
        out
    }

    /// The PROXY protocol's trusted sources: both settings or neither (a header from anyone would
    /// let them pick their own address).
    fn proxy_protocol(&mut self, l: &RawListener, field: &str) -> Option<Vec<IpNet>> {
        let from: Vec<IpNet> = l
            .proxy_protocol_from
            .iter()
            .enumerate()
            .filter_map(|(j, c)| self.cidr(c, &format!("{field}.proxy_protocol_from[{j}]")))
            .collect();
        match (l.proxy_protocol, from.is_empty()) {
            (true, false) => Some(from),
            (true, true) => {
                self.err::<()>(
                    l.name.span(),
                    &format!("{field}.proxy_protocol"),
                    "proxy_protocol = true needs proxy_protocol_from = [\"CIDR of the load balancers\", ...]: a PROXY header from anyone else would let them pick their own address",
                );
                None
            }
            (false, false) => {
                self.err::<()>(
                    l.proxy_protocol_from[0].span(),
                    &format!("{field}.proxy_protocol_from"),
                    "proxy_protocol_from without proxy_protocol = true",
                );
                None
            }
            (false, true) => None,
        }
    }

    pub(super) fn admin(
        &mut self,
        raw: &RawConfig,
        listeners: &[ListenerConfig],
    ) -> Option<AdminConfig> {
        let a = raw.admin.as_ref()?;
        let token_file = a
            .token_file
            .as_ref()
            .and_then(|t| self.existing_file(t, "admin.token_file"));
        if let (Some(path), Some(raw_path)) = (&token_file, &a.token_file) {
            let empty = std::fs::read_to_string(path).map_or(true, |t| t.trim().is_empty());
            if empty {
                self.err::<()>(
                    raw_path.span(),
                    "admin.token_file",
                    format!("`{}` holds no token", path.display()),
                );
            }
        }
        let listen = match (&a.bind, &a.socket) {
            (Some(_), Some(s)) => {
                return self.err(s.span(), "admin.socket", "set bind or socket, not both")
            }
            (None, None) => {
                self.errors.push(ConfigError {
                    file: self.loc.file.to_path_buf(),
                    position: None,
                    field: "admin".into(),
                    message: "[admin] needs bind = \"127.0.0.1:9901\" or socket = \"/run/wasmgate/admin.sock\"".into(),
                });
                return None;
            }
            (None, Some(s)) => AdminListen::Unix(self.base_dir.join(s.get_ref())),
            (Some(bind), None) => {
                let Ok(addr) = bind.get_ref().parse::<SocketAddr>() else {
                    return self.err(
                        bind.span(),
                        "admin.bind",
                        format!("`{}` is not an IP:port address", bind.get_ref()),
                    );
                };
                if listeners.iter().any(|l| l.bind == addr && addr.port() != 0) {
                    return self.err(
                        bind.span(),
                        "admin.bind",
                        "the admin endpoint cannot share a proxy listener's address",
                    );
                }
                // Metrics and status name sites, tenants and errors: beyond loopback, only with a token.
                if !addr.ip().is_loopback() && a.token_file.is_none() {
                    return self.err(
                        bind.span(),
                        "admin.bind",
                        "the admin endpoint exposes metrics and status: beyond loopback it needs token_file = \"...\" (a bearer token), or use socket = \"...\" instead of bind (allow_public alone is no longer enough)",
                    );
                }
                AdminListen::Tcp(addr)
            }
        };
        let max_connections = match &a.max_connections {
            Some(n) if *n.get_ref() == 0 => {
                return self.err(n.span(), "admin.max_connections", "must be at least 1")
            }
            Some(n) => *n.get_ref(),
            None => 64,
        };
        Some(AdminConfig {
            listen,
            token_file,
            header_timeout: self
                .duration_opt(&a.header_timeout, "admin.header_timeout")
                .unwrap_or(Duration::from_secs(5)),
            lifetime: self
                .duration_opt(&a.lifetime, "admin.lifetime")
                .unwrap_or(Duration::from_secs(30)),
            max_connections,
        })
    }
}
