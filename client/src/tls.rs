//! [`TlsRoots`]: whom a `wss://` or `quic://` connection trusts.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::ClientError;

/// The trust anchors of `wss://` and `quic://` connections, as a ready rustls client configuration (aws-lc-rs
/// provider, TLS 1.3 and 1.2). Cheap to clone. Without one, a connection trusts the
/// system's certificate store ([`TlsRoots::native`]).
#[derive(Clone)]
pub struct TlsRoots(Arc<rustls::ClientConfig>);

impl TlsRoots {
    /// Trusts every certificate in the PEM file at `path` (a private CA, or a gateway's
    /// self-signed certificate from `herald-gateway gen-cert`).
    pub fn from_pem_file(path: &Path) -> Result<Self, ClientError> {
        let bad = |e: &dyn fmt::Display| ClientError::Tls(format!("{}: {e}", path.display()));
        let mut store = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if store.is_empty() {
            return Err(bad(&"no certificate in the file"));
        }
        Ok(Self::from_root_store(store))
    }

    /// Trusts every certificate in `pem` (PEM text, e.g. a test CA made at run time).
    pub fn from_pem(pem: &[u8]) -> Result<Self, ClientError> {
        let bad = |e: &dyn fmt::Display| ClientError::Tls(format!("root certificates: {e}"));
        let mut store = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if store.is_empty() {
            return Err(bad(&"no certificate in the PEM text"));
        }
        Ok(Self::from_root_store(store))
    }

    /// Trusts the anchors in `store`.
    #[must_use]
    pub fn from_root_store(store: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default TLS versions")
            .with_root_certificates(store)
            .with_no_client_auth();
        TlsRoots(Arc::new(config))
    }

    /// Uses a rustls client configuration as it is (client certificates, ALPN, ...).
    #[must_use]
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        TlsRoots(config)
    }

    /// The system's certificate store, loaded once per process.
    pub fn native() -> Result<Self, ClientError> {
        static NATIVE: OnceLock<Result<TlsRoots, String>> = OnceLock::new();
        NATIVE
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut store = rustls::RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(format!(
                        "no usable system certificates ({:?})",
                        found.errors
                    ));
                }
                Ok(Self::from_root_store(store))
            })
            .clone()
            .map_err(ClientError::Tls)
    }

    /// The rustls configuration.
    #[must_use]
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.0.clone()
    }
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsRoots(..)")
    }
}

/// Equal when they are the same configuration (not a comparison of contents).
impl PartialEq for TlsRoots {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TlsRoots {}
