//! A log line that could come once per request (a spool that cannot be written fails every
//! request's record), limited so that a failure under load is not a flood: the first
//! occurrence is logged at once, then at most one line per period, each saying how many
//! occurrences were not logged since the line before. Those left unlogged when the occurrences
//! stop are reported by [`LogLimiter::overdue`], which a periodic task calls (off the request
//! path). Metrics count every occurrence; this only decides which ones get a line.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Occurrences since then that had no line.
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `n` occurrences now. `Some(suppressed)` when they are to be logged, with the number of
    /// occurrences not logged since the last line; `None` when they are only counted (to be
    /// carried by the next line).
    pub(crate) fn occur(&self, n: u64) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if s.last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            s.suppressed = s.suppressed.saturating_add(n);
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.suppressed))
    }

    /// The occurrences not logged yet, when there are some and the last line is at least a
    /// period old (or, at the `end`, whenever there are some): they are then reported (the
    /// caller logs them), as a line of their own.
    pub(crate) fn overdue(&self, end: bool) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let recent = s
            .last
            .is_some_and(|last| now.duration_since(last) < self.every);
        if s.suppressed == 0 || (recent && !end) {
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_at_once_then_one_line_a_period_carrying_what_it_left_out() {
        let limit = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(limit.overdue(false), None, "nothing happened");
        assert_eq!(limit.occur(1), Some(0));
        // A flood within the period: counted, not logged.
        for _ in 0..999 {
            assert_eq!(limit.occur(1), None);
        }
        assert_eq!(
            limit.occur(3),
            None,
            "a failed group write counts its records"
        );
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(limit.overdue(false), None, "not before a period has passed");
        assert_eq!(limit.occur(1), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limit.occur(2), Some(1003));
        // Occurrences that stop are reported by the periodic check, a period after the last
        // line, then nothing is left.
        assert_eq!(limit.occur(1), None);
        assert_eq!(limit.occur(1), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limit.overdue(false), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limit.overdue(false), Some(2));
        assert_eq!(limit.overdue(false), None);
        // That report was a line: the next occurrence waits a period.
        assert_eq!(limit.occur(1), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limit.occur(1), Some(1));
        // At the end, what is left is reported whatever the time.
        assert_eq!(limit.occur(1), None);
        assert_eq!(limit.overdue(true), Some(1));
        assert_eq!(limit.overdue(true), None);
        // Quiet for a long time: the next one is logged at once, with nothing left out.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(limit.overdue(false), None);
        assert_eq!(limit.occur(1), Some(0));
    }
}
