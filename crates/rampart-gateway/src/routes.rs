//! The proxied routes of Anthropic's API, as a closed set (route templates are metric labels).

/// A proxied endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
    /// `GET /v1/models`
    Models,
    /// `GET /v1/models/{model_id}`
    Model,
    /// `GET|POST /v1/messages/batches`
    Batches,
    /// `GET|DELETE /v1/messages/batches/{id}`
    Batch,
    /// `POST /v1/messages/batches/{id}/cancel`
    BatchCancel,
    /// `GET /v1/messages/batches/{id}/results`
    BatchResults,
    /// Anything else (404).
    Unknown,
}

impl Route {
    /// The route template, used as a metric label and in logs.
    #[must_use]
    pub const fn template(self) -> &'static str {
        match self {
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
            Self::Models => "/v1/models",
            Self::Model => "/v1/models/{model_id}",
            Self::Batches => "/v1/messages/batches",
            Self::Batch => "/v1/messages/batches/{id}",
            Self::BatchCancel => "/v1/messages/batches/{id}/cancel",
            Self::BatchResults => "/v1/messages/batches/{id}/results",
            Self::Unknown => "unknown",
        }
    }

    /// Whether a request body is expected and must be valid JSON.
    #[must_use]
    pub const fn has_json_body(self, is_post: bool) -> bool {
        is_post && matches!(self, Self::Messages | Self::CountTokens | Self::Batches)
    }

    /// Whether the response carries Messages usage worth reading.
    #[must_use]
    pub const fn reports_usage(self) -> bool {
        matches!(self, Self::Messages)
    }
}

/// A path segment that may stand for an id (`msgbatch_...`, a model id): no `/`, no dot-segments,
/// only unreserved characters, so nothing can be smuggled into the upstream path.
#[must_use]
pub fn valid_id_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_segments_refuse_traversal_and_encoding() {
        assert!(valid_id_segment("msgbatch_01ABC"));
        assert!(valid_id_segment("claude-sonnet-4-5-20250929"));
        for bad in ["", ".", "..", "a%2Fb", "a/b", "a b", "a?b"] {
            assert!(!valid_id_segment(bad), "{bad}");
        }
    }
}
