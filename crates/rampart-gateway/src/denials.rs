//! Audit rows for refused key uses on the data plane: `401` (unknown, expired, revoked or disabled
//! key, or a malformed credential) and `403` (endpoint or model scope), written off the hot path.
//!
//! The proxy calls [`DenialAudit::record`], which never blocks and never waits on the database:
//! it checks a per-window budget (one atomic add), builds the row and `try_send`s it into a
//! bounded channel. [`DenialWriter::run`] appends the rows to the audit chain. Under a flood at
//! most [`DenialLimits::per_window`] rows are written per window (default 20 per second); the
//! rest, and any that find the channel full, are counted and written as one summary row per
//! window (`actor` `system`, `details.suppressed`).
//!
//! A row never holds the key: `actor` is the key's visible prefix (`rk_live_AbCd`) when the
//! credential has the `rk_` format, else `unknown`; `target` is the request path; `details` holds
//! `status`, `reason` and, for a model refusal, `model` (never the prompt).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rampart_crypto::apikey;
use rampart_store::{AuditOutcome, NewAuditEvent, Store};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

/// The audit `action` of every row written here.
pub const ACTION: &str = "key.denied";

/// How much is written under a flood.
#[derive(Debug, Clone, Copy)]
pub struct DenialLimits {
    /// Rows written per window before the rest are only counted. Default 20.
    pub per_window: u32,
    /// The window. Default 1 s.
    pub window: Duration,
    /// Rows waiting for the writer before further ones are only counted. Default 256.
    pub queue: usize,
}

impl Default for DenialLimits {
    fn default() -> Self {
        Self {
            per_window: 20,
            window: Duration::from_secs(1),
            queue: 256,
        }
    }
}

/// One refused request, as the proxy saw it.
#[derive(Debug, Clone, Copy)]
pub struct Denied<'a> {
    /// 401 or 403.
    pub status: u16,
    /// Why: a [`crate::auth::Denial`] name, `malformed_credential`, `endpoint_not_allowed` or
    /// `model_not_allowed`.
    pub reason: &'static str,
    /// The credential presented, if it could be read (only its visible prefix is kept, and only
    /// when it has the `rk_` format).
    pub credential: Option<&'a str>,
    /// The key's id, when the key was recognised (403).
    pub key_id: Option<Uuid>,
    /// The request path.
    pub path: &'a str,
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// The request id.
    pub request_id: &'a str,
    /// The refused model (403 on a model scope).
    pub model: Option<&'a str>,
}

#[derive(Debug)]
struct Budget {
    per_window: u32,
    admitted: AtomicU32,
    suppressed: AtomicU64,
}

/// The proxy's side: records refusals without blocking. See the module docs.
#[derive(Debug)]
pub struct DenialAudit {
    tx: mpsc::Sender<NewAuditEvent>,
    budget: Arc<Budget>,
}

/// The writer's side: appends the rows to the store. See [`DenialWriter::run`].
#[derive(Debug)]
pub struct DenialWriter {
    rx: mpsc::Receiver<NewAuditEvent>,
    budget: Arc<Budget>,
    window: Duration,
}

/// A connected recorder and writer.
#[must_use]
pub fn denial_audit(limits: DenialLimits) -> (DenialAudit, DenialWriter) {
    let (tx, rx) = mpsc::channel(limits.queue.max(1));
    let budget = Arc::new(Budget {
        per_window: limits.per_window,
        admitted: AtomicU32::new(0),
        suppressed: AtomicU64::new(0),
    });
    (
        DenialAudit {
            tx,
            budget: budget.clone(),
        },
        DenialWriter {
            rx,
            budget,
            window: limits.window,
        },
    )
}

impl DenialAudit {
    /// Queue an audit row for `denied`, or count it when this window's budget is spent or the
    /// writer is behind. Never blocks.
    pub fn record(&self, denied: &Denied<'_>) {
        let b = &self.budget;
        // Load before adding: under a flood the counter stops moving once the budget is spent.
        if b.admitted.load(Ordering::Relaxed) >= b.per_window
            || b.admitted.fetch_add(1, Ordering::Relaxed) >= b.per_window
            || self.tx.try_send(row(denied)).is_err()
        {
            b.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The audit row for `d`.
fn row(d: &Denied<'_>) -> NewAuditEvent {
    let actor = d
        .credential
        .filter(|c| apikey::check_format(c).is_ok())
        .map_or_else(|| "unknown".to_owned(), apikey::visible_prefix);
    let mut details = Map::new();
    details.insert("status".into(), json!(d.status));
    details.insert("reason".into(), json!(d.reason));
    if let Some(model) = d.model {
        details.insert("model".into(), json!(model));
    }
    if let Some(id) = d.key_id {
        details.insert("key_id".into(), json!(id));
    }
    NewAuditEvent {
        actor,
        action: ACTION.to_owned(),
        target: d.path.chars().take(300).collect(),
        outcome: AuditOutcome::Denied,
        client_addr: d.client.map(|a| a.ip().to_string()),
        request_id: Some(d.request_id.to_owned()),
        details: Value::Object(details),
    }
}

impl DenialWriter {
    /// Append queued rows until `shutdown` resolves, writing a summary row at the end of each
    /// window in which rows were suppressed; then write what is still queued and the last summary,
    /// and return. Store failures are logged (without the row) and the row is dropped.
    pub async fn run(mut self, store: Store, shutdown: impl Future<Output = ()>) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.window, self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = tick.tick() => self.end_window(&store, &mut failing).await,
                row = self.rx.recv() => match row {
                    Some(row) => append(&store, &row, &mut failing).await,
                    None => break,
                },
            }
        }
        self.rx.close();
        while let Some(row) = self.rx.recv().await {
            append(&store, &row, &mut failing).await;
        }
        self.end_window(&store, &mut failing).await;
    }

    /// Open a new window; write a summary row if anything was suppressed in the last one.
    async fn end_window(&self, store: &Store, failing: &mut bool) {
        self.budget.admitted.store(0, Ordering::Relaxed);
        let suppressed = self.budget.suppressed.swap(0, Ordering::Relaxed);
        if suppressed == 0 {
            return;
        }
        let mut summary = NewAuditEvent::new("system", ACTION, "data-plane");
        summary.outcome = AuditOutcome::Denied;
        summary.details = json!({
            "suppressed": suppressed,
            "window_secs": self.window.as_secs_f64(),
        });
        append(store, &summary, failing).await;
    }
}

async fn append(store: &Store, row: &NewAuditEvent, failing: &mut bool) {
    match store.append_audit(row).await {
        Ok(_) if *failing => {
            *failing = false;
            tracing::info!("denial audit writes recovered");
        }
        Ok(_) => {}
        Err(e) => {
            if !*failing {
                tracing::error!(error = %e, "cannot append a key.denied audit row; dropping it");
            }
            *failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(credential: Option<&str>) -> Denied<'_> {
        Denied {
            status: 401,
            reason: "revoked",
            credential,
            key_id: None,
            path: "/v1/messages",
            client: Some("10.1.2.3:5555".parse().unwrap()),
            request_id: "req_1",
            model: None,
        }
    }

    const KEY: &str = "rk_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg";

    #[test]
    fn rows_name_the_prefix_never_the_key() {
        let r = row(&denied(Some(KEY)));
        assert_eq!(r.actor, "rk_live_AbCd");
        assert_eq!(
            (r.action.as_str(), r.target.as_str()),
            (ACTION, "/v1/messages")
        );
        assert_eq!(r.outcome, AuditOutcome::Denied);
        assert_eq!(r.client_addr.as_deref(), Some("10.1.2.3"));
        assert_eq!(r.request_id.as_deref(), Some("req_1"));
        assert_eq!(r.details, json!({"status": 401, "reason": "revoked"}));
        assert!(!format!("{r:?}").contains(&KEY[12..]));
        for other in [
            Some("sk-ant-api03-secret-value-here"),
            Some("rk_live_short"),
            None,
        ] {
            let r = row(&denied(other));
            assert_eq!(r.actor, "unknown");
            assert!(!format!("{r:?}").contains("secret-value"));
        }
    }

    #[test]
    fn a_flood_is_cut_to_the_window_budget_and_counted() {
        let (audit, mut writer) = denial_audit(DenialLimits {
            per_window: 3,
            queue: 10,
            ..DenialLimits::default()
        });
        for _ in 0..1000 {
            audit.record(&denied(Some(KEY)));
        }
        let mut queued = 0;
        while writer.rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 3);
        assert_eq!(writer.budget.suppressed.load(Ordering::Relaxed), 997);
    }

    #[test]
    fn a_full_queue_counts_instead_of_waiting() {
        let (audit, writer) = denial_audit(DenialLimits {
            per_window: 100,
            queue: 2,
            ..DenialLimits::default()
        });
        for _ in 0..5 {
            audit.record(&denied(None));
        }
        assert_eq!(writer.budget.suppressed.load(Ordering::Relaxed), 3);
    }
}
