//! The listener loop: HTTP/1.1 with keep-alive and h2c (hyper-util's auto builder), graceful
//! shutdown that stops accepting and lets in-flight connections finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::state::{Counters, RequestLog, Settings, Sim};
use crate::{SimConfig, batches::Batches, cache::PromptCache, faults::Faults, models::Catalogue};

fn base_url(cfg: &SimConfig, local: SocketAddr) -> String {
    if let Some(url) = &cfg.public_base_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = match local.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    format!("http://{host}:{}", local.port())
}

pub(crate) fn build(cfg: SimConfig, local: SocketAddr) -> Sim {
    let settings = Settings {
        latency_ms: cfg.latency_ms,
        tokens_per_sec: cfg.tokens_per_sec,
        batch_processing_ms: cfg.batch_processing_ms,
        api_key: cfg.api_key.clone(),
        base_url: base_url(&cfg, local),
    };
    Sim {
        settings,
        catalogue: Catalogue::new(cfg.models),
        counters: Counters::default(),
        log: RequestLog::default(),
        faults: Faults::default(),
        cache: PromptCache::default(),
        batches: Batches::default(),
    }
}

/// See [`crate::serve`].
pub(crate) async fn serve(
    listener: TcpListener,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let sim = Arc::new(build(cfg, local));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and similar: back off briefly and keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sim = Arc::clone(&sim);
        let service =
            hyper::service::service_fn(move |req| crate::router::handle(Arc::clone(&sim), req));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            // Errors here are client disconnects or the simulated reset: nothing to report.
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
