//! Log set-up: JSON (or text) lines on stderr, written off the request path by a background thread.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `RAMPART_LOG` (a `tracing` filter) overrides `level`.
/// Keep the returned guard alive: dropping it flushes pending lines.
pub fn init(level: &str, json: bool) -> WorkerGuard {
    let filter = std::env::var("RAMPART_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    guard
}
