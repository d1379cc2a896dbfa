//! The dispatcher: a background task of `rampart serve` that finds ended batches of teams with
//! a webhook, claims each delivery attempt in the store (so of several instances exactly one
//! sends it), POSTs the signed event and records the outcome, scheduling the next attempt with
//! [`crate::backoff`] until it succeeds or `max_attempts` are spent.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rampart_crypto::envelope::{MasterKeys, Sealed};
use rampart_crypto::webhook;
use rampart_store::Store;
use rampart_store::batches::Batch;
use rampart_store::webhooks::{AttemptOutcome, DueWebhook, team_webhook_aad};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{UrlPolicy, WebhooksConfig, backoff, headers};

/// Most deliveries claimed per poll.
const PER_POLL: u32 = 32;
/// How much of a receiver's answer is read (then dropped).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Resolves host names and drops the addresses the policy refuses, so a name cannot be pointed
/// at a private address after the URL was checked.
#[derive(Debug, Clone)]
struct GuardedResolver {
    policy: UrlPolicy,
}

type Resolved =
    Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolved;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        Box::pin(async move {
            let mut refused = None;
            let allowed: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| match policy.check_addr(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    refused.unwrap_or_else(|| format!("{} has no address", name.as_str())),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

type Client = HyperClient<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

fn client(policy: UrlPolicy, connect_timeout: Duration) -> Client {
    use hyper_rustls::ConfigBuilderExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()
        .and_then(|b| b.with_native_roots().ok())
        .map(|b| b.with_no_client_auth())
        .unwrap_or_else(|| {
            tracing::warn!(
                "webhooks: no usable CA certificates in the OS trust store; https deliveries will fail"
            );
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default versions"))
        });
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { policy });
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map_or(Value::Null, Value::String)
}

/// The Anthropic batch object of an ended batch (`results_url` under `base_url`).
#[must_use]
pub fn batch_object(batch: &Batch, base_url: &str) -> Value {
    json!({
        "id": batch.id,
        "type": "message_batch",
        "processing_status": batch.processing_status,
        "request_counts": {
            "processing": batch.processing(),
            "succeeded": batch.succeeded,
            "errored": batch.errored,
            "canceled": batch.canceled,
            "expired": batch.expired,
        },
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.expires_at),
        "ended_at": batch.ended_at.map_or(Value::Null, rfc3339),
        "cancel_initiated_at": batch.cancel_initiated_at.map_or(Value::Null, rfc3339),
        "archived_at": batch.archived_at.map_or(Value::Null, rfc3339),
        "results_url": format!(
            "{}/v1/messages/batches/{}/results",
            base_url.trim_end_matches('/'),
            batch.id
        ),
    })
}

/// The body of a delivery: `{"type":"message_batch.ended","batch":{…}}`.
#[must_use]
pub fn event_body(batch: &Batch, base_url: &str) -> Vec<u8> {
    let event = json!({ "type": "message_batch.ended", "batch": batch_object(batch, base_url) });
    serde_json::to_vec(&event).unwrap_or_default()
}

/// `error` and its sources, `: `-joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Sends due webhooks; see the module docs.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Store,
    master: Arc<MasterKeys>,
    config: WebhooksConfig,
    base_url: String,
    client: Client,
}

impl Dispatcher {
    /// A dispatcher over `store`, opening secrets with `master`; `base_url` is where clients
    /// reach this gateway (the batch object's `results_url`).
    #[must_use]
    pub fn new(
        store: Store,
        master: Arc<MasterKeys>,
        config: WebhooksConfig,
        base_url: String,
    ) -> Self {
        let client = client(config.policy(), Duration::from_millis(config.timeout_ms));
        Self {
            store,
            master,
            config,
            base_url,
            client,
        }
    }

    /// Poll every `poll_interval_ms` until `shutdown` resolves. A poll under way when it does
    /// is finished first (its attempts are bounded by `timeout_ms`), so no claimed attempt is
    /// left to run out its lease.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let every = Duration::from_millis(self.config.poll_interval_ms);
        tokio::pin!(shutdown);
        loop {
            let n = self.tick().await;
            if n > 0 {
                tracing::debug!(attempts = n, "webhook attempts made");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Claim and send every due attempt once (concurrently); returns how many were made.
    pub async fn tick(&self) -> usize {
        let now = OffsetDateTime::now_utc();
        let due = match self
            .store
            .webhooks()
            .due_webhooks(now, self.config.max_attempts, PER_POLL)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot list due deliveries");
                return 0;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        let lease = Duration::from_millis(self.config.timeout_ms) + Duration::from_secs(30);
        for d in due {
            let claimed = self
                .store
                .webhooks()
                .claim_webhook_attempt(&d, now, now + lease)
                .await;
            match claimed {
                Ok(Some(id)) => {
                    let me = self.clone();
                    tasks.spawn(async move { me.deliver(id, &d).await });
                }
                Ok(None) => {} // another instance has it
                Err(e) => tracing::warn!(error = %e, batch = %d.batch.id, "webhooks: claim failed"),
            }
        }
        let mut n = 0;
        while tasks.join_next().await.is_some() {
            n += 1;
        }
        n
    }

    async fn deliver(&self, id: uuid::Uuid, due: &DueWebhook) {
        let (status, error) = self.send(due).await;
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let finished_at = OffsetDateTime::now_utc();
        let next_attempt_at = (!delivered && due.attempt < self.config.max_attempts).then(|| {
            finished_at
                + backoff(
                    due.attempt,
                    Duration::from_millis(self.config.initial_backoff_ms),
                    Duration::from_millis(self.config.max_backoff_ms),
                    rand::random::<f64>(),
                )
        });
        let outcome_label = match (delivered, next_attempt_at.is_some()) {
            (true, _) => "delivered",
            (false, true) => "failed",
            (false, false) => "gave_up",
        };
        metrics::counter!("rampart_webhook_attempts_total", "outcome" => outcome_label)
            .increment(1);
        if delivered {
            tracing::info!(batch = %due.batch.id, team = %due.team_id, attempt = due.attempt, status, "webhook delivered");
        } else {
            tracing::warn!(batch = %due.batch.id, team = %due.team_id, attempt = due.attempt, status, error = error.as_deref().unwrap_or(""), gave_up = next_attempt_at.is_none(), "webhook attempt failed");
        }
        let outcome = AttemptOutcome {
            finished_at,
            status_code: status,
            error,
            delivered,
            next_attempt_at,
        };
        if let Err(e) = self
            .store
            .webhooks()
            .finish_webhook_attempt(id, &outcome)
            .await
        {
            tracing::warn!(error = %e, batch = %due.batch.id, "webhooks: cannot record an attempt");
        }
    }

    /// One POST: the receiver's status, or why there is none.
    async fn send(&self, due: &DueWebhook) -> (Option<u16>, Option<String>) {
        let target = match self.config.policy().check_url(&due.url) {
            Ok(t) => t,
            Err(e) => return (None, Some(e)),
        };
        let Ok(nonce) = <[u8; 12]>::try_from(due.secret.nonce.as_slice()) else {
            return (None, Some("the stored secret is damaged".to_owned()));
        };
        let sealed = Sealed {
            key_id: due.secret.key_id.clone(),
            nonce,
            ciphertext: due.secret.ciphertext.clone(),
        };
        let secret = match self.master.open(&sealed, &team_webhook_aad(due.team_id)) {
            Ok(s) => s,
            Err(e) => return (None, Some(format!("cannot open the signing secret: {e}"))),
        };
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let body = event_body(&due.batch, &self.base_url);
        let signature = webhook::sign(&secret, timestamp, &body);
        let request = http::Request::post(target.uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("rampart-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header(headers::ID, format!("evt_{}", due.batch.id))
            .header(headers::TIMESTAMP, timestamp.to_string())
            .header(headers::SIGNATURE, signature)
            .header(headers::ATTEMPT, due.attempt.to_string())
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => return (None, Some(format!("cannot build the request: {e}"))),
        };
        let exchange = async {
            let answer = self.client.request(request).await?;
            let status = answer.status().as_u16();
            // Read (a bounded part of) the answer so the connection can be reused.
            let _ = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok::<u16, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(Duration::from_millis(self.config.timeout_ms), exchange).await {
            Ok(Ok(status)) => (Some(status), None),
            Ok(Err(e)) => (None, Some(chain(&e))),
            Err(_) => (
                None,
                Some(format!("no answer within {} ms", self.config.timeout_ms)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended() -> Batch {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Batch {
            id: "msgbatch_01abc".to_owned(),
            owner: "team:x".to_owned(),
            team_id: None,
            key_id: None,
            user_id: None,
            key_label: None,
            mode: rampart_store::batches::BatchMode::Local,
            reserved_micro_usd: 0,
            results_until: t + time::Duration::days(29),
            processing_status: "ended".to_owned(),
            request_count: 4,
            succeeded: 2,
            errored: 1,
            canceled: 1,
            expired: 0,
            created_at: t,
            expires_at: t + time::Duration::hours(24),
            ended_at: Some(t + time::Duration::minutes(5)),
            cancel_initiated_at: None,
            archived_at: None,
        }
    }

    #[test]
    fn the_event_carries_the_anthropic_batch_object() {
        let body: Value =
            serde_json::from_slice(&event_body(&ended(), "http://gw:8080/")).unwrap_or_default();
        assert_eq!(body["type"], "message_batch.ended");
        let b = &body["batch"];
        assert_eq!(b["id"], "msgbatch_01abc");
        assert_eq!(b["type"], "message_batch");
        assert_eq!(b["processing_status"], "ended");
        assert_eq!(b["request_counts"]["processing"], 0);
        assert_eq!(b["request_counts"]["succeeded"], 2);
        assert_eq!(b["ended_at"], "2023-11-14T22:18:20Z");
        assert_eq!(b["cancel_initiated_at"], Value::Null);
        assert_eq!(
            b["results_url"],
            "http://gw:8080/v1/messages/batches/msgbatch_01abc/results"
        );
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let mut r = GuardedResolver {
            policy: UrlPolicy::default(),
        };
        let name: Name = "localhost".parse().unwrap_or_else(|_| unreachable!());
        let e = tower::Service::call(&mut r, name).await.err();
        assert!(e.is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied));
        let mut open = GuardedResolver {
            policy: UrlPolicy {
                allow_http_loopback: true,
                allow_private_networks: false,
            },
        };
        let name: Name = "localhost".parse().unwrap_or_else(|_| unreachable!());
        assert!(tower::Service::call(&mut open, name).await.is_ok());
    }
}
