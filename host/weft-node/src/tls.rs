//! The node's side of TLS: its certificate and key, read from PEM files,
//! as the acceptor of both listeners, replaced by a reload for the
//! connections that come after it. Whom the node trusts when it dials is
//! `weft_client::Roots`.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use weft_client::Roots;

use crate::config::TlsSection;
use crate::metrics::Metrics;

/// The certificate both listeners serve now.
pub struct ServerTls {
    acceptor: RwLock<TlsAcceptor>,
}

impl ServerTls {
    pub(crate) fn new(acceptor: TlsAcceptor) -> Self {
        Self { acceptor: RwLock::new(acceptor) }
    }

    /// The TLS handshake of a new connection on `port`, within the time a
    /// connection has to start talking; a failure is counted and logged.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        port: &str,
        metrics: &Metrics,
    ) -> Option<TlsStream<TcpStream>> {
        let peer = stream.peer_addr().ok();
        let acceptor = self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
        match tokio::time::timeout(crate::ws::UPGRADE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                metrics.tls_failures.inc();
                tracing::debug!(?peer, port, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, port, "no TLS handshake in time; closing");
                None
            }
        }
    }

    /// Serves `acceptor` to the connections from now on; open ones keep theirs.
    pub(crate) fn replace(&self, acceptor: TlsAcceptor) {
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
    }
}

/// What `[tls]` asks for: the acceptor of both ports (with `cert` and
/// `key`) and the authorities trusted when dialling.
pub(crate) fn load(section: &TlsSection) -> Result<(Option<TlsAcceptor>, Roots), String> {
    let acceptor = match (&section.cert, &section.key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let roots = Roots::load(section.ca.as_deref()).map_err(|e| format!("tls.ca: {e}"))?;
    Ok((acceptor, roots))
}

/// A TLS acceptor serving the certificate chain `cert` with its key `key`.
fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
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
