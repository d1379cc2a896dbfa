//! The gateway's router, the request pipeline, and the accept loop with graceful shutdown.
//!
//! Pipeline for every `/v1/*` request, in order (all in [`crate::proxy::handle`]):
//! 1. request id: the client's `x-request-id` if sane, else generated; returned on every response;
//! 2. a [`crate::proxy::Completion`] is opened: it records metrics and the access log exactly once;
//! 3. authenticate (`x-api-key` / `Authorization: Bearer`) through the [`crate::auth::Authenticator`]
//!    and check the key's endpoint scope; a refusal (401/403) is queued for the audit log without
//!    waiting ([`crate::denials`], with a store);
//! 4. read the body under the route's limit (413 past it) and check it in one pass ([`crate::peek`]),
//!    then the key's model scope (for batch creation, every item's model);
//! 5. forward with the upstream credential ([`crate::upstream_key`]: configured, or the store's),
//!    hop-by-hop headers removed, under the header timeout;
//! 6. pipe the response back frame by frame; usage is read on the side ([`crate::sse`]);
//! 7. when the body ends (or the client goes away) the completion is handed to the accounting
//!    thread ([`crate::accounting`]): usage, metrics and the access log happen off the request path.
//!
//! `/v1/*` paths are matched without a router ([`crate::routes::match_route`]); health, metrics and
//! the 404/405 fallbacks (Anthropic's envelope too) go through a small axum [`router`].
//!
//! Threading: one single-threaded runtime per CPU, each accepting from the shared listening socket
//! and owning its connections and its upstream pool, so a request never crosses threads. A worker
//! serving more connections than another hands what it accepts to the one serving the fewest
//! ([`crate::balance`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::auth::Authenticator;
use crate::balance::{Balancer, Handoff, Seat};
use crate::config::Settings;
use crate::error::ProxyError;
use crate::proxy::{self, AppState, ProxyParts};
use crate::routes::{Match, Route, match_route};
use crate::telemetry;

/// A configured gateway, ready to serve.
#[derive(Debug, Clone)]
pub struct Gateway {
    state: Arc<AppState>,
    extra: Option<Router>,
}

impl Gateway {
    /// Build from validated settings, authenticating with `auth`.
    ///
    /// # Errors
    /// When the metrics recorder or the upstream credential cannot be set up.
    pub fn new(settings: Settings, auth: Arc<dyn Authenticator>) -> Result<Self, String> {
        Self::with_parts(settings, auth, ProxyParts::default())
    }

    /// [`Gateway::new`] with the proxy's optional parts (denial audit, stored upstream key).
    ///
    /// # Errors
    /// When the metrics recorder or the upstream credential cannot be set up.
    pub fn with_parts(
        settings: Settings,
        auth: Arc<dyn Authenticator>,
        parts: ProxyParts,
    ) -> Result<Self, String> {
        telemetry::install()?;
        Ok(Self {
            state: Arc::new(AppState::with_parts(settings, auth, parts)?),
            extra: None,
        })
    }

    /// Also serve `extra`'s routes (e.g. the admin plane) on this listener. Its requests carry
    /// the client's address as an `axum::extract::ConnectInfo<SocketAddr>` extension.
    #[must_use]
    pub fn with_router(mut self, extra: Router) -> Self {
        self.extra = Some(extra);
        self
    }

    /// Start the batch workers when batches are served from a store: the local queue's runner
    /// ([`crate::batches::runner`]) and the upstream mode's poller
    /// ([`crate::batches::upstream`]). They stop, after settling the items in flight, once
    /// `stop` turns true.
    #[must_use]
    pub fn spawn_batch_workers(
        &self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(batches) = self.state.batches.clone() else {
            return Vec::new();
        };
        let signal = || {
            let mut rx = stop.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let runner = crate::batches::runner::Runner::new(self.state.clone(), batches.clone());
        let syncer = crate::batches::upstream::Syncer::new(self.state.clone(), batches);
        vec![
            tokio::spawn(runner.run(signal())),
            tokio::spawn(syncer.run(signal())),
        ]
    }

    /// The settings in force.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.state.settings
    }

    /// The router for everything but the proxied `/v1/*` routes (health, metrics, fallbacks).
    pub fn router(&self) -> Router {
        let base = router(self.state.clone());
        match &self.extra {
            Some(extra) => base.merge(extra.clone()),
            None => base,
        }
    }

    /// Serve on `listener` until `shutdown` resolves, then stop accepting, let in-flight requests
    /// and streams finish for up to `shutdown_grace`, settle with the limits backend what the
    /// ones cut at the deadline held ([`crate::admission::Limits::flush`]), and return.
    ///
    /// # Errors
    /// Never in practice; accept errors are logged and retried.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.state.settings.shutdown_grace;
        let cache = self.state.cache.store.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                telemetry::upkeep();
                telemetry::cache_store(
                    cache.bytes(),
                    cache
                        .counters()
                        .evictions
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
            }
        });
        let dispatch = Dispatch {
            state: self.state.clone(),
            rest: self.router(),
            peer: None,
        };
        let result = serve_on_workers(listener, dispatch, shutdown, grace, &self.state).await;
        upkeep.abort();
        crate::accounting::drain();
        // The workers' runtimes are gone: what they dropped unsent (the settlements of the
        // responses cut at the deadline) waits for repair; send it while this runtime runs.
        if let Some(limits) = &self.state.limits {
            limits.flush().await;
        }
        result
    }
}

/// Thread per core: one single-threaded runtime per CPU, each accepting from the shared listening
/// socket and owning its connections and its own upstream connection pool. A request is then
/// served start to finish on one thread — no cross-thread wake-ups between the client's
/// connection, the upstream connection and the handler (measured: two futex calls per request
/// with a work-stealing runtime, none with this). The [`Balancer`] keeps the workers' connection
/// counts level.
async fn serve_on_workers(
    listener: TcpListener,
    dispatch: Dispatch,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    state: &Arc<AppState>,
) -> std::io::Result<()> {
    let workers = Gateway::worker_count();
    let shared = listener.into_std()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (balancer, inboxes) = Balancer::new(workers);
    let mut done = Vec::with_capacity(workers);
    for (i, inbox) in inboxes.into_iter().enumerate() {
        let socket = shared.try_clone()?;
        let worker = Worker {
            balancer: balancer.clone(),
            me: i,
            inbox,
        };
        let dispatch = dispatch.clone();
        let mut stop = stop_rx.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("rampart-worker-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            // Keep a near timer pending: tokio wakes its driver through an
                            // eventfd whenever a new timer is due before every pending one, so
                            // without this each request's header timeouts cost a syscall. Each
                            // tick also drops this thread's stale upstream connections.
                            let heartbeat = tokio::spawn(async {
                                let mut tick = tokio::time::interval(Duration::from_millis(500));
                                loop {
                                    tick.tick().await;
                                    crate::upstream::reap_idle();
                                }
                            });
                            let listener = TcpListener::from_std(socket)?;
                            let stopped = async move {
                                let _ = stop.wait_for(|v| *v).await;
                            };
                            let served =
                                serve_with(listener, dispatch, stopped, grace, worker).await;
                            heartbeat.abort();
                            // What is still open is dropped with the runtime: cut by Rampart.
                            crate::proxy::cutting_at_shutdown();
                            served
                        })
                    });
                let _ = tx.send(result);
            })?;
        done.push(rx);
    }
    drop(shared);
    shutdown.await;
    state.shutting_down.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for rx in done {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => {
                result = Err(std::io::Error::other(
                    "a worker thread stopped unexpectedly",
                ))
            }
        }
    }
    result
}

impl Gateway {
    /// Number of worker threads [`Gateway::serve`] runs.
    #[must_use]
    pub fn worker_count() -> usize {
        std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .clamp(1, 64)
    }
}

/// The connection-level service: `/v1/*` requests go straight to the proxy engine (no router,
/// no body boxing); everything else (health, metrics, 404) goes to the axum [`router`].
#[derive(Debug, Clone)]
struct Dispatch {
    state: Arc<AppState>,
    rest: Router,
    /// The connection's client address.
    peer: Option<std::net::SocketAddr>,
}

type BoxedResponseFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Dispatch {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = BoxedResponseFuture;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        match match_route(req.method(), req.uri().path()) {
            Match::Route(route) => {
                let (state, peer) = (self.state.clone(), self.peer);
                Box::pin(async move { Ok(proxy::handle_from(state, route, req, peer).await) })
            }
            Match::WrongMethod(route) => {
                let m = req.method().to_string();
                let resp = proxy::reject(
                    Some(&self.state),
                    route,
                    req.headers(),
                    req.method(),
                    ProxyError::MethodNotAllowed(m),
                );
                Box::pin(std::future::ready(Ok(resp)))
            }
            Match::NotFound => {
                let resp = proxy::reject(
                    Some(&self.state),
                    Route::Unknown,
                    req.headers(),
                    req.method(),
                    ProxyError::NotFound,
                );
                Box::pin(std::future::ready(Ok(resp)))
            }
            Match::Other => {
                let mut rest = self.rest.clone();
                let mut req = req.map(axum::body::Body::new);
                if let Some(peer) = self.peer {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                Box::pin(async move {
                    use tower::Service as _;
                    rest.call(req).await
                })
            }
        }
    }
}

/// Health, metrics and the envelope fallback (the proxied routes are matched before this).
pub fn router(state: Arc<AppState>) -> Router {
    let ready_state = state;
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let st = ready_state.clone();
                async move {
                    let limiter = st.limits.as_ref().map(|l| &l.limiter);
                    let stopped = st.tasks.as_ref().and_then(|t| t.stopped());
                    if st.shutting_down.load(Ordering::Relaxed) {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
                    } else if let Some(task) = stopped {
                        let why = format!(
                            "background task stopped: {task} (see the logs; restart the instance)\n"
                        );
                        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
                    } else if limiter.is_some_and(|l| !l.is_up() && l.fails_closed()) {
                        let why =
                            "limits backend (Redis) unreachable: requests with limits get 503\n";
                        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
                    } else if !st.upstreams.pool().available() {
                        let why = "every upstream target's circuit breaker is open\n";
                        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
                    } else if limiter.is_some_and(|l| !l.is_up()) {
                        let why = "ready (limits backend unreachable: limits are not enforced)\n";
                        (StatusCode::OK, why).into_response()
                    } else {
                        (StatusCode::OK, "ready\n").into_response()
                    }
                }
            }),
        )
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(|req: Request| async move {
            let m = req.method().to_string();
            proxy::reject(
                None,
                Route::Unknown,
                req.headers(),
                req.method(),
                ProxyError::MethodNotAllowed(m),
            )
        })
        .fallback(|req: Request| async move {
            proxy::reject(
                None,
                Route::Unknown,
                req.headers(),
                req.method(),
                ProxyError::NotFound,
            )
        })
}

async fn metrics() -> Response {
    let mut resp = telemetry::render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// A worker's place among the others: its index, the balancer and its inbox of connections
/// handed over by the others.
struct Worker {
    balancer: Arc<Balancer>,
    me: usize,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
}

/// The accept loop: TCP_NODELAY, HTTP/1.1 keep-alive and h2c, a header-read timeout against slow
/// clients, and graceful shutdown with a deadline. A connection accepted while another worker
/// serves fewer goes to that worker; those handed over from the others are served here.
async fn serve_with(
    listener: TcpListener,
    service: Dispatch,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    mut worker: Worker,
) -> std::io::Result<()> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    let serve = |stream: TcpStream, peer, seat: Seat| {
        let mut service = service.clone();
        service.peer = Some(peer);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let watched = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = watched.await;
            drop(seat);
        });
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let to = worker.balancer.pick(worker.me);
                    let stream = if to == worker.me {
                        stream
                    } else {
                        match hand_over(&worker.balancer, to, stream, peer) {
                            Ok(None) => continue,
                            Ok(Some(back)) => back,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot hand a connection to another worker");
                                continue;
                            }
                        }
                    };
                    serve(stream, peer, worker.balancer.seat(worker.me));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(handoff) = worker.inbox.recv() => adopt(handoff, &serve),
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Connections handed over before the others saw this worker stop are still served; from now
    // on the others keep theirs.
    worker.inbox.close();
    while let Ok(handoff) = worker.inbox.try_recv() {
        adopt(handoff, &serve);
    }
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown deadline reached; closing remaining connections"),
    }
    Ok(())
}

/// Hand `stream` to worker `to`: `None` once handed over, the stream back (registered here again)
/// when that worker no longer takes connections.
fn hand_over(
    balancer: &Arc<Balancer>,
    to: usize,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> std::io::Result<Option<TcpStream>> {
    match balancer.hand_over(to, stream.into_std()?, peer) {
        Ok(()) => Ok(None),
        Err(back) => TcpStream::from_std(back).map(Some),
    }
}

/// Serve a connection another worker handed over, on this worker's runtime.
fn adopt(handoff: Handoff, serve: &impl Fn(TcpStream, std::net::SocketAddr, Seat)) {
    let Handoff { stream, peer, seat } = handoff;
    match TcpStream::from_std(stream) {
        Ok(stream) => serve(stream, peer, seat),
        Err(e) => tracing::warn!(error = %e, "cannot take over a connection from another worker"),
    }
}
