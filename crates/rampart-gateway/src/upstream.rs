//! The upstream HTTP client: pooled HTTP/1.1 and HTTP/2 over TLS (aws-lc-rs, OS roots) or plain
//! HTTP (the simulator), with a connect timeout. Redirects are never followed, so a credential is
//! never sent to another host.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client type used for every upstream call.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Build the pooled client.
#[must_use]
pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let https = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http),
        Err(e) => {
            tracing::warn!(error = %e, "no usable OS trust store; HTTPS upstreams will fail certificate checks");
            let roots = rustls::RootCertStore::empty();
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth());
            match cfg {
                Ok(cfg) => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(cfg)
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http),
                Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(HttpConnector::new()),
            }
        }
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}
