//! The upstream HTTP client: HTTP/1.1 and HTTP/2 over TLS (aws-lc-rs, OS roots) or plain HTTP
//! (the simulator), with a connect timeout. Redirects are never followed, so a credential is
//! never sent to another host.
//!
//! # Connections
//! Each thread keeps its own connections ([`send`]): a request checks out an idle HTTP/1.1
//! connection to its host (the most recently used first), or shares the host's HTTP/2
//! connection, or connects. An HTTP/1.1 connection goes back to its thread's idle list when the
//! response body has been read to its end ([`ResponseBody`]); a body dropped earlier takes its
//! connection with it (hyper closes it). The gateway's workers are single-threaded runtimes, so a
//! request, its upstream connection and the connection's task stay on one thread, and a checkout
//! is a `Vec::pop` behind a thread-local: no lock, no hashing.
//!
//! - A request that an idle connection could not take (the upstream closed it meanwhile) goes to
//!   another connection; one that a fresh connection fails is a transport failure.
//! - Idle connections are dropped after [`IDLE_TIMEOUT`], and at most [`MAX_IDLE`] are kept
//!   per host and thread.
//! - Connecting (TCP and TLS together) is bounded by the connect timeout.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::Service;

use crate::classify::TransportFailure;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per host and thread.
pub const MAX_IDLE: usize = 256;

/// The connector: TCP (nodelay, keepalive, connect timeout), then TLS for `https` URLs.
pub type Connector = HttpsConnector<HttpConnector>;

/// TLS settings for upstream connections: aws-lc-rs and the OS trust store, loaded once per
/// gateway (every worker thread's connections share them). Without a usable trust store HTTPS
/// upstreams fail certificate checks (logged), while plain-HTTP upstreams (the simulator) work.
///
/// # Errors
/// When the crypto provider offers no safe protocol version (not expected with aws-lc-rs).
pub fn tls_config() -> Result<rustls::ClientConfig, String> {
    use hyper_rustls::ConfigBuilderExt;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?;
    Ok(match builder.clone().with_native_roots() {
        Ok(b) => b.with_no_client_auth(),
        Err(e) => {
            tracing::warn!(error = %e, "no usable OS trust store; HTTPS upstreams will fail certificate checks");
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    })
}

/// Build a connector: HTTP/1.1 and HTTP/2 (ALPN), TCP_NODELAY, the connect timeout, `tls` for
/// HTTPS.
#[must_use]
pub fn connector(connect_timeout: Duration, tls: &rustls::ClientConfig) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// Which client's connections: gateways in one process keep theirs apart, and so do connect
/// timeouts (the connector carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    /// The gateway's transport.
    pub owner: u64,
    /// The connect timeout.
    pub connect_timeout: Duration,
}

/// A host: what a request goes to, and what its response body gives its connection back to.
#[derive(Debug)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// The `host` header of HTTP/1.1 requests.
    host_header: HeaderValue,
}

impl Origin {
    fn new(scheme: &Scheme, authority: &Authority) -> Self {
        Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host_header: host_header(scheme, authority),
        }
    }

    fn is(&self, scheme: &Scheme, authority: &Authority) -> bool {
        self.authority.as_str() == authority.as_str() && self.scheme == *scheme
    }
}

/// The request's host, or `None` for a URI without scheme or authority.
fn host_of(uri: &Uri) -> Option<(&Scheme, &Authority)> {
    Some((uri.scheme()?, uri.authority()?))
}

/// `host`, with the port only when it is not the scheme's default.
fn host_header(scheme: &Scheme, authority: &Authority) -> HeaderValue {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let text = match authority.port_u16() {
        Some(p) if p != default_port => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// A thread's connections of one client.
struct Client {
    id: ClientId,
    /// Made at the first connect on this thread.
    connector: Option<Connector>,
    hosts: Vec<Host>,
}

/// A thread's connections to one host.
struct Host {
    origin: Arc<Origin>,
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The shared HTTP/2 connection, when the host negotiated HTTP/2.
    h2: Option<http2::SendRequest<Full<Bytes>>>,
}

struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Idle {
    /// Still open, and idle for less than [`IDLE_TIMEOUT`] at `now`.
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

thread_local! {
    static CLIENTS: RefCell<Vec<Client>> = const { RefCell::new(Vec::new()) };
}

/// This thread's client `id` and its host, both made when missing. `None` only when the
/// thread's pools are borrowed already (not expected: no caller holds them across a call).
fn with_host<R>(
    id: ClientId,
    scheme: &Scheme,
    authority: &Authority,
    f: impl FnOnce(&mut Option<Connector>, &mut Host) -> R,
) -> Option<R> {
    CLIENTS.with(|clients| {
        let mut clients = clients.try_borrow_mut().ok()?;
        let index = match clients.iter().position(|c| c.id == id) {
            Some(i) => i,
            None => {
                clients.push(Client {
                    id,
                    connector: None,
                    hosts: Vec::new(),
                });
                clients.len() - 1
            }
        };
        let client = &mut clients[index];
        let at = match client
            .hosts
            .iter()
            .position(|h| h.origin.is(scheme, authority))
        {
            Some(i) => i,
            None => {
                client.hosts.push(Host {
                    origin: Arc::new(Origin::new(scheme, authority)),
                    idle: Vec::new(),
                    h2: None,
                });
                client.hosts.len() - 1
            }
        };
        Some(f(&mut client.connector, &mut client.hosts[at]))
    })
}

/// What a checkout found.
enum Checkout {
    Idle(http1::SendRequest<Full<Bytes>>, Arc<Origin>),
    H2(http2::SendRequest<Full<Bytes>>),
    Connect(Connector, Arc<Origin>),
}

fn checkout(
    id: ClientId,
    tls: &rustls::ClientConfig,
    scheme: &Scheme,
    authority: &Authority,
) -> Checkout {
    let found = with_host(id, scheme, authority, |connector, host| {
        if let Some(h2) = &host.h2 {
            if !h2.is_closed() {
                return Checkout::H2(h2.clone());
            }
            host.h2 = None;
        }
        let now = Instant::now();
        while let Some(idle) = host.idle.pop() {
            if idle.usable(now) {
                return Checkout::Idle(idle.sender, host.origin.clone());
            }
        }
        let connector = connector.get_or_insert_with(|| self::connector(id.connect_timeout, tls));
        Checkout::Connect(connector.clone(), host.origin.clone())
    });
    found.unwrap_or_else(|| {
        Checkout::Connect(
            connector(id.connect_timeout, tls),
            Arc::new(Origin::new(scheme, authority)),
        )
    })
}

/// Give an HTTP/1.1 connection back to this thread's idle list of its host (dropped when the
/// list holds [`MAX_IDLE`] already).
fn give_back(id: ClientId, origin: &Origin, sender: http1::SendRequest<Full<Bytes>>) {
    if sender.is_closed() {
        return;
    }
    with_host(id, &origin.scheme, &origin.authority, |_, host| {
        if host.idle.len() < MAX_IDLE {
            host.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    });
}

fn keep_h2(id: ClientId, origin: &Origin, sender: &http2::SendRequest<Full<Bytes>>) {
    with_host(id, &origin.scheme, &origin.authority, |_, host| {
        host.h2 = Some(sender.clone());
    });
}

/// Drop this thread's connections that the upstream closed or that idled longer than
/// [`IDLE_TIMEOUT`]. The gateway's workers call it twice a second.
pub fn reap_idle() {
    let now = Instant::now();
    CLIENTS.with(|clients| {
        if let Ok(mut clients) = clients.try_borrow_mut() {
            for host in clients.iter_mut().flat_map(|c| c.hosts.iter_mut()) {
                host.idle.retain(|i| i.usable(now));
                if host.h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
                    host.h2 = None;
                }
            }
        }
    });
}

/// A connect error: a timed-out I/O error anywhere in its chain is a connect timeout.
fn connect_failure(err: &(dyn std::error::Error + 'static)) -> TransportFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return TransportFailure::ConnectTimeout;
        }
        source = e.source();
    }
    TransportFailure::Connect
}

/// A new connection: HTTP/2 when TLS negotiated it, else HTTP/1.1. Its task is spawned on the
/// current runtime.
enum Fresh {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

async fn connect(
    mut connector: Connector,
    connect_timeout: Duration,
    uri: Uri,
) -> Result<Fresh, TransportFailure> {
    let connecting = async {
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| connect_failure(&*e))?;
        connector.call(uri).await.map_err(|e| connect_failure(&*e))
    };
    let io = tokio::time::timeout(connect_timeout, connecting)
        .await
        .map_err(|_| TransportFailure::ConnectTimeout)??;
    let h2 = io.connected().is_negotiated_h2();
    let failed = |e: hyper::Error| {
        tracing::debug!(target: "rampart::pool", error = %e, "upstream handshake failed");
        TransportFailure::Connect
    };
    if h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "rampart::pool", error = %e, "upstream connection ended");
            }
        });
        Ok(Fresh::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await.map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "rampart::pool", error = %e, "upstream connection ended");
            }
        });
        Ok(Fresh::H1(sender))
    }
}

/// The request as an HTTP/1.1 connection sends it: origin-form target and a `host` header.
fn for_http1(req: &mut Request<Full<Bytes>>, host: HeaderValue) {
    let origin = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(origin);
    req.headers_mut().insert(HOST, host);
}

fn broken(e: &hyper::Error) -> TransportFailure {
    tracing::debug!(target: "rampart::pool", error = %e, "upstream transport error");
    TransportFailure::Broken
}

/// Send `req` (an absolute URI) on one of this thread's connections of client `id` (see the
/// module docs).
///
/// # Errors
/// How the transport failed.
pub async fn send(
    id: ClientId,
    tls: &rustls::ClientConfig,
    mut req: Request<Full<Bytes>>,
) -> Result<Response<ResponseBody>, TransportFailure> {
    let uri = req.uri().clone();
    let Some((scheme, authority)) = host_of(&uri) else {
        return Err(TransportFailure::Connect);
    };
    loop {
        match checkout(id, tls, scheme, authority) {
            Checkout::Idle(mut sender, origin) => {
                if std::future::poll_fn(|cx| sender.poll_ready(cx))
                    .await
                    .is_err()
                {
                    continue;
                }
                for_http1(&mut req, origin.host_header.clone());
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(ResponseBody::h1(resp, id, origin, sender)),
                    Err(mut e) => match e.take_message() {
                        // Not sent: the upstream closed the idle connection meanwhile.
                        Some(unsent) => {
                            req = unsent;
                            *req.uri_mut() = uri.clone();
                            req.headers_mut().remove(HOST);
                        }
                        None => return Err(broken(e.error())),
                    },
                }
            }
            Checkout::H2(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok(ResponseBody::h2(resp)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection is going away. The next try connects anew.
                    Some(unsent) => {
                        req = unsent;
                        with_host(id, scheme, authority, |_, host| host.h2 = None);
                    }
                    None => return Err(broken(e.error())),
                },
            },
            Checkout::Connect(connector, origin) => {
                // Boxed: connecting (TLS, HTTP/2 handshake) is a large future, and a rare one;
                // inline it would grow every request's future by kilobytes, copied on each move.
                match Box::pin(connect(connector, id.connect_timeout, uri.clone())).await? {
                    Fresh::H2(mut sender) => {
                        keep_h2(id, &origin, &sender);
                        return match sender.send_request(req).await {
                            Ok(resp) => Ok(ResponseBody::h2(resp)),
                            Err(e) => Err(broken(&e)),
                        };
                    }
                    Fresh::H1(mut sender) => {
                        for_http1(&mut req, origin.host_header.clone());
                        return match sender.send_request(req).await {
                            Ok(resp) => Ok(ResponseBody::h1(resp, id, origin, sender)),
                            Err(e) => Err(broken(&e)),
                        };
                    }
                }
            }
        }
    }
}

/// An upstream response body. An HTTP/1.1 connection goes back to its thread's idle list once
/// this body has been read to its end.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    back: Option<GiveBack>,
}

#[derive(Debug)]
struct GiveBack {
    id: ClientId,
    origin: Arc<Origin>,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl ResponseBody {
    fn h1(
        resp: Response<Incoming>,
        id: ClientId,
        origin: Arc<Origin>,
        sender: http1::SendRequest<Full<Bytes>>,
    ) -> Response<Self> {
        let (parts, inner) = resp.into_parts();
        let mut body = Self {
            inner,
            back: Some(GiveBack { id, origin, sender }),
        };
        // Nothing to read (a `HEAD`, a 204, an empty answer): the connection is free now.
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    fn h2(resp: Response<Incoming>) -> Response<Self> {
        resp.map(|inner| Self { inner, back: None })
    }

    fn release(&mut self) {
        if let Some(b) = self.back.take() {
            give_back(b.id, &b.origin, b.sender);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A body of `n` chunks of unknown total length (sent chunked, like a stream's events).
    struct Chunks(u32);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: {}\n\n")))))
        }
    }

    type Either = http_body_util::Either<Full<Bytes>, Chunks>;

    /// An HTTP/1.1 upstream on port 0: `/chunked` answers in 3 chunks, anything else with its
    /// request target and `host` header. Counts the connections it accepted.
    async fn upstream() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = if req.uri().path() == "/chunked" {
                            Either::Right(Chunks(3))
                        } else {
                            let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
                            Either::Left(Full::new(Bytes::from(format!(
                                "{} {}",
                                req.uri(),
                                host.unwrap_or("-")
                            ))))
                        };
                        Ok::<_, Infallible>(Response::new(body))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    /// [`upstream`] and a [`client`] of its own.
    async fn plain() -> (String, Arc<AtomicUsize>, ClientId, rustls::ClientConfig) {
        let (base, accepted) = upstream().await;
        let (id, tls) = client();
        (base, accepted, id, tls)
    }

    fn client() -> (ClientId, rustls::ClientConfig) {
        static OWNER: AtomicU64 = AtomicU64::new(1_000_000);
        (
            ClientId {
                owner: OWNER.fetch_add(1, Ordering::Relaxed),
                connect_timeout: Duration::from_secs(2),
            },
            tls_config().unwrap(),
        )
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .uri(url)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn text(resp: Response<ResponseBody>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// `GET url`, its whole answer as text.
    async fn fetch(id: ClientId, tls: &rustls::ClientConfig, url: &str) -> String {
        text(send(id, tls, get(url)).await.unwrap()).await
    }

    /// Three `GET url` at once, each read to its end only after all three have their heads.
    async fn three_at_once(id: ClientId, tls: &rustls::ClientConfig, url: &str) -> Vec<String> {
        let (a, b, c) = tokio::join!(
            send(id, tls, get(url)),
            send(id, tls, get(url)),
            send(id, tls, get(url))
        );
        let mut answers = Vec::new();
        for resp in [a, b, c] {
            answers.push(text(resp.unwrap()).await);
        }
        answers
    }

    /// How `GET url` failed.
    async fn failure(id: ClientId, tls: &rustls::ClientConfig, url: &str) -> TransportFailure {
        send(id, tls, get(url)).await.unwrap_err()
    }

    fn opened(accepted: &AtomicUsize) -> usize {
        accepted.load(Ordering::SeqCst)
    }

    /// `GET /chunked` read to its end.
    async fn read_chunks(id: ClientId, tls: &rustls::ClientConfig, base: &str) {
        let body = fetch(id, tls, &format!("{base}/chunked")).await;
        assert_eq!(body, "data: {}\n\n".repeat(3));
    }

    /// A bare TCP upstream on port 0: per connection, reads one request head, writes `answer`,
    /// hangs up. Counts the connections it accepted.
    async fn one_answer_per_connection(answer: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
                drop(stream);
            }
        });
        (base, accepted)
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_reused_and_requests_go_in_origin_form() {
        let (base, accepted, id, tls) = plain().await;
        for i in 0..5 {
            let authority = base.trim_start_matches("http://");
            assert_eq!(
                fetch(id, &tls, &format!("{base}/v1/x?i={i}")).await,
                format!("/v1/x?i={i} {authority}")
            );
        }
        assert_eq!(opened(&accepted), 1);
        // A chunked answer read to its end gives its connection back too.
        for _ in 0..3 {
            read_chunks(id, &tls, &base).await;
        }
        assert_eq!(opened(&accepted), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_early_takes_its_connection_with_it() {
        let (base, accepted, id, tls) = plain().await;
        let resp = send(id, &tls, get(&format!("{base}/chunked")))
            .await
            .unwrap();
        drop(resp);
        read_chunks(id, &tls, &base).await;
        assert_eq!(opened(&accepted), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_that_are_then_reused() {
        let (base, accepted, id, tls) = plain().await;
        let url = format!("{base}/v1/messages");
        three_at_once(id, &tls, &url).await;
        assert_eq!(opened(&accepted), 3);
        tokio::join!(fetch(id, &tls, &url), fetch(id, &tls, &url));
        assert_eq!(opened(&accepted), 3);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced_without_an_error() {
        // Answers one request per connection, keep-alive implied, then closes it.
        let (base, accepted) =
            one_answer_per_connection(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let (id, tls) = client();
        for i in 0..6 {
            assert_eq!(fetch(id, &tls, &format!("{base}/v1/messages")).await, "ok");
            // Right after the answer, or once the connection's task has surely seen the close:
            // no request may fail either way.
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(opened(&accepted), 6);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (id, tls) = client();
        let url = format!("http://{addr}/v1/messages");
        assert_eq!(failure(id, &tls, &url).await, TransportFailure::Connect);
    }

    #[tokio::test]
    async fn an_upstream_that_never_answers_the_tls_handshake_is_a_connect_timeout() {
        // Accepts TCP, then says nothing: only the TLS handshake can time out here.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                held.push(stream);
            }
        });
        let (mut id, tls) = client();
        id.connect_timeout = Duration::from_millis(200);
        let url = format!("https://{addr}/v1/messages");
        assert_eq!(
            failure(id, &tls, &url).await,
            TransportFailure::ConnectTimeout
        );
    }

    #[tokio::test]
    async fn a_response_cut_short_is_a_broken_transport_and_its_connection_is_not_reused() {
        // Promises ten bytes, sends three, hangs up.
        let (base, accepted) =
            one_answer_per_connection(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
        let (id, tls) = client();
        for _ in 0..2 {
            let resp = send(id, &tls, get(&format!("{base}/v1/messages")))
                .await
                .unwrap();
            assert!(resp.into_body().collect().await.is_err());
        }
        assert_eq!(opened(&accepted), 2);
    }

    /// A TLS upstream for `localhost` on port 0 offering `alpn`, answering with the protocol
    /// version, the request target and the `host` header; and a client TLS config trusting it.
    async fn tls_upstream(alpn: &[&[u8]]) -> (String, Arc<AtomicUsize>, rustls::ClientConfig) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = issued.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
                        let text =
                            format!("{:?} {} {}", req.version(), req.uri(), host.unwrap_or("-"));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    };
                });
            }
        });
        (format!("https://localhost:{port}"), accepted, client)
    }

    #[tokio::test]
    async fn an_upstream_that_negotiates_http2_is_one_shared_connection() {
        let (base, accepted, tls) = tls_upstream(&[b"h2", b"http/1.1"]).await;
        let (id, _) = client();
        let url = format!("{base}/v1/messages?beta=true");
        for answer in three_at_once(id, &tls, &url).await {
            // Absolute form, authority in `:authority`, no `host` header.
            assert_eq!(answer, format!("HTTP/2.0 {url} -"));
        }
        for _ in 0..3 {
            assert_eq!(fetch(id, &tls, &url).await, format!("HTTP/2.0 {url} -"));
        }
        // The first three may each have connected before any finished its handshake; the
        // ones after share the one kept.
        let opened = opened(&accepted);
        assert!((1..=3).contains(&opened), "{opened} connections");
    }

    #[tokio::test]
    async fn an_https_upstream_on_http1_reuses_its_connection() {
        let (base, accepted, tls) = tls_upstream(&[b"http/1.1"]).await;
        let (id, _) = client();
        let authority = base.trim_start_matches("https://");
        for _ in 0..3 {
            assert_eq!(
                fetch(id, &tls, &format!("{base}/v1/models")).await,
                format!("HTTP/1.1 /v1/models {authority}")
            );
        }
        assert_eq!(opened(&accepted), 1);
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_reaped() {
        let (base, accepted, id, tls) = plain().await;
        let url = format!("{base}/v1/messages");
        fetch(id, &tls, &url).await;
        reap_idle();
        fetch(id, &tls, &url).await;
        assert_eq!(opened(&accepted), 1, "a fresh idle connection is kept");
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        tokio::time::resume();
        reap_idle();
        let idle: usize = CLIENTS.with(|c| {
            c.borrow()
                .iter()
                .filter(|c| c.id == id)
                .flat_map(|c| c.hosts.iter())
                .map(|h| h.idle.len())
                .sum()
        });
        assert_eq!(idle, 0);
        fetch(id, &tls, &url).await;
        assert_eq!(opened(&accepted), 2);
    }

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        let h = |uri: &str| {
            let uri: Uri = uri.parse().unwrap();
            host_header(uri.scheme().unwrap(), uri.authority().unwrap())
        };
        assert_eq!(h("https://api.anthropic.com/v1"), "api.anthropic.com");
        assert_eq!(h("https://api.anthropic.com:443/v1"), "api.anthropic.com");
        assert_eq!(
            h("https://api.anthropic.com:8443/v1"),
            "api.anthropic.com:8443"
        );
        assert_eq!(h("http://127.0.0.1:80/"), "127.0.0.1");
        assert_eq!(h("http://127.0.0.1:9000/"), "127.0.0.1:9000");
    }
}
