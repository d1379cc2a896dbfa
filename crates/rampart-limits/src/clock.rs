//! Time for the limiter, in milliseconds since the Unix epoch.
//!
//! Budgets need the calendar (UTC days and months) and instances sharing Redis need one time
//! line, so the limiter reads wall-clock milliseconds. [`SystemClock`] reads the system clock
//! at every call, so a clock corrected after start (an NTP step, a VM resumed) moves budgets'
//! periods and reset times with the ledger's records and the `Date` header; [`TokioClock`]
//! derives them from `tokio::time` (anchored to the system clock once, so paused-time tests move
//! it), and tests drive [`ManualClock`] by hand. With several instances, their clocks are
//! assumed to agree within a few milliseconds (NTP): a skew only shifts refills by the skew, and
//! a bucket never refills backwards.

use std::sync::atomic::{AtomicI64, Ordering};

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock, read at every call (see the module docs): what the server runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_ms()
    }
}

/// The system clock in milliseconds since the Unix epoch (0 before it).
fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Wall-clock time that advances with `tokio::time` (see the module docs); for tests: a
/// system clock stepped after it was made is not seen.
#[derive(Debug)]
pub struct TokioClock {
    anchor_ms: i64,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// Anchored to the system clock now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            anchor_ms: system_ms(),
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.anchor.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.anchor_ms.saturating_add(elapsed)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Stopped at `now_ms`.
    #[must_use]
    pub fn at(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    /// Move forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Jump to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_read_at_every_call() {
        let before = system_ms();
        let now = SystemClock.now_ms();
        assert!(before <= now && now <= system_ms());
        // 2026 or later, in milliseconds.
        assert!(now > 1_767_225_600_000);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        let t0 = c.now_ms();
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(c.now_ms() - t0, 90_000);
    }
}
