//! The floor: the barest pass-through HTTP proxy (hyper server + pooled hyper client), with no
//! auth, no parsing, no logging. Every benchmark figure is a ratio to what this one extra loopback
//! hop costs. Usage: `floor LISTEN_ADDR UPSTREAM_HOST:PORT`; prints `listening on http://ADDR`.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().ok_or("usage: floor LISTEN UPSTREAM")?.parse()?;
    let upstream: String = args.next().ok_or("usage: floor LISTEN UPSTREAM")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // SIGTERM ends the process normally (a profile-instrumented build writes its profile then).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = term.recv() => return Ok(()),
        };
        stream.set_nodelay(true)?;
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let uri = format!(
                    "http://{upstream}{}",
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                async move {
                    *req.uri_mut() = uri.parse::<hyper::Uri>().map_err(|e| e.to_string())?;
                    let resp = client.request(req).await.map_err(|e| e.to_string())?;
                    let (parts, body) = resp.into_parts();
                    Ok::<_, String>(Response::from_parts(parts, BoxBody::new(body.boxed())))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
