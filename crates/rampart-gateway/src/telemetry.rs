//! Prometheus metrics and the access log.
//!
//! Metric names follow `rampart_<area>_<thing>_{total,seconds}`; labels come from bounded sets
//! (route templates, status codes, model ids that look like model ids, capped in number).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::routes::Route;
use crate::sse::UsageSummary;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder once and return its handle. Later calls return the same one.
///
/// # Errors
/// When another recorder was installed by someone else.
pub fn install() -> Result<PrometheusHandle, String> {
    // Serialised: two first callers at once would both try to install a recorder.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _installing = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    metrics::describe_counter!(
        "rampart_cache_events_total",
        "Response-cache lookups that hit or missed, and answers stored."
    );
    metrics::describe_counter!(
        "rampart_cache_breakpoints_added_total",
        "Prompt-cache breakpoints added to requests by the breakpoint policy."
    );
    metrics::describe_gauge!(
        "rampart_http_requests_in_flight",
        "Requests being served now."
    );
    metrics::describe_gauge!(
        "rampart_http_connections",
        "Client connections open now, by request worker."
    );
    metrics::describe_counter!(
        "rampart_upstream_errors_total",
        "Upstream failures by kind (connect, timeout, io, stream_error)."
    );
    metrics::describe_counter!(
        "rampart_usage_estimated_total",
        "Messages requests charged an estimate: the upstream may have billed them, their usage was not read."
    );
    counter!("rampart_usage_estimated_total").increment(0);
    rampart_ledger::ledger::describe_metrics();
    crate::exchange::describe_metrics();
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

const STATUS_LABELS: [&str; 17] = [
    "200", "400", "401", "402", "403", "404", "405", "413", "429", "499", "500", "502", "503",
    "504", "529", "2xx", "other",
];

fn status_index(status: u16) -> usize {
    match status {
        200 => 0,
        400 => 1,
        401 => 2,
        402 => 3,
        403 => 4,
        404 => 5,
        405 => 6,
        413 => 7,
        429 => 8,
        499 => 9,
        500 => 10,
        502 => 11,
        503 => 12,
        504 => 13,
        529 => 14,
        s if s < 300 => 15,
        _ => 16,
    }
}

const ROUTES: [Route; 9] = [
    Route::Messages,
    Route::CountTokens,
    Route::Models,
    Route::Model,
    Route::Batches,
    Route::Batch,
    Route::BatchCancel,
    Route::BatchResults,
    Route::Unknown,
];

/// Metric handles resolved once, so recording is a few atomic operations, not registry lookups.
struct RouteHandles {
    duration: Histogram,
    upstream: Histogram,
    overhead: Histogram,
    by_status: [OnceLock<Counter>; STATUS_LABELS.len()],
}

struct TokenHandles {
    input: Counter,
    output: Counter,
    cache_read: Counter,
    cache_creation: Counter,
}

struct Handles {
    routes: Vec<RouteHandles>,
    in_flight: Gauge,
    /// Few entries (at most [`MAX_MODEL_LABELS`]): a linear scan beats hashing here.
    models: Mutex<Vec<(String, Arc<TokenHandles>)>>,
}

fn handles() -> &'static Handles {
    static H: OnceLock<Handles> = OnceLock::new();
    H.get_or_init(|| Handles {
        routes: ROUTES
            .iter()
            .map(|r| {
                let t = r.template();
                RouteHandles {
                    duration: histogram!("rampart_http_request_duration_seconds", "route" => t),
                    upstream: histogram!("rampart_upstream_duration_seconds", "route" => t),
                    overhead: histogram!("rampart_gateway_overhead_seconds", "route" => t),
                    by_status: std::array::from_fn(|_| OnceLock::new()),
                }
            })
            .collect(),
        in_flight: gauge!("rampart_http_requests_in_flight"),
        models: Mutex::new(Vec::new()),
    })
}

fn route_handles(route: Route) -> &'static RouteHandles {
    let h = handles();
    let i = ROUTES
        .iter()
        .position(|r| *r == route)
        .unwrap_or(ROUTES.len() - 1);
    &h.routes[i.min(h.routes.len() - 1)]
}

const MAX_MODEL_LABELS: usize = 64;

/// Token counters for a model id: only ids that look like model ids get their own label, and only
/// the first few dozen seen; the rest share `other`.
fn token_handles(model: Option<&str>) -> Option<Arc<TokenHandles>> {
    let m = model.unwrap_or("unknown");
    let plausible = !m.is_empty()
        && m.len() <= 64
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    let mut map = handles().models.lock().ok()?;
    let find = |map: &Vec<(String, Arc<TokenHandles>)>, l: &str| {
        map.iter().find(|(k, _)| k == l).map(|(_, t)| t.clone())
    };
    if plausible && let Some(t) = find(&map, m) {
        return Some(t);
    }
    let label = if plausible && map.len() < MAX_MODEL_LABELS {
        m
    } else {
        "other"
    };
    if let Some(t) = find(&map, label) {
        return Some(t);
    }
    let owned = label.to_owned();
    let t = Arc::new(TokenHandles {
        input: counter!("rampart_tokens_total", "model" => owned.clone(), "kind" => "input"),
        output: counter!("rampart_tokens_total", "model" => owned.clone(), "kind" => "output"),
        cache_read: counter!("rampart_tokens_total", "model" => owned.clone(), "kind" => "cache_read"),
        cache_creation: counter!("rampart_tokens_total", "model" => owned.clone(), "kind" => "cache_creation"),
    });
    map.push((owned, t.clone()));
    Some(t)
}

/// A request entered the gateway.
pub fn request_started() {
    handles().in_flight.increment(1.0);
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
    let h = handles();
    h.in_flight.decrement(1.0);
    let rh = route_handles(f.route);
    let si = status_index(f.status);
    rh.by_status[si]
        .get_or_init(|| {
            counter!("rampart_http_requests_total", "route" => f.route.template(), "status" => STATUS_LABELS[si])
        })
        .increment(1);
    rh.duration.record(f.total.as_secs_f64());
    if let Some(u) = f.upstream {
        rh.upstream.record(u.as_secs_f64());
    }
    if let Some(o) = f.overhead {
        rh.overhead.record(o.as_secs_f64());
    }
    if let Some(u) = f.usage {
        let served = u.model.as_deref().or(f.model_requested);
        if let Some(t) = token_handles(served) {
            t.input.increment(u.input_tokens);
            t.output.increment(u.output_tokens);
            t.cache_read.increment(u.cache_read_input_tokens);
            t.cache_creation.increment(u.cache_creation_input_tokens);
        }
        if let Some(err) = &u.stream_error {
            upstream_error("stream_error");
            tracing::warn!(target: "rampart::proxy", request_id = f.request_id, error_type = %err, "upstream stream carried an error event");
        }
    }
    access_log(f);
}

/// One JSON line per request, formatted by hand (this runs once per request).
fn access_log(f: &Finished<'_>) {
    if !tracing::enabled!(target: "rampart::access", tracing::Level::INFO) {
        return;
    }
    // One buffer per thread (the accounting thread, usually), kept: a line is ~560 bytes.
    thread_local! {
        static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        access_line(f, &mut line);
        if !crate::logging::append_line(line.as_bytes()) {
            tracing::info!(target: "rampart::access", "{}", line.trim_end());
        }
        // A rare long line (a long model name) does not keep its room for good.
        if line.capacity() > 64 * 1024 {
            line.clear();
            line.shrink_to(1024);
        }
    });
}

/// The access log's JSON line for `f`, newline included.
fn access_line(f: &Finished<'_>, line: &mut String) {
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line);
    line.push_str("\",\"level\":\"INFO\",\"target\":\"rampart::access\",\"message\":\"request\"");
    // Request ids are validated to a safe charset, methods are tokens, routes are constants.
    field_safe(line, "request_id", f.request_id);
    field_safe(line, "method", f.method);
    field_safe(line, "route", f.route.template());
    line.push_str(",\"status\":");
    push_u64(line, u64::from(f.status));
    if let Some(k) = f.key {
        field_safe(line, "key", k);
    }
    field_str(line, "model", f.model_requested);
    field_str(
        line,
        "served_model",
        f.usage.and_then(|u| u.model.as_deref()),
    );
    line.push_str(if f.streamed {
        ",\"stream\":true"
    } else {
        ",\"stream\":false"
    });
    field_ms(line, "latency_ms", f.total);
    if let Some(u) = f.upstream {
        field_ms(line, "upstream_ms", u);
    }
    if let Some(o) = f.overhead {
        field_ms(line, "overhead_ms", o);
    }
    if let Some(u) = f.usage {
        for (name, v) in [
            ("input_tokens", u.input_tokens),
            ("output_tokens", u.output_tokens),
            ("cache_read_tokens", u.cache_read_input_tokens),
            ("cache_creation_tokens", u.cache_creation_input_tokens),
        ] {
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            push_u64(line, v);
        }
        field_str(line, "stop_reason", u.stop_reason.as_deref());
        field_str(line, "stream_error", u.stream_error.as_deref());
    }
    line.push_str(if f.client_aborted {
        ",\"client_aborted\":true"
    } else {
        ",\"client_aborted\":false"
    });
    field_str(line, "upstream_request_id", f.upstream_request_id);
    line.push_str("}\n");
}

/// `,"name":"value"` for a value known to need no escaping.
fn field_safe(line: &mut String, name: &str, value: &str) {
    debug_assert!(value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
    line.push_str(",\"");
    line.push_str(name);
    line.push_str("\":\"");
    line.push_str(value);
    line.push('"');
}

/// `,"name":"value"` with JSON escaping; nothing when `value` is `None`.
fn field_str(line: &mut String, name: &str, value: Option<&str>) {
    let Some(v) = value else { return };
    line.push_str(",\"");
    line.push_str(name);
    line.push_str("\":\"");
    if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        line.push_str(v);
        line.push('"');
        return;
    }
    let mut rest = v;
    while let Some(i) = rest
        .bytes()
        .position(|b| b == b'"' || b == b'\\' || b < 0x20)
    {
        line.push_str(&rest[..i]);
        let b = rest.as_bytes()[i];
        match b {
            b'"' => line.push_str("\\\""),
            b'\\' => line.push_str("\\\\"),
            _ => {
                let _ = write!(line, "\\u{b:04x}");
            }
        }
        rest = &rest[i + 1..];
    }
    line.push_str(rest);
    line.push('"');
}

/// `,"name":1.234` (milliseconds with microsecond precision), without float formatting.
fn field_ms(line: &mut String, name: &str, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    line.push_str(",\"");
    line.push_str(name);
    line.push_str("\":");
    push_u64(line, us / 1000);
    line.push('.');
    push_padded(line, us % 1000, 3);
}

/// Decimal digits of `v`, without going through `core::fmt`.
fn push_u64(line: &mut String, v: u64) {
    line.push_str(itoa::Buffer::new().format(v));
}

/// `v` left-padded with zeros to `width` digits.
fn push_padded(line: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut v = v;
    let mut i = buf.len();
    while v > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = buf.len().saturating_sub(width).min(i);
    // ASCII digits only, so always UTF-8.
    line.push_str(std::str::from_utf8(&buf[start..]).unwrap_or_default());
}

/// RFC 3339 UTC time with microseconds; the date-and-seconds part is formatted once per second.
fn push_timestamp(line: &mut String) {
    thread_local! {
        static CACHE: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = time::OffsetDateTime::now_utc();
    let secs = now.unix_timestamp();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1.clear();
            let _ = write!(
                c.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            );
            c.0 = secs;
        }
        line.push_str(&c.1);
    });
    line.push('.');
    push_padded(line, u64::from(now.microsecond()), 6);
    line.push('Z');
}

/// Count a response-cache event: `hit`, `miss` or `store`.
pub fn cache_event(event: &'static str) {
    counter!("rampart_cache_events_total", "event" => event).increment(1);
}

/// Count what a caching lever saved (`response` or `breakpoints`), in micro-dollars; a negative
/// amount (a breakpoint turn that only wrote the cache) is counted as extra spend.
pub fn cache_saved(lever: &'static str, micro_usd: i128) {
    if micro_usd >= 0 {
        counter!("rampart_cache_saved_micro_usd_total", "lever" => lever)
            .increment(u64::try_from(micro_usd).unwrap_or(u64::MAX));
    } else {
        counter!("rampart_cache_extra_micro_usd_total", "lever" => lever)
            .increment(u64::try_from(-micro_usd).unwrap_or(u64::MAX));
    }
}

/// Count prompt-cache breakpoints added to a request.
pub fn breakpoints_added(n: usize) {
    counter!("rampart_cache_breakpoints_added_total").increment(n as u64);
}

/// Publish the response store's size and evictions.
pub fn cache_store(bytes: u64, evictions: u64) {
    metrics::gauge!("rampart_cache_bytes").set(bytes as f64);
    metrics::gauge!("rampart_cache_evictions").set(evictions as f64);
}

/// Count an upstream failure by kind.
pub fn upstream_error(kind: &'static str) {
    counter!("rampart_upstream_errors_total", "kind" => kind).increment(1);
}

/// Count a Messages request charged an estimate because its usage was not read.
pub fn usage_estimated() {
    counter!("rampart_usage_estimated_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_fields_are_json_escaped() {
        let mut s = String::from("{\"a\":1");
        field_str(&mut s, "model", Some("a\"b\\c\nd"));
        s.push('}');
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["model"], "a\"b\\c\nd");
    }

    #[test]
    fn numbers_are_formatted_like_display() {
        for v in [0u64, 7, 10, 99, 1_000, 123_456_789, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, v);
            assert_eq!(s, v.to_string());
        }
        let mut s = String::new();
        push_padded(&mut s, 42, 6);
        assert_eq!(s, "000042");
        push_padded(&mut s, 0, 3);
        push_padded(&mut s, 999, 3);
        assert_eq!(s, "000042000999");
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let mut s = String::new();
        push_timestamp(&mut s);
        assert_eq!(s.len(), "2026-11-25T23:49:12.123456Z".len(), "{s}");
        assert!(
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).is_ok(),
            "{s}"
        );
    }

    #[test]
    fn milliseconds_keep_microsecond_precision() {
        let mut s = String::new();
        field_ms(&mut s, "x", Duration::from_micros(12_345));
        assert_eq!(s, ",\"x\":12.345");
    }

    #[test]
    fn status_labels_cover_common_codes() {
        assert_eq!(STATUS_LABELS[status_index(200)], "200");
        assert_eq!(STATUS_LABELS[status_index(201)], "2xx");
        assert_eq!(STATUS_LABELS[status_index(418)], "other");
        assert_eq!(STATUS_LABELS[status_index(529)], "529");
    }
}
