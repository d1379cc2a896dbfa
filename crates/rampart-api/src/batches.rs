//! Message batches: `/v1/messages/batches*`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorEnvelope;
use crate::messages::Message;

/// Processing state of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingStatus {
    /// Items are being processed.
    InProgress,
    /// Cancel requested; in-flight items are finishing.
    Canceling,
    /// Every item has a result.
    Ended,
}

/// Per-state item counts; they always sum to the number of requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Not yet finished.
    pub processing: u64,
    /// Finished with a message.
    pub succeeded: u64,
    /// Finished with an error.
    pub errored: u64,
    /// Canceled before running.
    pub canceled: u64,
    /// Expired before running.
    pub expired: u64,
}

/// The batch object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageBatch {
    /// `msgbatch_...` id.
    pub id: String,
    /// Always `"message_batch"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// State.
    pub processing_status: ProcessingStatus,
    /// Counts by item state.
    pub request_counts: RequestCounts,
    /// RFC 3339 times.
    pub created_at: String,
    /// Creation + 24 h.
    pub expires_at: String,
    /// When processing ended.
    pub ended_at: Option<String>,
    /// When cancel was requested.
    pub cancel_initiated_at: Option<String>,
    /// When results were archived.
    pub archived_at: Option<String>,
    /// Where results can be fetched once ended.
    pub results_url: Option<String>,
}

/// One request of a batch: `params` are non-streaming `MessageCreate` params, raw JSON by default
/// or typed as [`crate::params::MessageCreateParams`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest<P = Value> {
    /// Caller-chosen id, unique within the batch.
    pub custom_id: String,
    /// Non-streaming `MessageCreate` params.
    pub params: P,
}

/// The body of `POST /v1/messages/batches`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchCreateParams<P = Value> {
    /// The requests, each with a unique `custom_id`.
    pub requests: Vec<BatchRequest<P>>,
}

/// Outcome of one batch item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchResult {
    /// Finished with a message.
    Succeeded {
        /// The message.
        message: Message,
    },
    /// Finished with an error.
    Errored {
        /// The full error envelope.
        error: ErrorEnvelope,
    },
    /// Canceled before running.
    Canceled,
    /// Expired before running.
    Expired,
}

/// One line of the results JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResultLine {
    /// The request's `custom_id`.
    pub custom_id: String,
    /// Its outcome.
    pub result: BatchResult,
}

/// Response of `DELETE /v1/messages/batches/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedBatch {
    /// The id.
    pub id: String,
    /// Always `"message_batch_deleted"`.
    #[serde(rename = "type")]
    pub kind: String,
}
