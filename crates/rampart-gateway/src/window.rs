//! Lock-free sliding-window counters and the millisecond clock they run on.
//!
//! [`Window`] keeps two counts (e.g. failures and attempts, or requests and retries) over the
//! last few seconds in a ring of buckets. Each bucket is one `AtomicU64` packing the bucket's
//! epoch (24 bits) with the two counts (20 bits each, saturating), so recording is one
//! compare-and-swap and any thread may record or read without a lock. A bucket whose epoch is
//! older than the window is stale and read as zero. Each worker thread records into a ring of
//! its own (on its own cache lines), so threads recording every request do not contend; a read
//! sums the rings.
//!
//! [`Clock`] reads `tokio::time`, so windows, breakers and cool-downs follow paused time in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Milliseconds since a fixed start, on `tokio::time`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Milliseconds since the start.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `ms` milliseconds after the start.
    #[must_use]
    pub fn instant(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Buckets in a window.
const BUCKETS: usize = 10;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 24) - 1;

fn pack(epoch: u64, a: u64, b: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (2 * COUNT_BITS)) | (a.min(COUNT_MAX) << COUNT_BITS) | b.min(COUNT_MAX)
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v >> (2 * COUNT_BITS),
        (v >> COUNT_BITS) & COUNT_MAX,
        v & COUNT_MAX,
    )
}

/// Rings per window: threads are spread over them.
const SHARDS: usize = 4;

/// One ring of buckets, alone on its cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Ring([AtomicU64; BUCKETS]);

/// The ring this thread records into.
fn shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Two counts over a sliding window of [`BUCKETS`] buckets. See the module docs.
#[derive(Debug)]
pub struct Window {
    rings: [Ring; SHARDS],
    bucket_ms: u64,
}

impl Window {
    /// A window covering `span` (at least 10 ms), in ten buckets.
    #[must_use]
    pub fn new(span: Duration) -> Self {
        let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX).max(10);
        Self {
            rings: std::array::from_fn(|_| Ring(std::array::from_fn(|_| AtomicU64::new(0)))),
            bucket_ms: span_ms.div_ceil(BUCKETS as u64),
        }
    }

    fn epoch(&self, now_ms: u64) -> u64 {
        now_ms / self.bucket_ms
    }

    /// Add `a` and `b` to the current bucket.
    pub fn add(&self, now_ms: u64, a: u64, b: u64) {
        let epoch = self.epoch(now_ms);
        let slot = &self.rings[shard()].0[(epoch % BUCKETS as u64) as usize];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (e, x, y) = unpack(v);
            Some(if e == epoch & EPOCH_MASK {
                pack(epoch, x + a, y + b)
            } else {
                pack(epoch, a, b)
            })
        });
    }

    /// The two sums over the window ending now.
    #[must_use]
    pub fn sums(&self, now_ms: u64) -> (u64, u64) {
        let epoch = self.epoch(now_ms) & EPOCH_MASK;
        let (mut a, mut b) = (0, 0);
        for slot in self.rings.iter().flat_map(|r| &r.0) {
            let (e, x, y) = unpack(slot.load(Ordering::Acquire));
            // Epochs are 24-bit: compare modulo 2^24.
            if (epoch.wrapping_sub(e) & EPOCH_MASK) < BUCKETS as u64 {
                a += x;
                b += y;
            }
        }
        (a, b)
    }

    /// Forget everything.
    pub fn clear(&self) {
        for slot in self.rings.iter().flat_map(|r| &r.0) {
            slot.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_the_window_and_age_out() {
        let w = Window::new(Duration::from_secs(10));
        w.add(0, 1, 2);
        w.add(500, 1, 0);
        w.add(4_200, 0, 5);
        assert_eq!(w.sums(4_300), (2, 7));
        assert_eq!(w.sums(9_999), (2, 7));
        // The first bucket (0–1 s) leaves the window once ten newer buckets have begun.
        assert_eq!(w.sums(10_000), (0, 5));
        assert_eq!(w.sums(13_999), (0, 5));
        assert_eq!(w.sums(14_000), (0, 0));
    }

    #[test]
    fn a_reused_slot_starts_from_zero_and_counts_saturate() {
        let w = Window::new(Duration::from_secs(1));
        w.add(0, 3, 3);
        w.add(1_000, 1, 0);
        assert_eq!(w.sums(1_000), (1, 0));
        w.add(1_000, COUNT_MAX + 10, 0);
        assert_eq!(w.sums(1_000).0, COUNT_MAX);
        w.clear();
        assert_eq!(w.sums(1_000), (0, 0));
    }

    #[test]
    fn threads_record_without_losing_counts() {
        let w = std::sync::Arc::new(Window::new(Duration::from_secs(10)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        w.add(100, 1, 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(w.sums(100), (40_000, 40_000));
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_time() {
        let c = Clock::new();
        tokio::time::advance(Duration::from_millis(1_234)).await;
        assert_eq!(c.now_ms(), 1_234);
        assert_eq!(c.instant(1_234), Instant::now());
    }
}
