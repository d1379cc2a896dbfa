//! Fault injection: a FIFO of faults added with `POST /_sim/faults`, each consumed by matching API
//! requests (see the crate docs for the contract).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rampart_api::ErrorType;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::RouteGroup;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultKind {
    /// Answer with `status` and an error envelope.
    Status,
    /// Close the connection without a response.
    Reset,
    /// Sleep `delay_ms` before the headers, then answer normally.
    StallHeaders,
    /// Pause `delay_ms` after `after_events` SSE events.
    StallStream,
    /// Emit an SSE `error` event after `after_events` events and end the stream.
    ErrorEvent,
    /// Delay each SSE event (or the JSON body) by `delay_ms`.
    Slow,
    /// Abort the body after `after_events` events.
    AbortStream,
    /// Answer normally, reporting an exhausted rate limit
    /// (`anthropic-ratelimit-requests-remaining: 0`, `-reset` `retry_after` seconds from now).
    Exhausted,
}

/// The body of `POST /_sim/faults`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct FaultRequest {
    kind: FaultKind,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    path: Option<RouteGroup>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    error_type: Option<ErrorType>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    after_events: Option<u64>,
}

/// A queued fault, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Fault {
    pub id: String,
    pub kind: FaultKind,
    pub remaining: u32,
    pub model: Option<String>,
    pub path: RouteGroup,
    pub status: u16,
    pub error_type: ErrorType,
    pub message: String,
    pub retry_after: Option<u64>,
    pub retry_after_ms: Option<u64>,
    pub delay_ms: u64,
    pub after_events: u64,
}

fn default_message(kind: ErrorType) -> &'static str {
    match kind {
        ErrorType::OverloadedError => "Overloaded",
        ErrorType::RateLimitError => {
            "Number of requests has exceeded your rate limit. Please try again later."
        }
        ErrorType::ApiError => "Internal server error",
        ErrorType::TimeoutError => "Request timed out",
        ErrorType::AuthenticationError => "invalid x-api-key",
        ErrorType::PermissionError => {
            "Your API key does not have permission to use the specified resource."
        }
        ErrorType::NotFoundError => "Not Found",
        ErrorType::BillingError => "Your credit balance is too low to access the Anthropic API.",
        ErrorType::RequestTooLarge => "Request exceeds the maximum allowed number of bytes.",
        ErrorType::ConflictError => "Conflict",
        ErrorType::InvalidRequestError => "Invalid request",
    }
}

impl Fault {
    /// The error this fault answers with (`status` faults) or emits (`error_event`).
    pub(crate) fn error(&self) -> ApiError {
        ApiError {
            kind: self.error_type,
            status: self.status,
            message: self.message.clone(),
            retry_after: self.retry_after,
            retry_after_ms: self.retry_after_ms,
        }
    }

    /// `delay_ms` as a duration.
    pub(crate) const fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.delay_ms)
    }

    fn matches(&self, group: RouteGroup, model: Option<&str>) -> bool {
        self.path == group && self.model.as_deref().is_none_or(|m| Some(m) == model)
    }
}

/// The fault queue.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pending: AtomicUsize,
    next_id: AtomicUsize,
    queue: Mutex<VecDeque<Fault>>,
}

impl Faults {
    /// Adds a fault.
    ///
    /// # Errors
    /// 400 when `status` is outside 400–599 or `count` is 0.
    pub(crate) fn add(&self, req: FaultRequest) -> Result<Fault, ApiError> {
        let status = req
            .status
            .or_else(|| req.error_type.map(ErrorType::status))
            .unwrap_or(529);
        if !(400..=599).contains(&status) {
            return Err(ApiError::invalid("status: must be between 400 and 599"));
        }
        let count = req.count.unwrap_or(1);
        if count == 0 {
            return Err(ApiError::invalid("count: must be at least 1"));
        }
        let error_type = req.error_type.unwrap_or(ErrorType::from_status(status));
        let retry_after = req.retry_after.or_else(|| {
            (matches!(status, 429 | 529) || req.kind == FaultKind::Exhausted).then_some(1)
        });
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let fault = Fault {
            id: format!("fault_{n}"),
            kind: req.kind,
            remaining: count,
            model: req.model,
            path: req.path.unwrap_or(RouteGroup::Messages),
            status,
            error_type,
            message: req
                .message
                .unwrap_or_else(|| default_message(error_type).to_owned()),
            retry_after,
            retry_after_ms: req.retry_after_ms,
            delay_ms: req.delay_ms.unwrap_or(0),
            after_events: req.after_events.unwrap_or(2),
        };
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(fault.clone());
            self.pending.store(q.len(), Ordering::Release);
        }
        Ok(fault)
    }

    /// Consumes one count of the first fault matching this request.
    pub(crate) fn take(&self, group: RouteGroup, model: Option<&str>) -> Option<Fault> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut q = self.queue.lock().ok()?;
        let i = q.iter().position(|f| f.matches(group, model))?;
        let fault = q.get_mut(i)?;
        fault.remaining = fault.remaining.saturating_sub(1);
        let taken = fault.clone();
        if taken.remaining == 0 {
            q.remove(i);
        }
        self.pending.store(q.len(), Ordering::Release);
        Some(taken)
    }

    /// The remaining faults.
    pub(crate) fn list(&self) -> Vec<Fault> {
        self.queue
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes every fault.
    pub(crate) fn clear(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
            self.pending.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> FaultRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn faults_are_consumed_first_in_first_out_per_matching_request() {
        let f = Faults::default();
        f.add(req(
            serde_json::json!({"kind": "status", "count": 2, "model": "m1"}),
        ))
        .unwrap();
        f.add(req(serde_json::json!({"kind": "reset"}))).unwrap();
        assert_eq!(f.take(RouteGroup::Models, None), None);
        assert_eq!(
            f.take(RouteGroup::Messages, Some("m2")).unwrap().kind,
            FaultKind::Reset
        );
        let a = f.take(RouteGroup::Messages, Some("m1")).unwrap();
        assert_eq!(
            (a.status, a.error_type, a.retry_after, a.remaining),
            (529, ErrorType::OverloadedError, Some(1), 1)
        );
        assert_eq!(a.message, "Overloaded");
        assert_eq!(
            f.take(RouteGroup::Messages, Some("m1")).unwrap().remaining,
            0
        );
        assert!(f.take(RouteGroup::Messages, Some("m1")).is_none());
        assert!(f.list().is_empty());
    }

    #[test]
    fn status_defaults_follow_the_error_type() {
        let f = Faults::default();
        let a = f
            .add(req(serde_json::json!({"kind": "status", "status": 500})))
            .unwrap();
        assert_eq!((a.error_type, a.retry_after), (ErrorType::ApiError, None));
        let b = f
            .add(req(
                serde_json::json!({"kind": "status", "status": 429, "retry_after": 7, "retry_after_ms": 6500}),
            ))
            .unwrap();
        assert_eq!(b.error().retry_after_ms, Some(6500));
        let c = f
            .add(req(serde_json::json!({"kind": "exhausted"})))
            .unwrap();
        assert_eq!((c.kind, c.retry_after), (FaultKind::Exhausted, Some(1)));
        assert_eq!(
            (b.error_type, b.retry_after),
            (ErrorType::RateLimitError, Some(7))
        );
        assert!(
            f.add(req(serde_json::json!({"kind": "status", "status": 200})))
                .is_err()
        );
    }
}
