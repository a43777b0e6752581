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

/// What `[tls]` asks for, read from its files.
pub(crate) struct TlsFiles {
    /// The acceptor of both ports (with `cert` and `key`).
    pub acceptor: Option<TlsAcceptor>,
    /// The authorities trusted when dialling.
    pub roots: Roots,
    /// Why peers that trust only `roots` may refuse the certificate (an
    /// issuer outside them): worth a warning, as other CAs may vouch for it.
    pub doubt: Option<String>,
}

/// Reads `[tls]`. A certificate that cannot work is refused: one out of its
/// validity dates, or one that does not name `host`, the host other nodes
/// dial this one at.
pub(crate) fn load(section: &TlsSection, host: Option<&str>) -> Result<TlsFiles, String> {
    let roots = Roots::load(section.ca.as_deref()).map_err(|e| format!("tls.ca: {e}"))?;
    let (Some(cert), Some(key)) = (&section.cert, &section.key) else {
        return Ok(TlsFiles { acceptor: None, roots, doubt: None });
    };
    let chain = chain(cert)?;
    let acceptor = acceptor(chain.clone(), key)?;
    let doubt = match host.map(|host| (host, roots.check(&chain, host))) {
        None | Some((_, Ok(()))) => None,
        Some((host, Err(rustls::Error::InvalidCertificate(e)))) => {
            use rustls::CertificateError::*;
            let shown = cert.display();
            match e {
                Expired | ExpiredContext { .. } | NotValidYet | NotValidYetContext { .. } => {
                    return Err(format!(
                        "tls.cert: {shown} is out of its validity dates ({e}); make a new one (weft cert)"
                    ));
                }
                NotValidForName | NotValidForNameContext { .. } => {
                    return Err(format!(
                        "tls.cert: {shown} does not name {host}, where other nodes dial this one (node.advertise, else node.listen): {e}; make one that does (weft cert --host {host})"
                    ));
                }
                other => Some(format!(
                    "tls.cert: nodes that trust only tls.ca (or the public authorities without it) will refuse {shown}: {other}"
                )),
            }
        }
        Some((_, Err(other))) => Some(format!("tls.cert: {} cannot be checked: {other}", cert.display())),
    };
    Ok(TlsFiles { acceptor: Some(acceptor), roots, doubt })
}

/// The certificate chain of the PEM file `cert`.
fn chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert: {} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls.cert: {} holds no CERTIFICATE block", cert.display()));
    }
    Ok(chain)
}

/// A TLS acceptor serving `chain` with its key from the PEM file `key`.
fn acceptor(chain: Vec<CertificateDer<'static>>, key: &Path) -> Result<TlsAcceptor, String> {
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
