//! The node's side of TLS: its certificate and key, read from PEM files,
//! as the acceptor of both listeners, replaced by a reload for the
//! connections that come after it. Whom the node trusts when it dials is
//! `weft_client::Roots`.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificate both listeners serve now.
pub struct ServerTls {
    acceptor: RwLock<TlsAcceptor>,
}

impl ServerTls {
    pub(crate) fn new(acceptor: TlsAcceptor) -> Self {
        Self { acceptor: RwLock::new(acceptor) }
    }

    /// The acceptor for a new connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `acceptor` to the connections from now on; open ones keep theirs.
    pub(crate) fn replace(&self, acceptor: TlsAcceptor) {
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
    }
}

/// A TLS acceptor serving the certificate chain `cert` with its key `key`.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert: {} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls.cert: {} holds no CERTIFICATE block", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls.key: cannot read a private key from {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls: the key does not fit the certificate, or is of a kind rustls cannot use: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
