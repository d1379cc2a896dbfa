//! The data plane's work on the store, started together and stopped together. Each piece is a
//! `run(…, shutdown)` task:
//!
//! | task | every | does |
//! |---|---|---|
//! | key reload | 0.1 s | [`KeyDirectory::run_refresher`]: new, revoked, disabled keys and limits (when the directory version moved) |
//! | upstream reload | 1 s | [`StoredUpstream::run_refresher`]: the stored upstream credential (when used), and each one an upstream target names |
//! | last-use flush | 15 s, and at stop | [`KeyDirectory::run_last_used_flusher`]: `last_used_at` in one batch |
//! | denial audit | as rows come, and at stop | [`crate::denials::DenialWriter::run`]: `key.denied` rows |
//! | usage ledger | 200 ms, and at stop | [`rampart_ledger::LedgerWriter::run`]: the spool into the database (with [`StorePlane::run_ledger`]) |
//!
//! [`StorePlane::stop`] signals every task and waits for them, so the last uses and the queued
//! audit rows are written before the process exits.
//!
//! A task that ends before that (a panic, a bug) is logged at once, counted in
//! `rampart_background_task_failures_total{task}`, and makes `/readyz` fail from then on
//! ([`TaskHealth`]): requests are still served and spooled, but a usage ledger whose writer is
//! gone drains nothing, and nothing else would say so.

use std::sync::Arc;
use std::time::Duration;

use rampart_store::{Store, StoreError};
use tokio::sync::watch;

use crate::denials::{DenialLimits, denial_audit};
use crate::keydir::{KeyDirectory, LAST_USED_FLUSH_EVERY};
use crate::proxy::ProxyParts;
use crate::upstream_key::{Refreshed, StoredUpstream, StoredUpstreamError};

/// Intervals and limits of the store-backed tasks.
#[derive(Debug, Clone, Copy)]
pub struct StorePlaneOptions {
    /// Upstream-credential reload. Default 1 s (the bound on how long another instance's
    /// change takes to apply here).
    pub reload_every: Duration,
    /// How often the key directory checks the store's directory version (a one-row read) and
    /// reloads when it moved. Default 100 ms: the bound on how long a key, team or limit change
    /// made by another process (`rampart keys create`, another instance) takes to apply here.
    pub key_poll_every: Duration,
    /// `last_used_at` flush. Default 15 s.
    pub last_used_flush_every: Duration,
    /// Denial audit budget.
    pub denial_limits: DenialLimits,
}

impl Default for StorePlaneOptions {
    fn default() -> Self {
        Self {
            reload_every: Duration::from_secs(1),
            key_poll_every: Duration::from_millis(100),
            last_used_flush_every: LAST_USED_FLUSH_EVERY,
            denial_limits: DenialLimits::default(),
        }
    }
}

/// A tick every `period` until a shutdown signal: `while ticks.next().await { … }`.
pub(crate) struct Ticks<S> {
    interval: tokio::time::Interval,
    shutdown: std::pin::Pin<Box<S>>,
}

impl<S: std::future::Future<Output = ()>> Ticks<S> {
    /// The first tick at once when `at_once`, else after one `period`; late ticks are delayed,
    /// never bunched.
    pub(crate) fn new(period: Duration, at_once: bool, shutdown: S) -> Self {
        let start = tokio::time::Instant::now() + if at_once { Duration::ZERO } else { period };
        let mut interval = tokio::time::interval_at(start, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            interval,
            shutdown: Box::pin(shutdown),
        }
    }

    /// `true` at the next tick, `false` once the shutdown signal came.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => true,
            () = &mut self.shutdown => false,
        }
    }
}

/// Why the store-backed data plane cannot start. The message carries its cause (not also as
/// its `source`, which an error chain would print a second time).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The keys could not be loaded.
    #[error("cannot load API keys from the store: {0}")]
    Keys(StoreError),
    /// The stored upstream credential cannot be used.
    #[error("no upstream API key: {0}")]
    Upstream(StoredUpstreamError),
}

/// Whether every store task still runs (see the module docs): the first that stopped before
/// shutdown, by name.
#[derive(Debug, Default)]
pub struct TaskHealth {
    stopped: std::sync::OnceLock<&'static str>,
}

impl TaskHealth {
    /// The first task that stopped before shutdown, if any did.
    #[must_use]
    pub fn stopped(&self) -> Option<&'static str> {
        self.stopped.get().copied()
    }
}

/// Run `task` as store task `name`: a task that ends before `stop` says so is logged, counted
/// and marked in `health`.
fn supervised(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
    stop: &watch::Sender<bool>,
    health: &Arc<TaskHealth>,
) -> tokio::task::JoinHandle<()> {
    let inner = tokio::spawn(task);
    let (stopping, health) = (stop.subscribe(), health.clone());
    tokio::spawn(async move {
        let outcome = inner.await;
        if *stopping.borrow() {
            if let Err(e) = outcome {
                tracing::error!(task = name, error = %e, "a store task failed");
            }
            return;
        }
        match outcome {
            Ok(()) => tracing::error!(
                task = name,
                "a store task stopped before shutdown; /readyz fails from now on: restart the instance"
            ),
            Err(e) => tracing::error!(
                task = name,
                error = %e,
                "a store task failed; /readyz fails from now on: restart the instance"
            ),
        }
        metrics::counter!("rampart_background_task_failures_total", "task" => name).increment(1);
        let _ = health.stopped.set(name);
    })
}

/// The running tasks. See the module docs.
#[derive(Debug)]
pub struct StorePlane {
    stop: watch::Sender<bool>,
    health: Arc<TaskHealth>,
    /// Each task's supervisor ([`supervised`]), which logs the task's end.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StorePlane {
    /// Load the keys into `directory` and, when given, the stored upstream credential (both must
    /// succeed), then start the tasks. Returns the plane and the parts the proxy needs (denial
    /// audit, stored upstream key).
    ///
    /// # Errors
    /// [`StartError`] naming what is missing.
    pub async fn start(
        store: Store,
        directory: Arc<KeyDirectory>,
        upstream: Option<StoredUpstream>,
        options: StorePlaneOptions,
    ) -> Result<(Self, ProxyParts), StartError> {
        Self::start_with_targets(store, directory, upstream, Vec::new(), options).await
    }

    /// [`StorePlane::start`], also loading (and reloading) the stored credentials upstream
    /// targets name (`targets`, each made with the credential's name); they are handed to the
    /// proxy as [`ProxyParts::target_keys`].
    ///
    /// # Errors
    /// [`StartError`] naming what is missing.
    pub async fn start_with_targets(
        store: Store,
        directory: Arc<KeyDirectory>,
        upstream: Option<StoredUpstream>,
        targets: Vec<StoredUpstream>,
        options: StorePlaneOptions,
    ) -> Result<(Self, ProxyParts), StartError> {
        let keys = directory.refresh(&store).await.map_err(StartError::Keys)?;
        tracing::info!(keys, engine = %store.engine(), "virtual keys loaded from the store");
        let upstream = match upstream {
            Some(up) => {
                if let Refreshed::Loaded { id, name } =
                    up.refresh(&store).await.map_err(StartError::Upstream)?
                {
                    tracing::info!(credential = %name, %id, "upstream credential loaded from the store");
                }
                Some(Arc::new(up))
            }
            None => None,
        };
        let mut target_keys = Vec::with_capacity(targets.len());
        for t in &targets {
            if let Refreshed::Loaded { id, name } =
                t.refresh(&store).await.map_err(StartError::Upstream)?
            {
                tracing::info!(credential = %name, %id, "upstream target credential loaded from the store");
            }
            target_keys.push((t.name().unwrap_or_default().to_owned(), t.key()));
        }
        let (denials, writer) = denial_audit(options.denial_limits);
        let (stop, stopped) = watch::channel(false);
        let signal = || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let health = Arc::new(TaskHealth::default());
        let mut tasks = vec![
            supervised(
                "key reload",
                directory
                    .clone()
                    .run_refresher(store.clone(), options.key_poll_every, signal()),
                &stop,
                &health,
            ),
            supervised(
                "last-use flush",
                directory.clone().run_last_used_flusher(
                    store.clone(),
                    options.last_used_flush_every,
                    signal(),
                ),
                &stop,
                &health,
            ),
        ];
        let mut parts = ProxyParts {
            denials: Some(denials),
            upstream_key: upstream.as_ref().map(|up| up.key()),
            ledger: None,
            limits: None,
            key_misses: Some(Arc::new(crate::keydir::MissRefresh::new(
                directory.clone(),
                store.clone(),
            ))),
            tasks: Some(health.clone()),
            ..ProxyParts::default()
        };
        parts.target_keys = target_keys;
        let refreshed = upstream
            .into_iter()
            .chain(targets.into_iter().map(Arc::new));
        for up in refreshed {
            let task = up.run_refresher(store.clone(), options.reload_every, signal());
            tasks.push(supervised("upstream reload", task, &stop, &health));
        }
        let task = writer.run(store, signal());
        tasks.push(supervised("denial audit", task, &stop, &health));
        Ok((
            Self {
                stop,
                health,
                tasks,
            },
            parts,
        ))
    }

    /// Also run the usage ledger's writer; [`StorePlane::stop`] then drains the spool into the
    /// database before returning (call it after the last request).
    pub fn run_ledger(&mut self, store: Store, writer: rampart_ledger::LedgerWriter) {
        // The writer's metrics need the recorder: the first metric would otherwise fix the
        // process on a no-op one.
        if let Err(e) = crate::telemetry::install() {
            tracing::warn!(error = %e, "metrics recorder unavailable; ledger metrics are not exported");
        }
        let mut stopped = self.stop.subscribe();
        let signal = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let task = supervised(
            "usage ledger",
            writer.run(store, signal),
            &self.stop,
            &self.health,
        );
        self.tasks.push(task);
    }

    /// Stop every task, after the last key uses and queued audit rows are written.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        // Each supervisor logs its own task's failure.
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until `stop` says so, as every store task does.
    fn until_stopped(stop: &watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
        let mut on_stop = stop.subscribe();
        async move {
            let _ = on_stop.wait_for(|s| *s).await;
        }
    }

    #[tokio::test]
    async fn a_task_that_ends_before_shutdown_is_marked_and_one_that_ends_at_it_is_not() {
        let (stop, _) = watch::channel(false);
        let health = Arc::new(TaskHealth::default());
        let running = supervised("runs", until_stopped(&stop), &stop, &health);
        supervised("panics", async { panic!("a bug") }, &stop, &health)
            .await
            .unwrap();
        assert_eq!(health.stopped(), Some("panics"));
        supervised("returns", async {}, &stop, &health)
            .await
            .unwrap();
        assert_eq!(
            health.stopped(),
            Some("panics"),
            "the first one stays named"
        );
        // Tasks that end because shutdown began are not failures.
        let (stop_b, _) = watch::channel(false);
        let fresh = Arc::new(TaskHealth::default());
        let task = supervised("runs", until_stopped(&stop_b), &stop_b, &fresh);
        stop_b.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(fresh.stopped(), None);
        stop.send(true).unwrap();
        running.await.unwrap();
    }
}
