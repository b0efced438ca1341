//! The gateway's certificate: loading `--tls-cert` / `--tls-key` into a rustls server
//! configuration (aws-lc-rs provider, TLS 1.2 and 1.3) for the `wss` listener and QUIC, reloading
//! it on SIGHUP ([`ReloadableConfig`]), and making self-signed certificates (`gen-cert`).

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// ALPN of the `wss` listener: HTTP/1.1 only (the WebSocket upgrade is an HTTP/1.1 request). A
/// client that offers no ALPN is served as well (C14).
pub const WSS_ALPN: &[u8] = b"http/1.1";

/// Reads a PEM certificate chain and its private key, and checks that they match.
pub fn load_identity(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("--tls-cert {}: cannot read", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--tls-cert {}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("--tls-cert {}: no certificate in the file", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: no PEM private key", key.display()))?;
    Ok((chain, key))
}

fn build_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
    let (chain, key_der) = load_identity(cert, key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "--tls-cert {} / --tls-key {}: the key does not match the certificate or is of an unsupported kind",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A server configuration for `cert` and `key`, offering `alpn` (empty: no ALPN).
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    build_config(cert, key, alpn).map(Arc::new)
}

/// The `wss` listener's configuration (C14): TLS 1.3 and 1.2, ALPN `http/1.1` (or none), no
/// session resumption. Resumption is off because it would cost memory (a server-side session
/// cache, or ticket keys and two extra records per handshake) for little: a TLS 1.3 resumption
/// still does the key exchange, and an ECDSA P-256 signature is cheap. SNI is not used: one
/// certificate for every name.
pub fn wss_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = build_config(cert, key, &[WSS_ALPN])?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A server configuration that SIGHUP can replace: connections take the current one when they
/// are accepted, so a new certificate applies to new handshakes while established connections
/// keep theirs. A file that does not load leaves the current configuration in place.
pub struct ReloadableConfig {
    cert: PathBuf,
    key: PathBuf,
    build: fn(&Path, &Path) -> anyhow::Result<Arc<rustls::ServerConfig>>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ReloadableConfig {
    /// Loads `cert` and `key` with `build` (e.g. [`wss_config`]); fails if they do not load.
    pub fn load(
        cert: &Path,
        key: &Path,
        build: fn(&Path, &Path) -> anyhow::Result<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        Ok(ReloadableConfig {
            cert: cert.to_owned(),
            key: key.to_owned(),
            build,
            current: RwLock::new(build(cert, key)?),
        })
    }

    /// The configuration for a connection accepted now.
    #[must_use]
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on success new handshakes use them, on failure nothing changes.
    /// Counted in `herald_tls_reloads_total{result}`.
    pub fn reload(&self) -> anyhow::Result<()> {
        match (self.build)(&self.cert, &self.key) {
            Ok(config) => {
                match self.current.write() {
                    Ok(mut c) => *c = config,
                    Err(poisoned) => *poisoned.into_inner() = config,
                }
                metrics::counter!("herald_tls_reloads_total", "result" => "ok").increment(1);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("herald_tls_reloads_total", "result" => "failed").increment(1);
                Err(e)
            }
        }
    }
}

/// A self-signed certificate and its private key, both PEM, for `names` (DNS names or IP
/// addresses): ECDSA P-256 by default, Ed25519 if `ed25519`; valid from an hour ago for 365
/// days. For development and tests; a production gateway uses a certificate from a CA.
pub fn self_signed(names: &[String], ed25519: bool) -> anyhow::Result<(String, String)> {
    self_signed_for_days(names, ed25519, 365)
}

/// [`self_signed`], valid for `days` days.
pub fn self_signed_for_days(
    names: &[String],
    ed25519: bool,
    days: u32,
) -> anyhow::Result<(String, String)> {
    let alg = if ed25519 {
        &rcgen::PKCS_ED25519
    } else {
        &rcgen::PKCS_ECDSA_P256_SHA256
    };
    let key = rcgen::KeyPair::generate_for(alg).context("generating the key")?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).context("subject alternative names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("herald", String::as_str),
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificates_load_and_reload_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        for ed25519 in [false, true] {
            let (c, k) = self_signed(&["localhost".into(), "127.0.0.1".into()], ed25519).unwrap();
            std::fs::write(&cert, c).unwrap();
            std::fs::write(&key, k).unwrap();
            wss_config(&cert, &key).unwrap();
        }
        let holder = ReloadableConfig::load(&cert, &key, wss_config).unwrap();
        let before = holder.current();
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(holder.reload().is_err());
        assert!(
            Arc::ptr_eq(&before, &holder.current()),
            "kept the old config"
        );
        let (c, k) = self_signed(&["localhost".into()], false).unwrap();
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
        holder.reload().unwrap();
        assert!(
            !Arc::ptr_eq(&before, &holder.current()),
            "took the new config"
        );
    }
}
