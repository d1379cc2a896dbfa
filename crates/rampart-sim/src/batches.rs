//! Message batches: created with every item already answered (or errored), ending
//! `batch_processing_ms` after creation. State is computed from `tokio::time` on every read, so
//! tests can pause and advance time. A cancel ends the batch early: items that would have finished
//! before the cancel keep their results, the others are `canceled`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use rampart_api::batches::{
    BatchResult, BatchResultLine, DeletedBatch, MessageBatch, ProcessingStatus, RequestCounts,
};
use rampart_api::models::Page;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::{ApiError, bad_field, required};
use crate::models::PageQuery;
use crate::respond::rfc3339;
use crate::state::Sim;

/// Processing time is capped at 30 days, so time arithmetic cannot overflow.
const MAX_PROCESSING_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Clone)]
struct Item {
    custom_id: String,
    result: BatchResult,
}

#[derive(Debug, Clone)]
struct Batch {
    id: String,
    created: Instant,
    created_wall: OffsetDateTime,
    processing: Duration,
    cancel_at: Option<Instant>,
    items: Vec<Item>,
}

impl Batch {
    fn natural_end(&self) -> Instant {
        self.created + self.processing
    }

    fn end(&self) -> Instant {
        let natural = self.natural_end();
        self.cancel_at
            .map_or(natural, |c| natural.min(c + self.processing / 10))
    }

    fn ended(&self, now: Instant) -> bool {
        now >= self.end()
    }

    /// When item `i` would finish if nothing were canceled.
    fn item_done(&self, i: usize) -> Instant {
        let n = self.items.len().max(1) as u32;
        self.created + self.processing * (i as u32 + 1) / n
    }

    fn outcome(&self, i: usize) -> BatchResult {
        match self.cancel_at {
            Some(c) if self.item_done(i) > c => BatchResult::Canceled,
            _ => self.items[i].result.clone(),
        }
    }

    fn wall(&self, at: Instant) -> String {
        let offset = at.saturating_duration_since(self.created);
        rfc3339(self.created_wall + offset)
    }

    fn view(&self, now: Instant, base_url: &str) -> MessageBatch {
        let ended = self.ended(now);
        let mut counts = RequestCounts::default();
        if ended {
            for i in 0..self.items.len() {
                match self.outcome(i) {
                    BatchResult::Succeeded { .. } => counts.succeeded += 1,
                    BatchResult::Errored { .. } => counts.errored += 1,
                    BatchResult::Canceled => counts.canceled += 1,
                    BatchResult::Expired => counts.expired += 1,
                }
            }
        } else {
            counts.processing = self.items.len() as u64;
        }
        let status = match (ended, self.cancel_at) {
            (true, _) => ProcessingStatus::Ended,
            (false, Some(_)) => ProcessingStatus::Canceling,
            (false, None) => ProcessingStatus::InProgress,
        };
        MessageBatch {
            id: self.id.clone(),
            kind: "message_batch".to_owned(),
            processing_status: status,
            request_counts: counts,
            created_at: rfc3339(self.created_wall),
            expires_at: rfc3339(self.created_wall + time::Duration::hours(24)),
            ended_at: ended.then(|| self.wall(self.end())),
            cancel_initiated_at: self.cancel_at.map(|c| self.wall(c)),
            archived_at: None,
            results_url: ended
                .then(|| format!("{base_url}/v1/messages/batches/{}/results", self.id)),
        }
    }
}

/// All batches, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    inner: Mutex<Vec<Batch>>,
}

fn lock_failed() -> ApiError {
    ApiError::new(rampart_api::ErrorType::ApiError, "Internal server error")
}

fn batch_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("message_batch: {id} not found"))
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Batches {
    /// Forgets every batch.
    pub(crate) fn clear(&self) {
        if let Ok(mut b) = self.inner.lock() {
            b.clear();
        }
    }

    fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Batch) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut all = self.inner.lock().map_err(|_| lock_failed())?;
        let batch = all
            .iter_mut()
            .find(|b| b.id == id)
            .ok_or_else(|| batch_not_found(id))?;
        f(batch)
    }

    /// `POST /v1/messages/batches`.
    ///
    /// # Errors
    /// 400 when `requests` is missing, empty, or has a bad or duplicate `custom_id`.
    pub(crate) fn create(&self, sim: &Sim, body: &Value) -> Result<MessageBatch, ApiError> {
        let requests = match body.get("requests") {
            None | Some(Value::Null) => return Err(required("requests")),
            Some(Value::Array(r)) => r,
            Some(_) => return Err(bad_field("requests", "Input should be a valid list")),
        };
        if requests.is_empty() {
            return Err(bad_field(
                "requests",
                "List should have at least 1 item after validation, not 0",
            ));
        }
        let mut seen = HashSet::with_capacity(requests.len());
        let mut items = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if !r.is_object() {
                return Err(bad_field(
                    &format!("requests.{i}"),
                    "Input should be a valid dictionary",
                ));
            }
            let custom_id = match r.get("custom_id") {
                Some(Value::String(s)) if valid_custom_id(s) => s.clone(),
                Some(Value::String(_)) => {
                    return Err(bad_field(
                        &format!("requests.{i}.custom_id"),
                        "String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
                    ));
                }
                None | Some(Value::Null) => {
                    return Err(required(&format!("requests.{i}.custom_id")));
                }
                Some(_) => {
                    return Err(bad_field(
                        &format!("requests.{i}.custom_id"),
                        "Input should be a valid string",
                    ));
                }
            };
            if !seen.insert(custom_id.clone()) {
                return Err(ApiError::invalid(format!(
                    "requests: custom_id values must be unique; '{custom_id}' is repeated"
                )));
            }
            let params = match r.get("params") {
                Some(p) if p.is_object() => p,
                None | Some(Value::Null) => return Err(required(&format!("requests.{i}.params"))),
                Some(_) => {
                    return Err(bad_field(
                        &format!("requests.{i}.params"),
                        "Input should be a valid dictionary",
                    ));
                }
            };
            let result = match crate::engine::run(sim, params, None) {
                Ok(outcome) => BatchResult::Succeeded {
                    message: crate::engine::message(crate::ids::message_id(), &outcome, "batch"),
                },
                Err(e) => BatchResult::Errored {
                    error: e.envelope().with_request_id(crate::ids::request_id()),
                },
            };
            items.push(Item { custom_id, result });
        }
        let batch = Batch {
            id: crate::ids::batch_id(),
            created: Instant::now(),
            created_wall: OffsetDateTime::now_utc(),
            processing: Duration::from_millis(
                sim.settings.batch_processing_ms.min(MAX_PROCESSING_MS),
            ),
            cancel_at: None,
            items,
        };
        let view = batch.view(Instant::now(), &sim.settings.base_url);
        self.inner.lock().map_err(|_| lock_failed())?.push(batch);
        Ok(view)
    }

    /// `GET /v1/messages/batches/{id}`.
    ///
    /// # Errors
    /// 404 for an unknown id.
    pub(crate) fn get(&self, id: &str, base_url: &str) -> Result<MessageBatch, ApiError> {
        self.with(id, |b| Ok(b.view(Instant::now(), base_url)))
    }

    /// `GET /v1/messages/batches`, newest first.
    ///
    /// # Errors
    /// 400 for a bad `limit`.
    pub(crate) fn list(
        &self,
        query: Option<&str>,
        base_url: &str,
    ) -> Result<Page<MessageBatch>, ApiError> {
        let q = PageQuery::parse(query)?;
        let now = Instant::now();
        let views: Vec<MessageBatch> = self
            .inner
            .lock()
            .map_err(|_| lock_failed())?
            .iter()
            .rev()
            .map(|b| b.view(now, base_url))
            .collect();
        Ok(q.page(&views, |b| &b.id))
    }

    /// `POST /v1/messages/batches/{id}/cancel`: `canceling` until the batch ends (a no-op once ended).
    ///
    /// # Errors
    /// 404 for an unknown id.
    pub(crate) fn cancel(&self, id: &str, base_url: &str) -> Result<MessageBatch, ApiError> {
        let now = Instant::now();
        self.with(id, |b| {
            if !b.ended(now) && b.cancel_at.is_none() {
                b.cancel_at = Some(now);
            }
            Ok(b.view(now, base_url))
        })
    }

    /// `DELETE /v1/messages/batches/{id}`: only once ended.
    ///
    /// # Errors
    /// 404 for an unknown id; 400 while still processing.
    pub(crate) fn delete(&self, id: &str) -> Result<DeletedBatch, ApiError> {
        let now = Instant::now();
        let mut all = self.inner.lock().map_err(|_| lock_failed())?;
        let i = all
            .iter()
            .position(|b| b.id == id)
            .ok_or_else(|| batch_not_found(id))?;
        if !all[i].ended(now) {
            return Err(ApiError::invalid(format!(
                "Batch {id} cannot be deleted while it is still processing. Cancel it first and wait for it to end."
            )));
        }
        all.remove(i);
        Ok(DeletedBatch {
            id: id.to_owned(),
            kind: "message_batch_deleted".to_owned(),
        })
    }

    /// `GET /v1/messages/batches/{id}/results`: JSONL, one line per request, once ended.
    ///
    /// # Errors
    /// 404 for an unknown id; 400 while still processing.
    pub(crate) fn results(&self, id: &str) -> Result<Bytes, ApiError> {
        let now = Instant::now();
        self.with(id, |b| {
            if !b.ended(now) {
                return Err(ApiError::invalid(format!(
                    "Batch {id} has not finished processing; results are available once processing_status is 'ended'."
                )));
            }
            let mut out = Vec::with_capacity(b.items.len() * 512);
            for (i, item) in b.items.iter().enumerate() {
                let line = BatchResultLine { custom_id: item.custom_id.clone(), result: b.outcome(i) };
                serde_json::to_writer(&mut out, &line).map_err(|_| lock_failed())?;
                out.push(b'\n');
            }
            Ok(Bytes::from(out))
        })
    }
}
