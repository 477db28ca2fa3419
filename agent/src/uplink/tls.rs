//! TLS for the uplink: which servers to trust and how to prove who we are.
//!
//! Trust = the system's roots (rustls-native-certs reads the same store curl and
//! openssl use; Debian's `ca-certificates`, which the package depends on) plus the PEM file
//! `uplink.ca_file`, for sites that run their own CA. The roots are demanded only where a
//! TLS connection needs them ([`require_roots`] for https URLs, mqtts): a site that
//! uploads over plain http on its own network starts without any CA store.
//! Mutual TLS = `client_cert` (a PEM chain) + `client_key` (PKCS#8, PKCS#1 or SEC1 PEM).
//! One crypto provider (ring) is passed explicitly, so nothing depends on a process-wide
//! default being installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {kind} {path}: {detail}")]
    File {
        kind: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path}: no certificate in PEM file")]
    NoCertificate { path: PathBuf },
    /// An environment problem, not a configuration one: the service exits with
    /// `EX_OSFILE` (72), which systemd restarts once the package is installed.
    #[error(
        "no trusted root certificates for https: the system store is empty (install the \
         ca-certificates package) and no uplink.ca_file is set"
    )]
    NoRoots,
    #[error("client_cert and client_key must be set together")]
    HalfClientCert,
}

/// Fails with [`TlsError::NoRoots`] when neither the system store nor `ca_file` holds a
/// root: called before anything that will make a TLS connection.
pub fn require_roots(ca_file: Option<&Path>) -> Result<(), TlsError> {
    if let Some(path) = ca_file {
        if !read_pem_certs(path, "ca_file")?.is_empty() {
            return Ok(());
        }
    }
    if native_roots().is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(())
}

/// The TLS settings of the uplink's HTTP agent. With no root at all the agent is still
/// built (plain-http URLs need none); [`require_roots`] is what refuses https without one.
pub fn tls_config(
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<TlsConfig, TlsError> {
    let mut roots: Vec<Certificate<'static>> = native_roots()
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if let Some(path) = ca_file {
        let extra = read_certs(path, "ca_file")?;
        tracing::debug!(path = %path.display(), count = extra.len(), "extra trusted roots");
        roots.extend(extra);
    }
    let client = match (client_cert, client_key) {
        (Some(c), Some(k)) => Some(ClientCert::new_with_certs(
            &read_certs(c, "client_cert")?,
            read_key(k)?,
        )),
        (None, None) => None,
        _ => return Err(TlsError::HalfClientCert),
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(client)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// The certificates of a PEM file (at least one), for both the HTTPS and MQTT uplinks.
pub(crate) fn read_pem_certs(
    path: &Path,
    kind: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |detail: String| TlsError::File {
        kind,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The system's trusted roots; unreadable ones are logged and skipped.
pub(crate) fn native_roots() -> Vec<CertificateDer<'static>> {
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "some system root certificates could not be read");
    }
    native.certs
}

fn read_certs(path: &Path, kind: &'static str) -> Result<Vec<Certificate<'static>>, TlsError> {
    Ok(read_pem_certs(path, kind)?
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect())
}

fn read_key(path: &Path) -> Result<PrivateKey<'static>, TlsError> {
    let file_err = |detail: String| TlsError::File {
        kind: "client_key",
        path: path.to_owned(),
        detail,
    };
    // Validated with rustls-pki-types first (its errors name the problem, never key
    // material); ureq's `KeyKind` is not public, so ureq reads the same PEM bytes.
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(e.to_string()))?;
    let pem = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    PrivateKey::from_pem(&pem).map_err(|e| file_err(e.to_string()))
}
