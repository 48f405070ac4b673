//! The request as the pipeline has settled it and plugins see and change it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::conn::TlsConn;

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
    /// When the request arrived (decision-cache ages are measured from it: no clock read per lookup).
    pub at: Instant,
}
