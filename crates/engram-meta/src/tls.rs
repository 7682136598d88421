//! TLS configurations from `[security.tls]` (docs/security.md): HTTPS on
//! the public listener, mutual TLS on internal ports, and the client side
//! of the latter. rustls with the aws-lc provider, named explicitly rather
//! than taken from the process default, which is ambiguous when several
//! crates enable different providers.
//!
//! Everything is loaded once, at start: a certificate or key that cannot
//! be read or does not match fails the start with the file named, never a
//! first connection.

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

use engram_core::config::TlsConfig;

use crate::error::{MetaError, Result};

/// What a listener serves TLS with.
pub type ServerTls = Arc<rustls::ServerConfig>;

/// The ALPN protocol every listener speaks: Engram serves HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_error(path: &Path, what: &str, error: impl std::fmt::Display) -> MetaError {
    MetaError::Tls(format!("{what} {}: {error}", path.display()))
}

/// The certificates of a PEM file, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, "cannot read certificates from", e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, "cannot read certificates from", e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate in", "expected PEM"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| tls_error(path, "cannot read a private key from", e))
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(path, "not a usable CA certificate in", e))?;
    }
    Ok(Arc::new(roots))
}

/// The node's certificate chain and key (validated by the config: both or
/// neither).
fn identity(
    tls: &TlsConfig,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Ok(Some((read_certs(cert)?, read_key(key)?))),
        _ => Ok(None),
    }
}

fn mismatch(tls: &TlsConfig, error: rustls::Error) -> MetaError {
    let cert = tls.cert.as_deref().unwrap_or(Path::new("?"));
    tls_error(cert, "certificate and key do not go together:", error)
}

/// The public listener's configuration: the node's certificate, no client
/// certificate asked for (callers prove who they are with API keys).
/// `None` without `tls.cert`.
pub fn public_server_config(tls: &TlsConfig) -> Result<Option<ServerTls>> {
    let Some((certs, key)) = identity(tls)? else {
        return Ok(None);
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| MetaError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| mismatch(tls, e))?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Both ends of internal traffic under `tls.ca`: what an internal port
/// serves (a client certificate signed by the CA required) and what an
/// internal client presents and trusts (the node's certificate; only
/// certificates the CA signed).
pub struct InternalTls {
    pub server: ServerTls,
    pub client: rustls::ClientConfig,
}

impl InternalTls {
    /// `None` without `tls.ca`.
    pub fn from_config(tls: &TlsConfig) -> Result<Option<InternalTls>> {
        let Some(ca) = &tls.ca else {
            return Ok(None);
        };
        let roots = read_roots(ca)?;
        let Some((certs, key)) = identity(tls)? else {
            return Err(MetaError::Tls(
                "security.tls.ca needs security.tls.cert and key".into(),
            ));
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| tls_error(ca, "cannot verify clients with", e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MetaError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| mismatch(tls, e))?;
        server.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MetaError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| mismatch(tls, e))?;
        client.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Some(InternalTls {
            server: Arc::new(server),
            client,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_matching_set_loads_and_every_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_params = {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p
        };
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let node_key = rcgen::KeyPair::generate().unwrap();
        let node = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&node_key, &issuer)
            .unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let config = TlsConfig {
            cert: Some(write(dir.path(), "node.pem", &node.pem())),
            key: Some(write(dir.path(), "node.key", &node_key.serialize_pem())),
            ca: Some(write(dir.path(), "ca.pem", &ca.pem())),
        };
        assert!(public_server_config(&config).unwrap().is_some());
        assert!(InternalTls::from_config(&config).unwrap().is_some());
        assert!(
            public_server_config(&TlsConfig::default())
                .unwrap()
                .is_none()
        );
        assert!(
            InternalTls::from_config(&TlsConfig::default())
                .unwrap()
                .is_none()
        );

        let wrong_key = TlsConfig {
            key: Some(write(dir.path(), "other.key", &other_key.serialize_pem())),
            ..config.clone()
        };
        let missing = TlsConfig {
            cert: Some(dir.path().join("absent.pem")),
            ..config.clone()
        };
        let not_pem = TlsConfig {
            ca: Some(write(dir.path(), "garbage.pem", "not a certificate")),
            ..config.clone()
        };
        for (bad, named) in [
            (&wrong_key, "node.pem"),
            (&missing, "absent.pem"),
            (&not_pem, "garbage.pem"),
        ] {
            let error = match InternalTls::from_config(bad) {
                Err(error) => error.to_string(),
                Ok(_) => panic!("{bad:?} loaded"),
            };
            assert!(error.contains(named), "{error}");
        }
        assert!(public_server_config(&wrong_key).is_err());
    }
}
