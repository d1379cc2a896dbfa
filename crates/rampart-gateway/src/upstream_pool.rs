//! The upstream pool: the targets a request may go to, how one is picked, and the transport.
//!
//! - **Targets** (`[[upstream.targets]]`, or the single `[upstream] base_url`): a base URL, a
//!   credential, a weight and the models it serves.
//! - **Picking** ([`Pool::pick`]): among the targets serving the model whose breaker admits a
//!   request and that are not cooling down, power of two choices — two at random, the one with
//!   the lower cost `latency EWMA × (in-flight + 1) ÷ weight` wins. The EWMA is of time to
//!   response headers of answers that end a request (failures are the breaker's), peak-sensitive (a slower sample is taken at once, faster ones decay in at
//!   a quarter each); a target without a sample in the last 10 s is costed like its rival, so it
//!   is tried again. A target whose breaker allows a probe is picked first, so a half-open
//!   breaker gets its probe. Batch routes always go to the batch target (the first one, or the
//!   one marked `batches = true`): a batch lives where it was created.
//! - **Cool-downs**: a 429 with `retry-after`, or any response with
//!   `anthropic-ratelimit-*-remaining: 0`, makes the target cool down until the wait or the
//!   matching `-reset` time (capped by `max_cooldown`). Cooling targets are skipped while another
//!   one can serve; when every candidate is cooling, the one that cools down first is returned as
//!   [`Pick::Cooling`] and the caller decides (a retry after a rate limit waits if the wait is
//!   short enough; anything else goes anyway — the limit may be per model and only the upstream
//!   knows).
//! - **Transport** ([`HyperTransport`]): each worker thread keeps its own upstream connections
//!   ([`crate::upstream`]), so a request and its upstream connection stay on one thread.
//!
//! Shared state is atomics only: in-flight counts, EWMAs, cool-downs and breaker states are read
//! and written by every worker thread without locks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;

use crate::breaker::{Admit, Breaker, BreakerSettings};
use crate::classify::{Class, Outcome, TransportFailure};
use crate::config::UpstreamTarget;
use crate::upstream_key::UpstreamKey;
use crate::window::Clock;

/// A latency sample older than this no longer describes the target.
const STALE_MS: u64 = 10_000;

/// A target of the pool.
#[derive(Debug)]
pub struct Target {
    /// Configured name (metric label, logs).
    pub name: String,
    /// Base URL.
    pub base: UpstreamTarget,
    /// Credential sent as `x-api-key`.
    pub key: Arc<UpstreamKey>,
    weight: f64,
    /// Model patterns served (`*` globs); empty = every model.
    models: Vec<String>,
    /// Its circuit breaker.
    pub breaker: Breaker,
    in_flight: AtomicU32,
    /// Peak EWMA of time to headers, in µs, as `f64` bits; 0 = no sample yet.
    ewma_us: AtomicU64,
    sampled_ms: AtomicU64,
    cool_until_ms: AtomicU64,
    /// Whether in-flight counts and latencies are kept (a pool of one has nothing to choose).
    balanced: bool,
    ttfb_seconds: metrics::Histogram,
    /// `rampart_upstream_attempts_total{target,outcome}`, resolved once per outcome.
    attempts: [std::sync::OnceLock<metrics::Counter>; Class::ALL.len()],
}

/// What a target is built from.
#[derive(Debug)]
pub struct TargetSpec {
    /// Name.
    pub name: String,
    /// Base URL.
    pub base: UpstreamTarget,
    /// Credential cell.
    pub key: Arc<UpstreamKey>,
    /// Relative weight (> 0).
    pub weight: f64,
    /// Model patterns; empty = all.
    pub models: Vec<String>,
}

impl Target {
    fn new(spec: TargetSpec, breaker: BreakerSettings, balanced: bool) -> Self {
        Self {
            breaker: Breaker::new(&spec.name, breaker),
            ttfb_seconds: metrics::histogram!(
                "rampart_upstream_target_ttfb_seconds",
                "target" => spec.name.clone()
            ),
            name: spec.name,
            base: spec.base,
            key: spec.key,
            weight: spec.weight,
            models: spec.models,
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            sampled_ms: AtomicU64::new(0),
            cool_until_ms: AtomicU64::new(0),
            balanced,
            attempts: std::array::from_fn(|_| std::sync::OnceLock::new()),
        }
    }

    /// Count an attempt's outcome (`rampart_upstream_attempts_total`).
    fn count(&self, class: Class) {
        let i = Class::ALL.iter().position(|c| *c == class).unwrap_or(0);
        self.attempts[i]
            .get_or_init(|| {
                metrics::counter!(
                    "rampart_upstream_attempts_total",
                    "target" => self.name.clone(),
                    "outcome" => class.as_str()
                )
            })
            .increment(1);
    }

    /// Whether this target serves `model` (every target serves requests without a model).
    #[must_use]
    pub fn serves(&self, model: Option<&str>) -> bool {
        match model {
            Some(m) if !self.models.is_empty() => {
                self.models.iter().any(|p| crate::auth::glob(p, m))
            }
            _ => true,
        }
    }

    /// Requests in flight to this target now.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Until when (clock ms) the target cools down; 0 when it does not.
    #[must_use]
    pub fn cooling_until(&self) -> u64 {
        self.cool_until_ms.load(Ordering::Relaxed)
    }

    /// The latency EWMA, when a recent sample exists.
    fn latency_us(&self, now_ms: u64) -> Option<f64> {
        let v = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        (v > 0.0 && now_ms.saturating_sub(self.sampled_ms.load(Ordering::Relaxed)) < STALE_MS)
            .then_some(v)
    }

    fn sample(&self, now_ms: u64, latency: Duration) {
        if !self.balanced {
            return;
        }
        let us = latency.as_secs_f64() * 1e6;
        let old = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let fresh = now_ms.saturating_sub(self.sampled_ms.load(Ordering::Relaxed)) < STALE_MS;
        let new = if old <= 0.0 || !fresh || us > old {
            us
        } else {
            old + 0.25 * (us - old)
        };
        self.ewma_us
            .store(new.max(1.0).to_bits(), Ordering::Relaxed);
        self.sampled_ms.store(now_ms, Ordering::Relaxed);
        self.ttfb_seconds.record(latency.as_secs_f64());
    }

    /// Cool down until `until_ms` (never shortening a longer cool-down).
    fn cool_until(&self, until_ms: u64) {
        let prev = self.cool_until_ms.fetch_max(until_ms, Ordering::AcqRel);
        if prev < until_ms {
            metrics::counter!("rampart_upstream_cooldowns_total", "target" => self.name.clone())
                .increment(1);
        }
    }
}

/// The result of [`Pool::pick`].
#[derive(Debug)]
pub enum Pick {
    /// Send to this target (a lease is held).
    Target(Lease),
    /// Every candidate is cooling down; this one cools down first, until `until_ms`.
    Cooling {
        /// The target's index.
        index: usize,
        /// When its cool-down ends (clock ms).
        until_ms: u64,
    },
    /// Every candidate's breaker is open; the first reopens for a probe at `until_ms`.
    Open {
        /// When the first open period ends (clock ms), if one does.
        until_ms: Option<u64>,
    },
    /// No target serves this model.
    NoTarget,
}

/// The targets and their shared state. See the module docs.
#[derive(Debug)]
pub struct Pool {
    targets: Vec<Arc<Target>>,
    batch_target: usize,
    clock: Clock,
    max_cooldown_ms: u64,
}

/// At most this many targets (tried targets are tracked in a bit set).
pub const MAX_TARGETS: usize = 64;

impl Pool {
    /// A pool of `specs` (at least one, at most [`MAX_TARGETS`]); batch routes go to
    /// `batch_target`.
    ///
    /// # Errors
    /// No targets, too many, or a batch target out of range.
    pub fn new(
        specs: Vec<TargetSpec>,
        batch_target: usize,
        breaker: BreakerSettings,
        max_cooldown: Duration,
    ) -> Result<Self, String> {
        if specs.is_empty() || specs.len() > MAX_TARGETS {
            return Err(format!(
                "the upstream pool needs 1 to {MAX_TARGETS} targets, not {}",
                specs.len()
            ));
        }
        if batch_target >= specs.len() {
            return Err("the batch target is not in the pool".to_owned());
        }
        Ok(Self {
            targets: {
                let balanced = specs.len() > 1;
                specs
                    .into_iter()
                    .map(|s| Arc::new(Target::new(s, breaker, balanced)))
                    .collect()
            },
            batch_target,
            clock: Clock::new(),
            max_cooldown_ms: u64::try_from(max_cooldown.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The pool's clock.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The targets, in configuration order.
    #[must_use]
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Whether some target's breaker lets a request through now (closed, or ready for a probe):
    /// `/readyz` fails while none does.
    #[must_use]
    pub fn available(&self) -> bool {
        let now = self.clock.now_ms();
        self.targets
            .iter()
            .any(|t| matches!(t.breaker.admit(now), Admit::Closed | Admit::Probe))
    }

    /// Whether some target serves `model`.
    #[must_use]
    pub fn serves(&self, model: Option<&str>) -> bool {
        self.targets.iter().any(|t| t.serves(model))
    }

    /// Pick a target for `model` (see the module docs). `tried` is a bit set of target indexes
    /// already tried by this request: they are avoided while another candidate is ready.
    /// `batches` pins the pick to the batch target.
    pub fn pick(&self, model: Option<&str>, batches: bool, tried: u64) -> Pick {
        let now = self.clock.now_ms();
        if batches {
            return self.pick_among(now, &[self.batch_target], tried);
        }
        if self.targets.len() == 1 {
            return if self.targets[0].serves(model) {
                self.pick_among(now, &[0], tried)
            } else {
                Pick::NoTarget
            };
        }
        let candidates: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].serves(model))
            .collect();
        if candidates.is_empty() {
            return Pick::NoTarget;
        }
        self.pick_among(now, &candidates, tried)
    }

    fn pick_among(&self, now: u64, candidates: &[usize], tried: u64) -> Pick {
        if let [i] = *candidates {
            return self.pick_one(now, i);
        }
        let mut open_until: Option<u64> = None;
        let mut cooling: Option<(usize, u64)> = None;
        // Ready targets: (index, wants a probe). Tried ones are kept apart, used only when no
        // untried one is ready.
        let mut ready: Vec<(usize, bool)> = Vec::with_capacity(candidates.len());
        let mut ready_tried: Vec<(usize, bool)> = Vec::new();
        for &i in candidates {
            let t = &self.targets[i];
            let probe = match t.breaker.admit(now) {
                Admit::Closed => false,
                Admit::Probe => true,
                Admit::Busy => continue,
                Admit::Open { until_ms } => {
                    open_until = Some(open_until.map_or(until_ms, |u| u.min(until_ms)));
                    continue;
                }
            };
            let cool = t.cooling_until();
            if cool > now {
                if cooling.is_none_or(|(_, u)| cool < u) {
                    cooling = Some((i, cool));
                }
                continue;
            }
            if tried & (1 << i) == 0 {
                ready.push((i, probe));
            } else {
                ready_tried.push((i, probe));
            }
        }
        if ready.is_empty() {
            ready = ready_tried;
        }
        while !ready.is_empty() {
            // A probe first, so a half-open breaker is tested; else power of two choices.
            let k = ready
                .iter()
                .position(|&(_, probe)| probe)
                .unwrap_or_else(|| self.p2c(now, &ready));
            let (i, probe) = ready.swap_remove(k);
            if probe && !self.targets[i].breaker.try_probe(now) {
                continue;
            }
            return Pick::Target(Lease::new(self.targets[i].clone(), i, probe));
        }
        match cooling {
            Some((index, until_ms)) => Pick::Cooling { index, until_ms },
            None => Pick::Open {
                until_ms: open_until,
            },
        }
    }

    /// [`Pool::pick_among`] for a single candidate, without allocating.
    fn pick_one(&self, now: u64, i: usize) -> Pick {
        let t = &self.targets[i];
        let probe = match t.breaker.admit(now) {
            Admit::Closed => false,
            Admit::Probe => true,
            Admit::Busy => return Pick::Open { until_ms: None },
            Admit::Open { until_ms } => {
                return Pick::Open {
                    until_ms: Some(until_ms),
                };
            }
        };
        let cool = t.cooling_until();
        if cool > now {
            return Pick::Cooling {
                index: i,
                until_ms: cool,
            };
        }
        if probe && !t.breaker.try_probe(now) {
            return Pick::Open { until_ms: None };
        }
        Pick::Target(Lease::new(t.clone(), i, probe))
    }

    /// Power of two choices over `ready` (non-empty): the position of the winner.
    fn p2c(&self, now: u64, ready: &[(usize, bool)]) -> usize {
        if ready.len() == 1 {
            return 0;
        }
        let a = rand::random_range(0..ready.len());
        let mut b = rand::random_range(0..ready.len() - 1);
        if b >= a {
            b += 1;
        }
        let (ta, tb) = (&self.targets[ready[a].0], &self.targets[ready[b].0]);
        let (la, lb) = (ta.latency_us(now), tb.latency_us(now));
        // A target without a recent sample is costed like its rival.
        let (la, lb) = match (la, lb) {
            (Some(x), Some(y)) => (x, y),
            (Some(x), None) => (x, x),
            (None, Some(y)) => (y, y),
            (None, None) => (1.0, 1.0),
        };
        let cost = |t: &Target, l: f64| l * f64::from(t.in_flight() + 1) / t.weight;
        if cost(tb, lb) < cost(ta, la) { b } else { a }
    }

    /// Lease a target for one attempt regardless of its state (a cooling target that goes
    /// anyway).
    #[must_use]
    pub fn lease(&self, index: usize) -> Option<Lease> {
        let t = self.targets.get(index)?;
        Some(Lease::new(t.clone(), index, false))
    }

    /// Report an attempt's outcome: breaker, latency (time to headers of an answer that ends the
    /// request — a quick failure says nothing about how fast the target serves, and the breaker
    /// judges failures) and cool-down (from `retry-after` on a rate limit, or
    /// `anthropic-ratelimit-*` headers on any answer).
    pub fn report(
        &self,
        lease: &mut Lease,
        outcome: &Outcome,
        latency: Option<Duration>,
        headers: Option<&HeaderMap>,
    ) {
        let now = self.clock.now_ms();
        let t = &lease.target;
        if let Some(l) = latency
            && !outcome.class.retryable()
        {
            t.sample(now, l);
        }
        t.breaker
            .record(now, outcome.class.breaker_failure(), lease.probe);
        lease.probe = false;
        t.count(outcome.class);
        let mut cool_ms: Option<u64> = None;
        if outcome.class.cools_target() {
            // A 429 without a usable wait still cools down briefly.
            let wait = outcome.retry_after.unwrap_or(Duration::from_secs(1));
            cool_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        }
        if let Some(h) = headers
            && let Some(reset) = exhausted_until(h)
        {
            let ms = u64::try_from(reset.as_millis()).unwrap_or(u64::MAX);
            cool_ms = Some(cool_ms.map_or(ms, |c| c.max(ms)));
        }
        if let Some(ms) = cool_ms {
            let ms = ms.min(self.max_cooldown_ms);
            t.cool_until(now.saturating_add(ms));
            tracing::info!(
                target: "rampart::pool",
                upstream = %t.name,
                cooldown_ms = ms,
                "upstream target cooling down (rate limited)"
            );
        }
    }
}

/// When an `anthropic-ratelimit-*-remaining: 0` header says a limit is exhausted: the time until
/// its `-reset` (RFC 3339), or a second when the reset is missing or unreadable. One pass over
/// the headers, looking at a name only when its value is `0`.
#[must_use]
pub fn exhausted_until(headers: &HeaderMap) -> Option<Duration> {
    let mut longest: Option<Duration> = None;
    for (name, value) in headers {
        if value.as_bytes() != b"0" {
            continue;
        }
        let Some(family) = name
            .as_str()
            .strip_prefix("anthropic-ratelimit-")
            .and_then(|rest| rest.strip_suffix("-remaining"))
        else {
            continue;
        };
        let wait = headers
            .get(format!("anthropic-ratelimit-{family}-reset"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                time::OffsetDateTime::parse(
                    v.trim(),
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
            .map_or(Duration::from_secs(1), |at| {
                let secs = (at - time::OffsetDateTime::now_utc()).as_seconds_f64();
                Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::ZERO)
            });
        longest = Some(longest.map_or(wait, |l| l.max(wait)));
    }
    longest
}

/// One attempt's hold on a target: counted in flight until dropped; carries the probe slot when
/// the attempt is its breaker's probe (released if dropped without a result).
#[derive(Debug)]
pub struct Lease {
    target: Arc<Target>,
    index: usize,
    probe: bool,
}

impl Lease {
    fn new(target: Arc<Target>, index: usize, probe: bool) -> Self {
        if target.balanced {
            target.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            target,
            index,
            probe,
        }
    }

    /// The target.
    #[must_use]
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The target's index in the pool.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this attempt is its breaker's probe.
    #[must_use]
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// A failure after the answer was delivered (mid-stream), at clock time `now_ms`: counted
    /// against the target's breaker.
    pub fn late_failure(&self, now_ms: u64, class: Class) {
        self.target.breaker.record(now_ms, true, false);
        self.target.count(class);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.target.balanced {
            self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if self.probe {
            self.target.breaker.release_probe();
        }
    }
}

/// A boxed body or transport error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends a request upstream. The real one is [`HyperTransport`]; tests script their own.
pub trait Transport: Send + Sync + 'static {
    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;

    /// Send `req`, connecting within `connect_timeout`.
    fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        connect_timeout: Duration,
    ) -> impl Future<Output = Result<http::Response<Self::Body>, TransportFailure>> + Send;
}

/// The real transport: [`crate::upstream::send`], each thread keeping its own connections, so a
/// request and its upstream connection live on the same thread.
#[derive(Debug)]
pub struct HyperTransport {
    /// Tells gateways in one process apart (each thread keeps connections per gateway).
    id: u64,
    tls: rustls::ClientConfig,
}

impl HyperTransport {
    /// A transport with the shared TLS settings.
    ///
    /// # Errors
    /// When TLS cannot be set up.
    pub fn new() -> Result<Self, String> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tls: crate::upstream::tls_config()?,
        })
    }
}

impl Transport for HyperTransport {
    type Body = crate::upstream::ResponseBody;

    fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        connect_timeout: Duration,
    ) -> impl Future<Output = Result<http::Response<Self::Body>, TransportFailure>> + Send {
        let id = crate::upstream::ClientId {
            owner: self.id,
            connect_timeout,
        };
        // Boxed, as hyper-util's client did: inline, the send's state would grow every
        // request's future, which is moved (copied) several times on its way to the runtime.
        Box::pin(crate::upstream::send(id, &self.tls, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Observed, classify};

    fn target(name: &str, models: &[&str]) -> TargetSpec {
        TargetSpec {
            name: name.to_owned(),
            base: UpstreamTarget {
                scheme: http::uri::Scheme::HTTP,
                authority: http::uri::Authority::from_static("127.0.0.1:9"),
                path_prefix: String::new(),
            },
            key: Arc::new(UpstreamKey::empty()),
            weight: 1.0,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    fn pool(specs: Vec<TargetSpec>, consecutive: u32) -> Pool {
        Pool::new(
            specs,
            0,
            BreakerSettings {
                consecutive_failures: consecutive,
                open_for: Duration::from_secs(5),
                ..BreakerSettings::default()
            },
            Duration::from_secs(60),
        )
        .unwrap()
    }

    fn picked(p: Pick) -> Lease {
        match p {
            Pick::Target(l) => l,
            other => panic!("expected a target, got {other:?}"),
        }
    }

    fn outcome(class: Class) -> Outcome {
        Outcome {
            class,
            retry_after: None,
        }
    }

    #[test]
    fn targets_serve_only_their_models() {
        let p = pool(vec![target("a", &["claude-opus-*"]), target("b", &[])], 5);
        for _ in 0..20 {
            assert_eq!(
                picked(p.pick(Some("claude-sonnet-4-6"), false, 0)).index(),
                1
            );
        }
        let only_a = pool(vec![target("a", &["claude-opus-*"])], 5);
        assert!(matches!(
            only_a.pick(Some("claude-haiku-4-5"), false, 0),
            Pick::NoTarget
        ));
        assert!(only_a.serves(None));
    }

    #[test]
    fn power_of_two_choices_prefers_the_less_loaded_target() {
        let p = pool(vec![target("a", &[]), target("b", &[])], 5);
        let held: Vec<Lease> = (0..3).map(|_| p.lease(0).unwrap()).collect();
        for _ in 0..20 {
            assert_eq!(picked(p.pick(None, false, 0)).index(), 1);
        }
        drop(held);
        assert_eq!(p.targets()[0].in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn power_of_two_choices_prefers_the_faster_target_until_its_sample_is_stale() {
        let p = pool(vec![target("a", &[]), target("b", &[])], 5);
        let mut a = p.lease(0).unwrap();
        let mut b = p.lease(1).unwrap();
        let ok = outcome(Class::Success);
        p.report(&mut a, &ok, Some(Duration::from_millis(900)), None);
        p.report(&mut b, &ok, Some(Duration::from_millis(100)), None);
        drop((a, b));
        for _ in 0..20 {
            assert_eq!(picked(p.pick(None, false, 0)).index(), 1);
        }
        // Ten seconds without a sample of `a`: it is costed like `b` and gets traffic again.
        tokio::time::advance(Duration::from_secs(11)).await;
        let mut b = p.lease(1).unwrap();
        p.report(&mut b, &ok, Some(Duration::from_millis(100)), None);
        drop(b);
        let to_a = (0..200)
            .filter(|_| picked(p.pick(None, false, 0)).index() == 0)
            .count();
        assert!(to_a > 50, "{to_a}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_sheds_to_the_healthy_target_then_probes_and_closes() {
        let p = pool(vec![target("a", &[]), target("b", &[])], 2);
        let fail = outcome(Class::ServerError);
        for _ in 0..2 {
            let mut a = p.lease(0).unwrap();
            p.report(&mut a, &fail, None, None);
        }
        assert_eq!(p.targets()[0].breaker.state(), crate::breaker::State::Open);
        for _ in 0..20 {
            assert_eq!(picked(p.pick(None, false, 0)).index(), 1, "shed to b");
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        // The first pick after the open period is the probe, to `a`; a second one goes to `b`.
        let mut probe = picked(p.pick(None, false, 0));
        assert_eq!((probe.index(), probe.is_probe()), (0, true));
        assert_eq!(picked(p.pick(None, false, 0)).index(), 1);
        p.report(&mut probe, &outcome(Class::Success), None, None);
        assert_eq!(
            p.targets()[0].breaker.state(),
            crate::breaker::State::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_breaker_open_says_when_the_first_reopens() {
        let p = pool(vec![target("a", &[])], 1);
        let mut a = p.lease(0).unwrap();
        p.report(&mut a, &outcome(Class::Reset), None, None);
        drop(a);
        assert!(matches!(
            p.pick(None, false, 0),
            Pick::Open {
                until_ms: Some(5_000)
            }
        ));
        assert!(!p.available());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(p.available(), "ready for a probe");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_target_cools_down_and_is_skipped_while_another_can_serve() {
        let p = pool(vec![target("a", &[]), target("b", &[])], 5);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("3"));
        let limited = classify(Observed::Response(
            http::StatusCode::TOO_MANY_REQUESTS,
            &headers,
        ));
        let mut a = p.lease(0).unwrap();
        p.report(
            &mut a,
            &limited,
            Some(Duration::from_millis(1)),
            Some(&headers),
        );
        drop(a);
        assert_eq!(
            p.targets()[0].breaker.state(),
            crate::breaker::State::Closed
        );
        for _ in 0..20 {
            assert_eq!(picked(p.pick(None, false, 0)).index(), 1);
        }
        // Only `a` serves opus: it is offered as cooling, with its end.
        let only = pool(vec![target("a", &[])], 5);
        let mut a = only.lease(0).unwrap();
        only.report(&mut a, &limited, None, Some(&headers));
        drop(a);
        assert!(matches!(
            only.pick(None, false, 0),
            Pick::Cooling {
                index: 0,
                until_ms: 3_000
            }
        ));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(picked(only.pick(None, false, 0)).index(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_rate_limit_header_cools_down_until_its_reset() {
        let p = pool(vec![target("a", &[])], 5);
        let reset = time::OffsetDateTime::now_utc() + time::Duration::seconds(20);
        let mut headers = HeaderMap::new();
        headers.insert(
            "anthropic-ratelimit-tokens-remaining",
            http::HeaderValue::from_static("0"),
        );
        headers.insert(
            "anthropic-ratelimit-tokens-reset",
            http::HeaderValue::from_str(
                &reset
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
            )
            .unwrap(),
        );
        headers.insert(
            "anthropic-ratelimit-requests-remaining",
            http::HeaderValue::from_static("10"),
        );
        let mut a = p.lease(0).unwrap();
        p.report(&mut a, &outcome(Class::Success), None, Some(&headers));
        drop(a);
        match p.pick(None, false, 0) {
            Pick::Cooling { until_ms, .. } => {
                assert!((18_000..=20_000).contains(&until_ms), "{until_ms}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tried_targets_are_avoided_while_another_is_ready_and_batches_are_pinned() {
        let p = pool(vec![target("a", &[]), target("b", &[])], 5);
        for _ in 0..20 {
            assert_eq!(picked(p.pick(None, false, 0b01)).index(), 1);
            assert_eq!(picked(p.pick(None, false, 0b10)).index(), 0);
            assert_eq!(picked(p.pick(None, true, 0b01)).index(), 0, "batches");
        }
        // Both tried: one of them again.
        let _ = picked(p.pick(None, false, 0b11));
    }

    #[test]
    fn a_dropped_probe_lease_frees_the_probe_slot() {
        let p = pool(vec![target("a", &[])], 1);
        let mut a = p.lease(0).unwrap();
        p.report(&mut a, &outcome(Class::Reset), None, None);
        drop(a);
        let t = &p.targets()[0];
        assert!(t.breaker.try_probe(u64::MAX));
        let lease = Lease::new(p.targets()[0].clone(), 0, true);
        drop(lease);
        assert_eq!(t.breaker.admit(u64::MAX), Admit::Probe);
    }
}
