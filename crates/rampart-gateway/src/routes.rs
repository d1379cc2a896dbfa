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

/// How a request maps onto the proxied API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// A proxied route.
    Route(Route),
    /// A proxied path with a method it does not take (405).
    WrongMethod(Route),
    /// Not an API path (health, metrics, or 404).
    Other,
    /// Under `/v1/` but no such route, or a malformed segment (404).
    NotFound,
}

/// Match `method` and `path` against the proxied routes without allocating.
#[must_use]
pub fn match_route(method: &http::Method, path: &str) -> Match {
    use http::Method as M;
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Match::Other;
    };
    let mut seg = rest.split('/');
    let parts: [Option<&str>; 5] = std::array::from_fn(|_| seg.next());
    if parts.iter().flatten().any(|s| !valid_id_segment(s)) {
        return Match::NotFound;
    }
    let (route, allowed): (Route, &[M]) = match parts {
        [Some("messages"), None, ..] => (Route::Messages, &[M::POST]),
        [Some("messages"), Some("count_tokens"), None, ..] => (Route::CountTokens, &[M::POST]),
        [Some("models"), None, ..] => (Route::Models, &[M::GET]),
        [Some("models"), Some(_), None, ..] => (Route::Model, &[M::GET]),
        [Some("messages"), Some("batches"), None, ..] => (Route::Batches, &[M::GET, M::POST]),
        [Some("messages"), Some("batches"), Some(_), None, ..] => {
            (Route::Batch, &[M::GET, M::DELETE])
        }
        [
            Some("messages"),
            Some("batches"),
            Some(_),
            Some("cancel"),
            None,
        ] => (Route::BatchCancel, &[M::POST]),
        [
            Some("messages"),
            Some("batches"),
            Some(_),
            Some("results"),
            None,
        ] => (Route::BatchResults, &[M::GET]),
        _ => return Match::NotFound,
    };
    if allowed.contains(method) {
        Match::Route(route)
    } else {
        Match::WrongMethod(route)
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
    use http::Method;

    #[test]
    fn matches_every_proxied_route_and_its_methods() {
        let cases = [
            (Method::POST, "/v1/messages", Match::Route(Route::Messages)),
            (
                Method::GET,
                "/v1/messages",
                Match::WrongMethod(Route::Messages),
            ),
            (
                Method::POST,
                "/v1/messages/count_tokens",
                Match::Route(Route::CountTokens),
            ),
            (Method::GET, "/v1/models", Match::Route(Route::Models)),
            (
                Method::GET,
                "/v1/models/claude-haiku-4-5",
                Match::Route(Route::Model),
            ),
            (
                Method::POST,
                "/v1/messages/batches",
                Match::Route(Route::Batches),
            ),
            (
                Method::GET,
                "/v1/messages/batches",
                Match::Route(Route::Batches),
            ),
            (
                Method::DELETE,
                "/v1/messages/batches/msgbatch_1",
                Match::Route(Route::Batch),
            ),
            (
                Method::POST,
                "/v1/messages/batches/msgbatch_1/cancel",
                Match::Route(Route::BatchCancel),
            ),
            (
                Method::GET,
                "/v1/messages/batches/msgbatch_1/results",
                Match::Route(Route::BatchResults),
            ),
            (
                Method::GET,
                "/v1/messages/batches/msgbatch_1/nope",
                Match::NotFound,
            ),
            (Method::POST, "/v1/messages/", Match::NotFound),
            (Method::GET, "/v1/models/..", Match::NotFound),
            (Method::GET, "/v1/models/a/b/c/d/e/f", Match::NotFound),
            (Method::GET, "/livez", Match::Other),
        ];
        for (m, p, want) in cases {
            assert_eq!(match_route(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn id_segments_refuse_traversal_and_encoding() {
        assert!(valid_id_segment("msgbatch_01ABC"));
        assert!(valid_id_segment("claude-sonnet-4-5-20250929"));
        for bad in ["", ".", "..", "a%2Fb", "a/b", "a b", "a?b"] {
            assert!(!valid_id_segment(bad), "{bad}");
        }
    }
}
