//! One circuit breaker per upstream target.
//!
//! ```text
//!            N consecutive failures, or failure rate ≥ R
//!            over the window with at least M attempts
//!   closed ─────────────────────────────────────────────► open
//!     ▲                                                     │ after `open_for`
//!     │ the probe succeeds                                  ▼
//!     └──────────────────────────── half-open (a single probe at a time)
//!                                        │ the probe fails
//!                                        └──────────────► open
//! ```
//!
//! What counts as a failure is decided by [`crate::classify`] ([`crate::classify::Class::breaker_failure`]),
//! never here. The state is an atomic read on every pick; counting a result is one atomic
//! update on a lock-free [`Window`] (plus a reset of the consecutive count after a failure
//! streak); transitions take a small lock, are logged (`rampart::breaker`) and exported as
//! `rampart_upstream_breaker_state{target}` (0 closed, 1 open, 2 half-open) and
//! `rampart_upstream_breaker_transitions_total{target,to}`. Time is [`Clock`] milliseconds, so
//! tests run on paused `tokio::time`.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::window::Window;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Breakers off: every target is always available.
    pub enabled: bool,
    /// Open after this many failures in a row. Default 5.
    pub consecutive_failures: u32,
    /// Open when failures / attempts over the window reach this share (0–1). Default 0.5.
    pub failure_rate: f64,
    /// …provided the window holds at least this many attempts. Default 20.
    pub min_requests: u32,
    /// The failure-rate window. Default 10 s.
    pub window: Duration,
    /// How long a breaker stays open before letting one probe through. Default 10 s.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
        }
    }
}

/// Breaker states, as exported (`rampart_upstream_breaker_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Requests flow.
    Closed = 0,
    /// Requests are refused until the open period ends.
    Open = 1,
    /// One probe request may go through.
    HalfOpen = 2,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    /// The log and label name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Whether a target may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: yes.
    Closed,
    /// The open period is over (or half-open with no probe out): yes, as the probe, if
    /// [`Breaker::try_probe`] wins the slot.
    Probe,
    /// Half-open with its probe in flight: no.
    Busy,
    /// Open: no, until this time ([`crate::window::Clock`] ms).
    Open {
        /// When the open period ends.
        until_ms: u64,
    },
}

/// A circuit breaker. See the module docs.
#[derive(Debug)]
pub struct Breaker {
    target: String,
    settings: BreakerSettings,
    state: AtomicU8,
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    consecutive: AtomicU32,
    /// (failures, attempts) while closed.
    window: Window,
    transition: Mutex<()>,
    gauge: metrics::Gauge,
}

impl Breaker {
    /// A closed breaker for the target named `target`.
    #[must_use]
    pub fn new(target: &str, settings: BreakerSettings) -> Self {
        let gauge =
            metrics::gauge!("rampart_upstream_breaker_state", "target" => target.to_owned());
        gauge.set(0.0);
        Self {
            target: target.to_owned(),
            settings,
            state: AtomicU8::new(State::Closed as u8),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            consecutive: AtomicU32::new(0),
            window: Window::new(settings.window),
            transition: Mutex::new(()),
            gauge,
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether the target may take a request at `now_ms`.
    #[must_use]
    pub fn admit(&self, now_ms: u64) -> Admit {
        match self.state() {
            State::Closed => Admit::Closed,
            State::Open => {
                let until_ms = self.open_until_ms.load(Ordering::Acquire);
                if now_ms >= until_ms {
                    Admit::Probe
                } else {
                    Admit::Open { until_ms }
                }
            }
            State::HalfOpen if self.probing.load(Ordering::Acquire) => Admit::Busy,
            State::HalfOpen => Admit::Probe,
        }
    }

    /// Take the single probe slot (moving an expired open breaker to half-open). `true` when
    /// this caller is now the probe and must report its result with `probe = true` (or call
    /// [`Breaker::release_probe`]).
    pub fn try_probe(&self, now_ms: u64) -> bool {
        let _one = self
            .transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.state() {
            State::Open if now_ms >= self.open_until_ms.load(Ordering::Acquire) => {
                self.move_to(State::HalfOpen, "open period over");
                self.probing.store(true, Ordering::Release);
                true
            }
            State::HalfOpen if !self.probing.load(Ordering::Acquire) => {
                self.probing.store(true, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// A probe ended without a result (the client went away): let another one through.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Count one attempt's result. Results of attempts that started before the breaker opened
    /// are ignored while it is open or half-open; only the probe decides half-open.
    pub fn record(&self, now_ms: u64, failure: bool, probe: bool) {
        if !self.settings.enabled {
            return;
        }
        if probe {
            let _one = self
                .transition
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.probing.store(false, Ordering::Release);
            if self.state() == State::HalfOpen {
                if failure {
                    self.open(now_ms, "the probe failed");
                } else {
                    self.consecutive.store(0, Ordering::Release);
                    self.window.clear();
                    self.move_to(State::Closed, "the probe succeeded");
                }
            }
            return;
        }
        if self.state() != State::Closed {
            return;
        }
        if !failure {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Release);
            }
            self.window.add(now_ms, 0, 1);
            return;
        }
        let streak = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        self.window.add(now_ms, 1, 1);
        let s = &self.settings;
        let reason = if streak >= s.consecutive_failures {
            Some(format!("{streak} consecutive failures"))
        } else {
            let (failures, attempts) = self.window.sums(now_ms);
            (attempts >= u64::from(s.min_requests)
                && failures as f64 >= s.failure_rate * attempts as f64)
                .then(|| {
                    format!(
                        "{failures} of {attempts} attempts failed in the last {} s",
                        s.window.as_secs()
                    )
                })
        };
        if let Some(reason) = reason {
            let _one = self
                .transition
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if self.state() == State::Closed {
                self.open(now_ms, &reason);
            }
        }
    }

    /// Under the transition lock.
    fn open(&self, now_ms: u64, reason: &str) {
        let open_ms = u64::try_from(self.settings.open_for.as_millis()).unwrap_or(u64::MAX);
        self.open_until_ms
            .store(now_ms.saturating_add(open_ms), Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
        self.window.clear();
        self.move_to(State::Open, reason);
    }

    /// Under the transition lock.
    fn move_to(&self, to: State, reason: &str) {
        let from = self.state();
        self.state.store(to as u8, Ordering::Release);
        self.gauge.set(f64::from(to as u8));
        metrics::counter!(
            "rampart_upstream_breaker_transitions_total",
            "target" => self.target.clone(),
            "to" => to.as_str()
        )
        .increment(1);
        match to {
            State::Open => tracing::warn!(
                target: "rampart::breaker",
                upstream = %self.target,
                from = from.as_str(),
                to = to.as_str(),
                reason,
                open_for_ms = u64::try_from(self.settings.open_for.as_millis()).unwrap_or(u64::MAX),
                "circuit breaker opened"
            ),
            State::HalfOpen | State::Closed => tracing::info!(
                target: "rampart::breaker",
                upstream = %self.target,
                from = from.as_str(),
                to = to.as_str(),
                reason,
                "circuit breaker {}", if to == State::Closed { "closed" } else { "half-open" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(consecutive: u32) -> Breaker {
        Breaker::new(
            "t",
            BreakerSettings {
                consecutive_failures: consecutive,
                open_for: Duration::from_secs(10),
                ..BreakerSettings::default()
            },
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_streak() {
        let b = breaker(3);
        b.record(0, true, false);
        b.record(1, true, false);
        b.record(2, false, false);
        b.record(3, true, false);
        b.record(4, true, false);
        assert_eq!(b.state(), State::Closed);
        b.record(5, true, false);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(6), Admit::Open { until_ms: 10_005 });
    }

    #[test]
    fn opens_on_the_failure_rate_once_the_window_has_enough_attempts() {
        let b = Breaker::new(
            "t",
            BreakerSettings {
                consecutive_failures: 100,
                failure_rate: 0.5,
                min_requests: 10,
                ..BreakerSettings::default()
            },
        );
        for i in 0..8 {
            b.record(i, i % 2 == 0, false);
        }
        assert_eq!(b.state(), State::Closed, "too few attempts to judge");
        b.record(9, false, false);
        b.record(10, true, false);
        assert_eq!(b.state(), State::Open, "5 of 10 failed");
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_its_result_decides() {
        let b = breaker(1);
        b.record(0, true, false);
        assert_eq!(b.admit(9_999), Admit::Open { until_ms: 10_000 });
        assert!(!b.try_probe(9_999));
        assert_eq!(b.admit(10_000), Admit::Probe);
        assert!(b.try_probe(10_000));
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(10_001), Admit::Busy);
        assert!(!b.try_probe(10_001), "a single probe at a time");
        // A late result from before the breaker opened does not decide anything.
        b.record(10_002, false, false);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(10_003, true, true);
        assert_eq!(b.state(), State::Open, "a failed probe reopens");
        assert_eq!(b.admit(10_004), Admit::Open { until_ms: 20_003 });
        assert!(b.try_probe(20_003));
        b.record(20_004, false, true);
        assert_eq!((b.state(), b.admit(20_005)), (State::Closed, Admit::Closed));
    }

    #[test]
    fn a_released_probe_frees_the_slot() {
        let b = breaker(1);
        b.record(0, true, false);
        assert!(b.try_probe(10_000));
        b.release_probe();
        assert_eq!(b.admit(10_001), Admit::Probe);
        assert!(b.try_probe(10_001));
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let b = Breaker::new(
            "t",
            BreakerSettings {
                enabled: false,
                consecutive_failures: 1,
                ..BreakerSettings::default()
            },
        );
        for i in 0..50 {
            b.record(i, true, false);
        }
        assert_eq!(b.admit(60), Admit::Closed);
    }
}
