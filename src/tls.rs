//! The HTTPS proxy listener's certificate: read from PEM files into a TLS server
//! configuration (rustls, ring), and the alert a listener without one answers a TLS
//! ClientHello with.

use futures_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A listener's TLS server configuration.
pub type ServerConfig = Arc<rustls::ServerConfig>;

/// Read `cert` (the chain, leaf first) and `key` (PKCS#8, PKCS#1 or SEC1) and check that
/// they belong together. The error says which file and why.
pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let at = |p: &Path| p.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert = {:?}: {e}", at(cert)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_cert = {:?}: {e}", at(cert)))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert = {:?}: no CERTIFICATE in the file",
            at(cert)
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "tls_key = {:?}: {e} (a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            at(key)
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_cert / tls_key: {e}"))?;
    Ok(Arc::new(config))
}

/// A listener's `tls_cert` and `tls_key`: both or neither.
pub fn load_pair(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerConfig>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => load(cert, key).map(Some),
        (Some(_), None) => Err("tls_cert: needs tls_key".into()),
        (None, Some(_)) => Err("tls_key: needs tls_cert".into()),
    }
}

/// A fatal `handshake_failure` alert record (TLS 1.0 record version, which every client
/// accepts before a version is agreed): what a listener without a certificate answers a
/// ClientHello with, so that the client reports a refusal, not silence.
pub const NO_CERTIFICATE_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28];
