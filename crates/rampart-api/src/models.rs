//! `GET /v1/models` and `GET /v1/models/{id}`.

use serde::{Deserialize, Serialize};

/// One model of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model id, e.g. `claude-sonnet-4-6`.
    pub id: String,
    /// Always `"model"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable name.
    pub display_name: String,
    /// RFC 3339 release time.
    pub created_at: String,
    /// Context window, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    /// Maximum output tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// A cursor page, as used by the models and batches list endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// Items, newest first.
    pub data: Vec<T>,
    /// Whether more items follow.
    pub has_more: bool,
    /// Id of the first item.
    pub first_id: Option<String>,
    /// Id of the last item.
    pub last_id: Option<String>,
}
