//! The upstream HTTP client: pooled HTTP/1.1 and HTTP/2 over TLS (aws-lc-rs, OS roots) or plain
//! HTTP (the simulator), with a connect timeout. Redirects are never followed, so a credential is
//! never sent to another host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client type used for every upstream call.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// TLS settings for upstream connections: aws-lc-rs and the OS trust store, loaded once per
/// gateway (every worker thread's pool shares them). Without a usable trust store HTTPS
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

/// Build a pooled client: HTTP/1.1 and HTTP/2, TCP_NODELAY, the connect timeout, `tls` for HTTPS.
#[must_use]
pub fn client(connect_timeout: Duration, tls: &rustls::ClientConfig) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}
