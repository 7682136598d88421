//! A blocking client of the public API, shared by the demo, `engram
//! prune` and `engram eval`, plus helpers for Fashion-MNIST images.

use anyhow::{Context, bail};
use base64::Engine as _;
use image::{GrayImage, ImageFormat};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engram_ingest::idx::{FASHION_MNIST_CLASSES, IdxImages};

pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
}

/// How a command reaches the server: its URL, its API key and, for a
/// server whose certificate a private CA signed, that CA.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of a running `engram serve` (`https://` when it has
    /// `[security.tls]`).
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// API key of the server (`[security] api_key` or the read-only one).
    #[arg(long, env = "ENGRAM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM file of the CA that signed the server's certificate, trusted
    /// beside the system's roots.
    #[arg(long, env = "ENGRAM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl Client {
    pub fn connect(args: &ServerArgs) -> anyhow::Result<Client> {
        Client::new(
            &args.server,
            args.api_key.as_deref(),
            args.ca_cert.as_deref(),
        )
    }

    /// A client of `server`; `api_key` is sent with every request as
    /// `Authorization: Bearer <key>` when the server has keys on; the
    /// certificates in `ca_cert` are trusted for `https://` servers.
    pub fn new(
        server: &str,
        api_key: Option<&str>,
        ca_cert: Option<&Path>,
    ) -> anyhow::Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("the API key must be printable ASCII")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::blocking::Client::builder()
            .pool_idle_timeout(engram_meta::serve::CLIENT_POOL_IDLE)
            .timeout(Duration::from_secs(600))
            .default_headers(headers);
        if let Some(path) = ca_cert {
            let pem = fs_err::read(path).context("--ca-cert / ENGRAM_CA_CERT")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("no PEM certificate in {}", path.display()))?;
            if certs.is_empty() {
                bail!("no PEM certificate in {}", path.display());
            }
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Client {
            http: builder.build()?,
            base: server.trim_end_matches('/').to_string(),
        })
    }

    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let text = response.text()?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok((status, value))
    }

    /// One call; a non-2xx answer is an error carrying the server's own
    /// message (`error.message` of the JSON error body).
    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self
            .call(method.clone(), path, body)
            .with_context(|| format!("cannot reach {}", self.base))?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        match value["error"]["message"].as_str() {
            Some(message) => bail!(
                "{method} {path}: {status} {}: {message}",
                value["error"]["code"].as_str().unwrap_or("error")
            ),
            None => bail!("{method} {path}: {status} {value}"),
        }
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, value) = self.call(reqwest::Method::POST, path, Some(body))?;
        if !(200..300).contains(&status) {
            bail!("POST {path} answered {status}: {value}");
        }
        Ok(value)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, value) = self.call(reqwest::Method::GET, path, None)?;
        if status != 200 {
            bail!("GET {path} answered {status}: {value}");
        }
        Ok(value)
    }

    pub fn delete_collection(&self, name: &str) -> anyhow::Result<()> {
        let (status, value) = self.call(
            reqwest::Method::DELETE,
            &format!("/v1/collections/{name}"),
            None,
        )?;
        if status != 204 && status != 404 {
            bail!("DELETE collection {name} answered {status}: {value}");
        }
        Ok(())
    }

    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = self.call(reqwest::Method::GET, "/healthz", None) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "server at {} did not become healthy within {timeout:?}",
                    self.base
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn png_base64(images: &IdxImages, i: usize) -> anyhow::Result<String> {
    let image = GrayImage::from_raw(
        images.cols as u32,
        images.rows as u32,
        images.image(i).to_vec(),
    )
    .context("image size does not match its pixels")?;
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, ImageFormat::Png)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png.into_inner()))
}

pub fn class_name(label: u8) -> &'static str {
    FASHION_MNIST_CLASSES[label as usize]
}

pub fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<28} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Today's date (UTC), for reports.
pub fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string()
}
