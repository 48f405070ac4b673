//! TLS termination: rustls with TLS 1.2+ only, ALPN h2/http1.1, and the certificate picked per
//! handshake by SNI from the *current* runtime, so a reload that changes certificates takes effect for
//! new handshakes while established connections keep theirs.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use wasmgate_runtime::certs::provider;
use wasmgate_runtime::SharedRuntime;

/// Picks the certificate for a handshake on one listener.
#[derive(Debug)]
pub struct SniResolver {
    runtime: SharedRuntime,
    listener: usize,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let rt = self.runtime.load();
        let listener = rt.listeners.get(self.listener)?;
        listener.certificate_for(hello.server_name())
    }
}

pub fn server_config(runtime: SharedRuntime, listener: usize) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { runtime, listener }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    Arc::new(cfg)
}
