//! Whom a connection to a node trusts: the certificate authorities that may
//! vouch for a `wss://` or `https://` node. Used by the CLI and by nodes
//! dialling their peers. TLS comes from rustls with its ring provider.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Trusted certificate authorities, ready as a rustls client config.
#[derive(Clone)]
pub struct Roots {
    config: Arc<rustls::ClientConfig>,
    /// The same judgement the config makes, for checking a node's own
    /// certificate before it serves it.
    verifier: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Roots")
    }
}

static PUBLIC: LazyLock<Roots> = LazyLock::new(|| {
    let store = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    Roots::from_store(store).expect("ring supports rustls' default protocol versions")
});

impl Roots {
    /// The authorities of the public web (Mozilla's list).
    pub fn public() -> Roots {
        PUBLIC.clone()
    }

    /// The certificates of a PEM file (typically one private CA), trusted
    /// instead of the public authorities.
    pub fn from_pem_file(path: &Path) -> Result<Roots, String> {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA certificates from {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown} is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{shown} holds no CERTIFICATE block; give the PEM file of the CA that signed the nodes' certificates"
            ));
        }
        let mut store = rustls::RootCertStore::empty();
        for cert in certs {
            store.add(cert).map_err(|e| format!("{shown}: a certificate cannot be used as a CA: {e}"))?;
        }
        Self::from_store(store).map_err(|e| format!("{shown}: {e}"))
    }

    /// `ca` if given, else the public authorities.
    pub fn load(ca: Option<&Path>) -> Result<Roots, String> {
        ca.map_or_else(|| Ok(Self::public()), Self::from_pem_file)
    }

    fn from_store(store: rustls::RootCertStore) -> Result<Roots, rustls::Error> {
        let store = Arc::new(store);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Roots { config: Arc::new(config), verifier })
    }

    /// Judges `chain` (the end certificate first) served for `host` (a DNS
    /// name or an IP address) as a client trusting these authorities would,
    /// now.
    pub fn check(&self, chain: &[CertificateDer<'static>], host: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let Some((end, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.verifier.verify_server_cert(end, intermediates, &name, &[], UnixTime::now()).map(|_| ())
    }

    /// The rustls client config that trusts these authorities.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}
