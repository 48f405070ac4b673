//! Plugins: WebAssembly components that decide about requests. (Runtime filled in by the plugin work.)

pub mod builtin;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Response};

use crate::config::{ConfigError, PluginConfig};
use crate::error::ProxyError;
use crate::proxy::body::ProxyBody;
use crate::proxy::TlsConn;

/// The request as plugins see and change it.
#[derive(Debug, Clone)]
pub struct RequestState {
    pub id: String,
    pub method: String,
    pub scheme: &'static str,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub client: IpAddr,
    pub site: Arc<str>,
    pub route: Arc<str>,
    pub websocket: bool,
    pub version: &'static str,
    pub tls: Option<TlsConn>,
}

pub enum Flow {
    Continue,
    Respond { response: Response<ProxyBody>, plugin: String },
}

pub struct Plugin {
    pub name: String,
}

#[derive(Default, Clone)]
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
}

impl Chain {
    /// Files the plugins of this chain were loaded from or read.
    pub fn inputs(&self, _out: &mut Vec<std::path::PathBuf>) {}

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn on_request(
        &self,
        _state: &mut RequestState,
        _headers: &mut HeaderMap,
        _ran: &mut Vec<Arc<Plugin>>,
    ) -> Result<Flow, ProxyError> {
        Ok(Flow::Continue)
    }
}

pub fn on_response(_ran: &[Arc<Plugin>], _state: &RequestState, response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
}

pub struct PluginHost {}

impl PluginHost {
    pub fn new() -> Self {
        PluginHost {}
    }

    pub fn chain(&self, configs: &[PluginConfig], _site: &str) -> Result<Chain, Vec<ConfigError>> {
        if configs.is_empty() {
            return Ok(Chain::default());
        }
        Err(configs
            .iter()
            .map(|c| ConfigError {
                file: c.location.clone().into(),
                position: None,
                field: "plugin".into(),
                message: "plugins are not available yet".into(),
            })
            .collect())
    }
}
