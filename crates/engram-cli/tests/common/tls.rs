//! Certificates made by the tests themselves (rcgen), never committed: a
//! CA, and one node certificate it signed for 127.0.0.1 and localhost that
//! every node of a test serves and presents as a client (both usages).

use std::path::{Path, PathBuf};

pub struct TestCerts {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The node certificate (PEM) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn authority() -> (rcgen::CertificateParams, rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "engram test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).unwrap();
    (params, key, cert)
}

impl TestCerts {
    /// A new CA and node certificate under `dir` (`<name>-ca.pem`, ...).
    pub fn generate(dir: &Path, name: &str) -> TestCerts {
        std::fs::create_dir_all(dir).unwrap();
        let (ca_params, ca_key, ca) = authority();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("engram {name}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let write = |file: &str, text: String| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        TestCerts {
            ca: write("ca.pem", ca.pem()),
            cert: write("node.pem", cert.pem()),
            key: write("node.key", key.serialize_pem()),
        }
    }

    /// `[security.tls]` for a node's config file (after `[security]`).
    pub fn toml(&self) -> String {
        format!(
            "\n[security.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.ca.display().to_string()
        )
    }

    /// The same as environment variables.
    pub fn env(&self) -> Vec<(String, String)> {
        [("CERT", &self.cert), ("KEY", &self.key), ("CA", &self.ca)]
            .into_iter()
            .map(|(name, path)| {
                (
                    format!("ENGRAM_SECURITY__TLS__{name}"),
                    path.display().to_string(),
                )
            })
            .collect()
    }

    /// The CA as reqwest takes it.
    pub fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap()
    }

    /// The node certificate and key as a client identity (for calling an
    /// internal port).
    pub fn identity(&self) -> reqwest::Identity {
        let mut pem = std::fs::read(&self.cert).unwrap();
        pem.extend(std::fs::read(&self.key).unwrap());
        reqwest::Identity::from_pem(&pem).unwrap()
    }

    /// A blocking client that trusts only this CA.
    pub fn client(&self) -> reqwest::blocking::ClientBuilder {
        reqwest::blocking::Client::builder()
            .pool_idle_timeout(engram_meta::serve::CLIENT_POOL_IDLE)
            .tls_certs_only([self.root()])
    }
}
