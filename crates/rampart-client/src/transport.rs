//! HTTP transport: a pooled hyper client (HTTP/1.1 and HTTP/2) over rustls with aws-lc-rs and the
//! OS trust store — the same stack as the gateway's upstream client, so no second TLS or crypto
//! library is linked. Redirects are never followed, so the API key is only ever sent to the
//! configured base URL.
//!
//! The retry loop talks to a [`Transport`], which tests replace with a scripted one to check the
//! backoff schedule on paused time.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::{BoxError, Error};

/// A response body as the client reads it.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// A sent request's eventual response (headers; the body streams).
pub(crate) type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// Sends one request, with no retries.
pub(crate) trait Transport: Debug + Send + Sync {
    fn send(&self, request: http::Request<Full<Bytes>>) -> ResponseFuture;
}

/// The real transport.
#[derive(Debug, Clone)]
pub(crate) struct Hyper {
    client: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Hyper {
    /// A pooled client with `connect_timeout`. `https` loads the OS trust store, which must have
    /// at least one usable certificate.
    pub(crate) fn new(connect_timeout: Duration, https: bool) -> Result<Self, Error> {
        let tls = tls_config(https)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self { client })
    }
}

impl Transport for Hyper {
    fn send(&self, request: http::Request<Full<Bytes>>) -> ResponseFuture {
        let pending = self.client.request(request);
        Box::pin(async move {
            let response = pending.await.map_err(|e| Box::new(e) as BoxError)?;
            Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed()))
        })
    }
}

/// rustls with aws-lc-rs; the OS roots for HTTPS, none for plain HTTP (never used then).
fn tls_config(https: bool) -> Result<rustls::ClientConfig, Error> {
    use hyper_rustls::ConfigBuilderExt;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::InvalidArgument(format!("TLS setup failed: {e}")))?;
    if !https {
        return Ok(builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth());
    }
    builder
        .with_native_roots()
        .map(|b| b.with_no_client_auth())
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "no usable CA certificates in the OS trust store for an https base URL (install the CA certificates package): {e}"
            ))
        })
}
