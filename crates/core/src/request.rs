//! The request as the pipeline has settled it and plugins see and change it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Version};

use crate::conn::{Scheme, TlsConn};

#[derive(Debug, Clone)]
pub struct RequestState {
    pub id: String,
    pub method: Method,
    pub scheme: Scheme,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub client: IpAddr,
    pub site: Arc<str>,
    pub route: Arc<str>,
    pub websocket: bool,
    pub version: Version,
    pub tls: Option<TlsConn>,
    /// When the request arrived (decision-cache ages are measured from it: no clock read per lookup).
    pub at: Instant,
}

/// A version as the access line and `Via` name it.
pub fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/3",
    }
}
