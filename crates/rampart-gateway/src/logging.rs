//! Log set-up: JSON (or text) lines on stderr, and the fast path for access-log lines.
//!
//! Lines are appended to an in-memory buffer and written by a background thread every 50 ms (or
//! sooner when the buffer fills): one `write` per batch instead of a syscall and a thread wake-up
//! per request line, which matters on the hot path. The buffer is bounded; if stderr stalls, lines
//! beyond 16 MiB are dropped and the count of dropped lines is reported once it recovers.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT: usize = 256 * 1024;
const MAX_BUFFER: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

static SINK: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();

/// Append one pre-formatted line (ending in `\n`) to the log buffer. Returns `false` when logging
/// was not initialised through [`init`] (the caller then falls back to `tracing`).
pub(crate) fn append_line(line: &[u8]) -> bool {
    match SINK.get() {
        Some(shared) => {
            let mut w = &Batched(shared.clone());
            let _ = w.write(line);
            true
        }
        None => false,
    }
}

/// The `MakeWriter` handed to tracing: each event is one `write_all` into the shared buffer.
#[derive(Debug, Clone)]
struct Batched(Arc<Shared>);

impl Write for &Batched {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let Ok(mut buf) = self.0.buf.lock() else {
            return Ok(data.len());
        };
        if buf.len() + data.len() > MAX_BUFFER {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            buf.extend_from_slice(data);
            if buf.len() >= FLUSH_AT {
                self.0.wake.notify_one();
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = &'a Batched;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Flushes what is buffered when dropped; keep it alive for the life of the program.
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn flusher(shared: &Shared) {
    let mut out = Vec::with_capacity(FLUSH_AT);
    loop {
        let closed = {
            let Ok(guard) = shared.buf.lock() else { return };
            let (mut guard, _) = match shared.wake.wait_timeout(guard, FLUSH_EVERY) {
                Ok(r) => r,
                Err(_) => return,
            };
            std::mem::swap(&mut *guard, &mut out);
            shared.closed.load(Ordering::Acquire)
        };
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        let mut stderr = std::io::stderr().lock();
        if !out.is_empty() {
            let _ = stderr.write_all(&out);
            out.clear();
        }
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "{{\"level\":\"WARN\",\"message\":\"log buffer full: {dropped} line(s) dropped\"}}"
            );
        }
        let _ = stderr.flush();
        if closed {
            return;
        }
    }
}

/// Install the global subscriber. `RAMPART_LOG` (a `tracing` filter) overrides `level`.
/// Keep the returned guard alive: dropping it flushes pending lines.
pub fn init(level: &str, json: bool) -> LogGuard {
    let filter = std::env::var("RAMPART_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let shared = SINK.get_or_init(|| Arc::new(Shared::default())).clone();
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("rampart-log".to_owned())
            .spawn(move || flusher(&shared))
            .ok()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Batched(shared.clone()))
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
    LogGuard { shared, thread }
}
