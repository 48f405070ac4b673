//! TLS material, the same for every layer that needs it: one crypto provider (ring), certificate
//! chains and keys loaded and checked to belong together, and the client configuration backends are
//! reached with. Terminating TLS (the per-handshake certificate choice) is the server layer's `tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM certificate chain and its private key, read by the caller (as the operator's file, or a
/// tenant's through `tenant_fs`), checked to belong together; the paths are for messages.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    cert: &Path,
    key_pem: &[u8],
    key: &Path,
) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(ck)
}

/// Why a backend client configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the CA bundle `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA bundle `{}` is not a regular file of at most {MAX_CA_BYTES} bytes", path.display())]
    NotABundle { path: PathBuf },
    #[error("{}: bad PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: unusable CA certificate: {source}", path.display())]
    Unusable {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A CA bundle larger than this is refused (Mozilla's whole root store is about 200 KiB).
pub const MAX_CA_BYTES: u64 = 4 << 20;

/// Read a CA bundle: a regular file (not a FIFO that would block a build, not `/dev/zero`), bounded.
pub fn read_ca(path: &Path) -> Result<Vec<u8>, CertError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read = |source| CertError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Opened without blocking: a FIFO put in the bundle's place would block a plain open until
    // someone wrote to it, and the build with it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() || meta.len() > MAX_CA_BYTES {
        return Err(CertError::NotABundle {
            path: path.to_path_buf(),
        });
    }
    let mut pem = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CA_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(read)?;
    if pem.len() as u64 > MAX_CA_BYTES {
        return Err(CertError::NotABundle {
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}

/// The client side of TLS to backends: trusting `ca` (a bundle's path, for messages, and its
/// bytes), or the web PKI roots; TLS 1.2+.
pub fn client_config(
    ca: Option<(&Path, &[u8])>,
    alpn_http1: bool,
) -> Result<Arc<rustls::ClientConfig>, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some((path, pem)) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|source| CertError::Pem {
                    path: path.to_path_buf(),
                    source,
                })?;
                roots.add(cert).map_err(|source| CertError::Unusable {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn_http1 {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(cfg))
}
