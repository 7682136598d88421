//! What a cluster process needs to talk to its peers and to be talked to
//! by them: the cluster secret and, with `[security.tls] ca`, mutual TLS.
//!
//! The secret is what every internal request (Raft RPC, worker RPC,
//! transfers, ATTACH, heartbeats) carries and every internal router
//! requires, so that reaching an internal port is not enough to rewrite the
//! cluster's metadata or a shard. It travels in the `engram-cluster-secret`
//! header, set once on each internal HTTP client; the guard compares
//! SHA-256 digests in constant time and refuses (401) before any body is
//! read. During a rotation a second secret is accepted, never sent
//! (`security.accepted_cluster_secret`, docs/security.md).
//!
//! With a CA, internal ports serve HTTPS and take only clients whose
//! certificate the CA signed; internal clients call `https://` and trust
//! only the CA (so the secret never crosses the network in the clear and a
//! stolen secret alone does not get a caller in).

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_core::config::SecurityConfig;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;

use crate::error::Result;
use crate::tls::InternalTls;

/// The header that carries the secret on internal requests.
pub const HEADER: HeaderName = HeaderName::from_static("engram-cluster-secret");

/// Internal routes that stay open: liveness probes carry no secret, and
/// answering "ok" tells a caller nothing it could not learn by connecting.
const OPEN_PATHS: &[&str] = &["/healthz"];

/// This process's cluster secret, or none (`--insecure`, or the embedded
/// node, which has no internal port), and its internal TLS, if any. Cheap
/// to clone.
#[derive(Clone, Default)]
pub struct ClusterAccess {
    inner: Option<Arc<Secrets>>,
    tls: Option<Arc<InternalTls>>,
    /// The local address internal connections leave from
    /// (`cluster.source_address`); the system's choice when unset.
    source: Option<std::net::IpAddr>,
}

struct Secrets {
    /// What this process sends, marked sensitive so it is never printed.
    sent: HeaderValue,
    /// Digests of what it accepts: the secret, then the rotation's other.
    accepted: Vec<[u8; 32]>,
    refused_missing: AtomicU64,
    refused_wrong: AtomicU64,
}

/// Requests an internal router refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    pub missing: u64,
    pub wrong: u64,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl std::fmt::Debug for ClusterAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.is_set() { "<set>" } else { "<none>" };
        f.debug_struct("ClusterAccess")
            .field("secret", &shown)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ClusterAccess {
    /// No secret: internal routes take any caller.
    pub fn none() -> ClusterAccess {
        ClusterAccess::default()
    }

    /// The secret of `security` (validated: printable ASCII, so it is a
    /// valid header value), if any, and its internal TLS: fails when a
    /// certificate, key or CA of `security.tls` cannot be used.
    pub fn from_config(security: &SecurityConfig) -> Result<ClusterAccess> {
        let tls = InternalTls::from_config(&security.tls)?.map(Arc::new);
        let Some(secret) = security.cluster_secret.as_deref() else {
            return Ok(ClusterAccess {
                inner: None,
                tls,
                source: None,
            });
        };
        let mut sent = HeaderValue::from_str(secret)
            .expect("security.cluster_secret is validated as printable ASCII");
        sent.set_sensitive(true);
        let accepted = std::iter::once(secret)
            .chain(security.accepted_cluster_secret.as_deref())
            .map(|s| digest(s.as_bytes()))
            .collect();
        Ok(ClusterAccess {
            inner: Some(Arc::new(Secrets {
                sent,
                accepted,
                refused_missing: AtomicU64::new(0),
                refused_wrong: AtomicU64::new(0),
            })),
            tls,
            source: None,
        })
    }

    /// Internal connections leave from `source` (a multi-homed host's
    /// cluster network; the fault-injecting proxies of the tests tell the
    /// processes apart by it).
    pub fn with_source_address(mut self, source: Option<std::net::IpAddr>) -> ClusterAccess {
        self.source = source;
        self
    }

    /// The URL of `path` on a peer's internal address `addr` (host:port):
    /// `https` when internal traffic is under TLS.
    pub fn url(&self, addr: &str, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}{path}")
    }

    /// What an internal listener serves with: mutual TLS, or none.
    pub fn server_tls(&self) -> Option<crate::tls::ServerTls> {
        self.tls.as_ref().map(|tls| tls.server.clone())
    }

    pub fn is_set(&self) -> bool {
        self.inner.is_some()
    }

    /// The headers every internal client sends by default.
    pub fn client_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(inner) = &self.inner {
            headers.insert(HEADER, inner.sent.clone());
        }
        headers
    }

    /// A client builder for internal calls that sends the secret and,
    /// under TLS, presents this node's certificate, trusts only the
    /// cluster's CA and never falls back to plain HTTP.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder()
            .default_headers(self.client_headers())
            .pool_idle_timeout(crate::serve::CLIENT_POOL_IDLE)
            .local_address(self.source);
        match &self.tls {
            None => builder,
            Some(tls) => builder
                .tls_backend_preconfigured(tls.client.clone())
                .https_only(true),
        }
    }

    /// `router` behind the guard: every route but [`OPEN_PATHS`] needs the
    /// secret. Without a secret the router is returned as it is.
    pub fn guard<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        match &self.inner {
            None => router,
            Some(inner) => router.layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                require_secret,
            )),
        }
    }

    /// How many requests the guard refused so far.
    pub fn refusals(&self) -> Refusals {
        self.inner
            .as_ref()
            .map(|inner| Refusals {
                missing: inner.refused_missing.load(Ordering::Relaxed),
                wrong: inner.refused_wrong.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }
}

impl Secrets {
    /// Whether `presented` is one of the accepted secrets. Every accepted
    /// digest is compared whatever the first answer, so the time taken
    /// says nothing about which came close.
    fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        self.accepted.iter().fold(false, |ok, accepted| {
            ok | bool::from(accepted.as_slice().ct_eq(presented.as_slice()))
        })
    }
}

/// The secret a request presents: the `engram-cluster-secret` header, or
/// `Authorization: Bearer <secret>` (how Prometheus sends a scrape's
/// credentials).
fn presented_secret(headers: &HeaderMap) -> Option<&[u8]> {
    match headers.get(&HEADER) {
        Some(value) => Some(value.as_bytes()),
        None => headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer ")),
    }
}

async fn require_secret(
    State(secrets): State<Arc<Secrets>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = presented_secret(request.headers());
    let (reason, counter) = match presented {
        None => ("missing", &secrets.refused_missing),
        Some(value) if secrets.accepts(value) => return next.run(request).await,
        Some(_) => ("wrong", &secrets.refused_wrong),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        path = request.uri().path(),
        reason,
        "internal request refused: no valid cluster secret"
    );
    let message = match reason {
        "missing" => "internal routes need the cluster secret (header engram-cluster-secret)",
        _ => "the cluster secret is not valid",
    };
    let body = serde_json::json!({ "error": { "code": "unauthenticated", "message": message } });
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(secret: &str, accepted: Option<&str>) -> SecurityConfig {
        SecurityConfig {
            cluster_secret: Some(secret.into()),
            accepted_cluster_secret: accepted.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn the_secret_and_the_rotations_other_are_accepted_and_nothing_else() {
        let secret = ClusterAccess::from_config(&security(
            "new-secret-0123456789",
            Some("old-secret-0123456789"),
        ))
        .unwrap();
        let inner = secret.inner.as_ref().unwrap();
        assert!(inner.accepts(b"new-secret-0123456789"));
        assert!(inner.accepts(b"old-secret-0123456789"));
        for wrong in [
            &b""[..],
            b"new-secret-012345678",
            b"new-secret-01234567890",
            b"NEW-SECRET-0123456789",
        ] {
            assert!(!inner.accepts(wrong));
        }
        let sent = secret.client_headers();
        assert_eq!(sent.get(&HEADER).unwrap(), "new-secret-0123456789");
        assert!(sent.get(&HEADER).unwrap().is_sensitive());
    }

    #[test]
    fn the_secret_is_read_from_its_header_or_a_bearer_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_secret(&headers), None);
        headers.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer scrape-secret"),
        );
        assert_eq!(presented_secret(&headers), Some(&b"scrape-secret"[..]));
        headers.insert(HEADER, HeaderValue::from_static("header-secret"));
        assert_eq!(presented_secret(&headers), Some(&b"header-secret"[..]));
        let mut basic = HeaderMap::new();
        basic.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic eHl6"),
        );
        assert_eq!(presented_secret(&basic), None);
    }

    #[test]
    fn none_sends_nothing_and_is_never_printed() {
        assert!(ClusterAccess::none().client_headers().is_empty());
        let printed = format!(
            "{:?}",
            ClusterAccess::from_config(&security("printed-never-0123456789", None)).unwrap()
        );
        assert!(!printed.contains("printed-never"), "{printed}");
    }
}
