//! Serving HTTP with the limits an exposed port needs: every listener of
//! Engram (the public API, the coordinator's and the worker's internal
//! ports) goes through [`serve`].
//!
//! `axum::serve` gives hyper no timer, so hyper's read timeout for request
//! heads never fires: a client sending its headers one byte a second holds
//! a connection (and a task) for as long as it likes. Here each connection
//! is served by hyper's HTTP/1 builder with a timer and
//! `header_read_timeout`; a head not complete within it ends the
//! connection, counted in [`ServeStats`]. (hyper arms that timer whenever
//! the connection waits for a request, so an idle keep-alive connection is
//! also closed after it: Engram's own clients keep idle connections for
//! less, see [`CLIENT_POOL_IDLE`].) Bodies are read within their own
//! deadline by [`collect_body`]: the public API's admission (which counts
//! the bytes as they arrive) and [`internal_limits`] on internal ports.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long Engram's HTTP clients keep an idle connection: below every
/// server's head timeout (at least [`MIN_HEAD_TIMEOUT`]), so a client never
/// picks a pooled connection the server is closing.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(4);

/// The shortest head timeout a configuration may set.
pub const MIN_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests cut off by a listener's timeouts, and refused for being busy.
#[derive(Debug, Default)]
pub struct ServeStats {
    head_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    busy: AtomicU64,
    tls_failures: AtomicU64,
}

impl ServeStats {
    /// Connections closed because a request head did not arrive in time.
    pub fn head_timeouts(&self) -> u64 {
        self.head_timeouts.load(Ordering::Relaxed)
    }

    /// Requests answered 408 because their body did not arrive in time.
    pub fn body_timeouts(&self) -> u64 {
        self.body_timeouts.load(Ordering::Relaxed)
    }

    /// Internal requests answered 503 because the port was at its limit.
    pub fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// Requests cut off, by the `reason` label both nodes' metrics use.
    pub fn cut_offs(&self) -> [(&'static str, u64); 3] {
        [
            ("head_timeout", self.head_timeouts()),
            ("body_timeout", self.body_timeouts()),
            ("busy", self.busy()),
        ]
    }

    /// TLS handshakes that failed or did not complete in time.
    pub fn tls_failures(&self) -> u64 {
        self.tls_failures.load(Ordering::Relaxed)
    }

    /// Counts a body cut off by its deadline.
    pub fn body_timed_out(&self) {
        self.body_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish. Each request carries the peer's
/// [`ConnectInfo<SocketAddr>`]; a request head must arrive within
/// `head_timeout`. With `tls` every connection is TLS, its handshake
/// bounded by `head_timeout` too; one that fails (a plain-HTTP caller, a
/// client certificate the CA did not sign) is closed and counted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    head_timeout: Duration,
    stats: Arc<ServeStats>,
    tls: Option<crate::tls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, a reset before accept: wait
                    // a little rather than spin, and keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        let served = Served {
            builder: builder.clone(),
            watcher: graceful.watcher(),
            stats: stats.clone(),
            peer,
        };
        match &acceptor {
            None => {
                tokio::spawn(served.connection(stream, service));
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
                    let error = match tokio::time::timeout(head_timeout, handshake).await {
                        Ok(Ok(stream)) => return served.connection(stream, service).await,
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => "not completed within the head timeout".to_string(),
                    };
                    served.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What serving one accepted connection needs.
struct Served {
    builder: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    stats: Arc<ServeStats>,
    peer: std::net::SocketAddr,
}

impl Served {
    async fn connection<S>(self, stream: S, service: Router)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let peer = self.peer;
        if let Err(error) = self.watcher.watch(connection).await {
            if error.is_timeout() {
                self.stats.head_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "request head not received in time; connection closed");
            } else {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        }
    }
}

/// Why a body was not collected.
#[derive(Debug)]
pub enum BodyError<E> {
    /// Not complete by the deadline.
    TimedOut { read: u64 },
    /// Longer than the limit.
    TooLarge { limit: usize },
    /// `admit_more` refused the next bytes.
    Refused(E),
    /// The connection failed.
    Broken(String),
}

/// Reads `body` in full by `deadline`, at most `limit` bytes, calling
/// `admit_more` with the size of each chunk before it is kept (the public
/// API counts bytes in flight as they arrive, not as declared).
pub async fn collect_body<E>(
    mut body: Body,
    limit: usize,
    deadline: Instant,
    mut admit_more: impl FnMut(u64) -> Result<(), E>,
) -> Result<Bytes, BodyError<E>> {
    let mut collected = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(BodyError::TimedOut {
                    read: collected.len() as u64,
                });
            }
            Ok(None) => return Ok(Bytes::from(collected)),
            Ok(Some(Err(error))) => return Err(BodyError::Broken(error.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if collected.len() + data.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        admit_more(data.len() as u64).map_err(BodyError::Refused)?;
        collected.extend_from_slice(&data);
    }
}

/// The limits of an internal port.
#[derive(Debug, Clone, Copy)]
pub struct InternalLimits {
    /// Requests handled at once; more are answered 503 at once.
    pub max_concurrent: usize,
    /// Largest body.
    pub max_body_bytes: usize,
    /// A body must be read in full within this of its head.
    pub body_timeout: Duration,
    /// Paths whose handlers read their bodies as they arrive: not
    /// collected here, so neither `max_body_bytes` nor `body_timeout`
    /// applies (the handler bounds both); still counted against
    /// `max_concurrent`.
    pub streamed: &'static [&'static str],
}

impl InternalLimits {
    /// An internal port's limits from `config`, with bodies up to
    /// `max_body_bytes` (what its routes accept).
    pub fn from_config(
        config: &engram_core::config::EngramConfig,
        max_body_bytes: usize,
    ) -> InternalLimits {
        InternalLimits {
            max_concurrent: config.cluster.internal_max_concurrent_requests,
            max_body_bytes,
            body_timeout: Duration::from_millis(config.limits.body_timeout_ms),
            streamed: &[],
        }
    }

    /// These limits, with `paths` streamed to their handlers.
    pub fn streaming(self, paths: &'static [&'static str]) -> InternalLimits {
        InternalLimits {
            streamed: paths,
            ..self
        }
    }
}

/// `router` behind an internal port's own limits: at most
/// `max_concurrent` requests at once (503 beyond, counted), each body read
/// in full within `body_timeout` (408, counted) and at most
/// `max_body_bytes` (413), but for the `streamed` paths. Peers with the cluster secret are trusted with
/// what they send, not with how long they take or how many at once.
pub fn internal_limits(router: Router, limits: InternalLimits, stats: Arc<ServeStats>) -> Router {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent));
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let (permits, stats) = (permits.clone(), stats.clone());
        async move {
            let Ok(_permit) = permits.try_acquire_owned() else {
                stats.busy.fetch_add(1, Ordering::Relaxed);
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} internal requests are in flight here (cluster.internal_max_concurrent_requests); retry",
                        limits.max_concurrent
                    ),
                );
            };
            if limits.streamed.contains(&request.uri().path()) {
                return next.run(request).await;
            }
            let (parts, body) = request.into_parts();
            let deadline = Instant::now() + limits.body_timeout;
            let collected = collect_body(body, limits.max_body_bytes, deadline, |_| {
                Ok::<(), std::convert::Infallible>(())
            })
            .await;
            match collected {
                Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
                Err(BodyError::TimedOut { read }) => {
                    stats.body_timed_out();
                    plain(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "request body not received within {:?} ({read} bytes read)",
                            limits.body_timeout
                        ),
                    )
                }
                Err(BodyError::TooLarge { limit }) => plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {limit} bytes"),
                ),
                Err(BodyError::Broken(reason)) => plain(StatusCode::BAD_REQUEST, reason),
                Err(BodyError::Refused(never)) => match never {},
            }
        }
    }))
}

/// Internal answers are read by Engram's own clients: plain text.
fn plain(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    async fn start(
        head: Duration,
        limits: InternalLimits,
    ) -> (std::net::SocketAddr, Arc<ServeStats>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ServeStats::default());
        let router = Router::new().route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { body }),
        );
        let router = internal_limits(router, limits, stats.clone());
        tokio::spawn(serve(
            listener,
            router,
            head,
            stats.clone(),
            None,
            std::future::pending(),
        ));
        (addr, stats)
    }

    const LIMITS: InternalLimits = InternalLimits {
        max_concurrent: 2,
        max_body_bytes: 16,
        body_timeout: Duration::from_millis(600),
        streamed: &[],
    };

    /// Sends `bytes` then waits for the server's answer or close.
    fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(bytes).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_heads_and_bodies_are_cut_off_and_counted() {
        let (addr, stats) = start(Duration::from_millis(500), LIMITS).await;
        let answers = tokio::task::spawn_blocking(move || {
            let whole = exchange(
                addr,
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            );
            let started = std::time::Instant::now();
            let half_head = exchange(addr, b"POST /echo HTTP/1.1\r\nhost: x\r\n");
            let head_cut = started.elapsed();
            let half_body = exchange(
                addr,
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nconnection: close\r\n\r\nab",
            );
            let too_large = exchange(
                addr,
                b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n",
            );
            (whole, half_head, head_cut, half_body, too_large)
        })
        .await
        .unwrap();
        let (whole, half_head, head_cut, half_body, too_large) = answers;
        assert!(
            whole.starts_with("HTTP/1.1 200") && whole.ends_with("ok"),
            "{whole}"
        );
        assert!(!half_head.starts_with("HTTP/1.1 2"), "{half_head}");
        assert!(head_cut < Duration::from_secs(5), "{head_cut:?}");
        assert!(half_body.starts_with("HTTP/1.1 408"), "{half_body}");
        assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
        assert_eq!((stats.head_timeouts(), stats.body_timeouts()), (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_internal_port_past_its_limit_answers_busy() {
        let (addr, stats) = start(Duration::from_secs(5), LIMITS).await;
        let answers = tokio::task::spawn_blocking(move || {
            // Two bodies that never finish hold both permits...
            let holders: Vec<_> = (0..2)
                .map(|_| {
                    let mut stream = std::net::TcpStream::connect(addr).unwrap();
                    stream
                        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\na")
                        .unwrap();
                    stream
                })
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            // ...so a third is refused at once.
            let third = exchange(
                addr,
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            );
            drop(holders);
            third
        })
        .await
        .unwrap();
        assert!(answers.starts_with("HTTP/1.1 503"), "{answers}");
        assert_eq!(stats.busy(), 1);
    }
}
