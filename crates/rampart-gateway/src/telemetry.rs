//! Prometheus metrics and the access log.
//!
//! Metric names follow `rampart_<area>_<thing>_{total,seconds}`; labels come from bounded sets
//! (route templates, status codes, model ids that look like model ids, capped in number).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::routes::Route;
use crate::sse::UsageSummary;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder once and return its handle. Later calls return the same one.
///
/// # Errors
/// When another recorder was installed by someone else.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".to_owned()), &buckets)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    metrics::describe_counter!(
        "rampart_http_requests_total",
        "Requests by route template and status."
    );
    metrics::describe_histogram!(
        "rampart_http_request_duration_seconds",
        "Time from request accepted to response body finished, by route."
    );
    metrics::describe_histogram!(
        "rampart_upstream_duration_seconds",
        "Time from upstream request sent to upstream response headers, by route."
    );
    metrics::describe_histogram!(
        "rampart_gateway_overhead_seconds",
        "Time Rampart itself added before the response headers (total minus upstream), by route."
    );
    metrics::describe_counter!("rampart_tokens_total", "Tokens by model and kind.");
    metrics::describe_gauge!(
        "rampart_http_requests_in_flight",
        "Requests being served now."
    );
    metrics::describe_counter!(
        "rampart_upstream_errors_total",
        "Upstream failures by kind (connect, timeout, io, stream_error)."
    );
}

/// Keep the histograms' memory bounded; call every few seconds.
pub fn upkeep() {
    if let Some(h) = HANDLE.get() {
        h.run_upkeep();
    }
}

/// Prometheus text for `/metrics`.
#[must_use]
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        402 => "402",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        529 => "529",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

const MAX_MODEL_LABELS: usize = 64;

/// A model id fit to be a label: looks like a model id and is among the first few dozen seen.
fn model_label(model: Option<&str>) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Some(m) = model else {
        return "unknown".to_owned();
    };
    let plausible = !m.is_empty()
        && m.len() <= 64
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !plausible {
        return "other".to_owned();
    }
    let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
    let Ok(mut set) = seen.lock() else {
        return "other".to_owned();
    };
    if set.contains(m) || set.len() < MAX_MODEL_LABELS {
        set.insert(m.to_owned());
        m.to_owned()
    } else {
        "other".to_owned()
    }
}

/// A request entered the gateway.
pub fn request_started() {
    gauge!("rampart_http_requests_in_flight").increment(1.0);
}

/// Everything known about a finished request, for metrics and the access log.
#[derive(Debug)]
pub struct Finished<'a> {
    /// Route template.
    pub route: Route,
    /// HTTP method.
    pub method: &'a str,
    /// Request id.
    pub request_id: &'a str,
    /// Key label (digest prefix), when authenticated.
    pub key: Option<&'a str>,
    /// Model asked for.
    pub model_requested: Option<&'a str>,
    /// Status sent to the client.
    pub status: u16,
    /// Whether the response was an SSE stream.
    pub streamed: bool,
    /// Total time until the body finished (or was dropped).
    pub total: Duration,
    /// Upstream time to headers, when an upstream call was made.
    pub upstream: Option<Duration>,
    /// Rampart's own time before response headers.
    pub overhead: Option<Duration>,
    /// Usage read from the response.
    pub usage: Option<&'a UsageSummary>,
    /// Whether the client went away before the body finished.
    pub client_aborted: bool,
    /// Upstream request id.
    pub upstream_request_id: Option<&'a str>,
}

/// Record metrics and write the access-log line. Never logs keys or bodies.
pub fn request_finished(f: &Finished<'_>) {
    gauge!("rampart_http_requests_in_flight").decrement(1.0);
    let route = f.route.template();
    counter!("rampart_http_requests_total", "route" => route, "status" => status_label(f.status))
        .increment(1);
    histogram!("rampart_http_request_duration_seconds", "route" => route)
        .record(f.total.as_secs_f64());
    if let Some(u) = f.upstream {
        histogram!("rampart_upstream_duration_seconds", "route" => route).record(u.as_secs_f64());
    }
    if let Some(o) = f.overhead {
        histogram!("rampart_gateway_overhead_seconds", "route" => route).record(o.as_secs_f64());
    }
    let served_model = f.usage.and_then(|u| u.model.as_deref());
    if let Some(u) = f.usage {
        let model = model_label(served_model.or(f.model_requested));
        for (kind, n) in [
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cache_read", u.cache_read_input_tokens),
            ("cache_creation", u.cache_creation_input_tokens),
        ] {
            if n > 0 {
                counter!("rampart_tokens_total", "model" => model.clone(), "kind" => kind)
                    .increment(n);
            }
        }
        if let Some(err) = &u.stream_error {
            counter!("rampart_upstream_errors_total", "kind" => "stream_error").increment(1);
            tracing::warn!(target: "rampart::proxy", request_id = f.request_id, error_type = %err, "upstream stream carried an error event");
        }
    }
    tracing::info!(
        target: "rampart::access",
        request_id = f.request_id,
        method = f.method,
        route = route,
        status = f.status,
        key = f.key.unwrap_or("-"),
        model = f.model_requested.unwrap_or("-"),
        served_model = served_model.unwrap_or("-"),
        stream = f.streamed,
        latency_ms = duration_ms(f.total),
        upstream_ms = f.upstream.map(duration_ms),
        overhead_ms = f.overhead.map(duration_ms),
        input_tokens = f.usage.map(|u| u.input_tokens),
        output_tokens = f.usage.map(|u| u.output_tokens),
        cache_read_tokens = f.usage.map(|u| u.cache_read_input_tokens),
        cache_creation_tokens = f.usage.map(|u| u.cache_creation_input_tokens),
        stop_reason = f.usage.and_then(|u| u.stop_reason.as_deref()),
        client_aborted = f.client_aborted,
        upstream_request_id = f.upstream_request_id,
        "request"
    );
}

/// Count an upstream failure by kind.
pub fn upstream_error(kind: &'static str) {
    counter!("rampart_upstream_errors_total", "kind" => kind).increment(1);
}

fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}
