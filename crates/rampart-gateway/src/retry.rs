//! Retry policy: how many attempts, how long to wait between them, and a global retry budget so
//! an upstream outage is never amplified.
//!
//! - **Backoff**: exponential with full jitter — the wait before retry *n* (0 for the first retry)
//!   is uniform in `[0, min(max_backoff, initial_backoff · 2ⁿ)]`.
//! - **`retry-after`**: when the upstream names a wait (`retry-after-ms` / `retry-after`, read by
//!   [`crate::classify::retry_after`]) it is honoured exactly if it is at most `max_retry_after`;
//!   a longer one is not waited for on that target.
//! - **Budget**: over a sliding window, retries may be at most `budget_ratio` of requests plus
//!   `budget_min_per_sec` per second (so a quiet gateway can still retry). A retry the budget
//!   refuses is not made; the request ends with the failure it had.

use std::time::Duration;

use crate::window::Window;

/// The retry settings of a gateway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// Upstream attempts per request, across targets and fallback models. Default 3.
    pub max_attempts: u32,
    /// Backoff cap of the first retry. Default 500 ms.
    pub initial_backoff: Duration,
    /// Largest backoff. Default 8 s.
    pub max_backoff: Duration,
    /// Longest `retry-after` waited for. Default 10 s.
    pub max_retry_after: Duration,
    /// Retries allowed as a share of requests. Default 0.2.
    pub budget_ratio: f64,
    /// Retries allowed per second regardless of traffic. Default 10.
    pub budget_min_per_sec: u32,
    /// The budget's window. Default 10 s.
    pub budget_window: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(10),
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

impl RetrySettings {
    /// The jittered wait before retry number `retry` (0 for the first retry).
    #[must_use]
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(retry.min(30)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        if cap_us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(rand::random_range(0..=cap_us))
    }
}

/// The global retry budget. See the module docs.
#[derive(Debug)]
pub struct RetryBudget {
    /// (requests, retries).
    window: Window,
    ratio: f64,
    floor: f64,
}

impl RetryBudget {
    /// A budget from `settings`.
    #[must_use]
    pub fn new(settings: &RetrySettings) -> Self {
        Self {
            window: Window::new(settings.budget_window),
            ratio: settings.budget_ratio.max(0.0),
            floor: f64::from(settings.budget_min_per_sec) * settings.budget_window.as_secs_f64(),
        }
    }

    /// Count a request.
    pub fn request(&self, now_ms: u64) {
        self.window.add(now_ms, 1, 0);
    }

    /// Take one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        let (requests, retries) = self.window.sums(now_ms);
        if (retries as f64) < self.floor + self.ratio * requests as f64 {
            self.window.add(now_ms, 0, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let s = RetrySettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RetrySettings::default()
        };
        for (retry, cap) in [(0, 100), (1, 200), (2, 350), (9, 350), (40, 350)] {
            let waits: Vec<Duration> = (0..200).map(|_| s.backoff(retry)).collect();
            let max = waits.iter().max().unwrap();
            let min = waits.iter().min().unwrap();
            assert!(*max <= Duration::from_millis(cap), "retry {retry}: {max:?}");
            assert!(
                *min < Duration::from_millis(cap) / 4,
                "jitter reaches low: {min:?}"
            );
            assert!(
                *max > Duration::from_millis(cap) / 2,
                "jitter reaches high: {max:?}"
            );
        }
        let zero = RetrySettings {
            initial_backoff: Duration::ZERO,
            ..s
        };
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }

    #[test]
    fn the_budget_allows_a_floor_plus_a_share_of_traffic() {
        let budget = RetryBudget::new(&RetrySettings {
            budget_ratio: 0.2,
            budget_min_per_sec: 1,
            budget_window: Duration::from_secs(10),
            ..RetrySettings::default()
        });
        // Floor: 1/s over 10 s = 10 retries with no traffic at all.
        let granted = (0..50).filter(|_| budget.try_retry(0)).count();
        assert_eq!(granted, 10);
        // 100 requests add 20 more.
        for _ in 0..100 {
            budget.request(0);
        }
        let granted = (0..50).filter(|_| budget.try_retry(0)).count();
        assert_eq!(granted, 20);
        // Once the window has passed, the budget is whole again.
        assert!(budget.try_retry(10_000));
    }
}
