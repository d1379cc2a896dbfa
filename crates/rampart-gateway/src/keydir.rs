//! Virtual API keys from the store, served from memory: the whole key table is loaded into a map
//! keyed by the keys' peppered digests and reloaded every second, so the proxy never waits on the
//! database and a disabled, revoked or expired key (or one of a disabled team) stops working on
//! every instance within about a second. (A full reload suits thousands of keys; beyond that it
//! becomes an incremental refresh.)
//!
//! - **Invalidation.** [`KeyDirectory::refresh`] may be called at any time, concurrently with the
//!   background reload (the admin plane calls it right after a write, so the change applies at
//!   once on the serving instance). Reloads run one at a time, so a reload that read the database
//!   before a write can never replace the directory after one that read it later.
//! - **Refusal reasons.** Revoked, disabled and team-disabled keys are kept by digest beside the
//!   usable ones, so a refusal can be audited with its reason ([`Denial`]); clients always see the
//!   same 401.
//! - **A key created elsewhere works at its first use.** A credential the directory does not know
//!   makes the proxy ask [`MissRefresh`] to read the store's directory version (one row) and
//!   reload when it moved, then check again: a key made a moment ago by the CLI or on another
//!   instance is not refused until the next poll. One such read at a time and none within
//!   [`MISS_GAP`] of the last, so unknown credentials cost the store at most one small read per
//!   gap however many arrive; each miss waits for the first read that begins after it (its own,
//!   or one that serves every miss waiting with it).
//! - **Budgets count their whole period.** A reload that brings a budget the directory in force
//!   does not have (a new one, another period, a key moved to another team) hands it to the
//!   [`BudgetSeeder`] first, which starts it from what the usage ledger says was spent; only then
//!   does the reload apply.
//! - **`last_used_at` without a write per request.** Each usable key has an in-memory clock (unix
//!   seconds) that a successful authentication moves forward, at most one write per key per
//!   second; the clocks survive reloads. [`KeyDirectory::run_last_used_flusher`] writes the
//!   clocks that moved, in one batch, every few seconds and once more at shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rampart_crypto::apikey::{self, KeyHasher};
use rampart_limits::{Budget, Period, Policy, Rates, Scope, ScopeKind, ScopeLimits};
use rampart_store::{
    AllCachePolicies, AllLimits, ApiKey, BudgetPeriod, CachePolicy, LimitSettings, Store, Team,
    TeamLimitSettings,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{Authenticator, CredentialCache, Denial, Endpoint, Identity, Scopes, Spread};
use crate::response_cache::{PolicyLevel, StoredPolicies};
use crate::store_plane::Ticks;

/// A full reload happens at least this often, even when the directory version did not move.
pub const FULL_RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Default interval of [`KeyDirectory::run_last_used_flusher`].
pub const LAST_USED_FLUSH_EVERY: Duration = Duration::from_secs(15);
/// The least time between two store reads for unknown credentials ([`MissRefresh`]).
pub const MISS_GAP: Duration = Duration::from_millis(10);

/// Reloads the directory when a credential is unknown and the store moved since the last
/// reload (see the module docs).
#[derive(Debug)]
pub struct MissRefresh {
    directory: Arc<KeyDirectory>,
    store: Store,
    /// When the last read for an unknown credential began; held while one runs.
    last: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl MissRefresh {
    /// Refresh `directory` from `store` on misses.
    #[must_use]
    pub fn new(directory: Arc<KeyDirectory>, store: Store) -> Self {
        Self {
            directory,
            store,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Bring the directory up to what the store had when this miss came: reload it if the
    /// store's directory version moved, by a read that began after the miss, its own or another
    /// miss's (the first requests of a new key often come together: one read serves them all).
    /// Reads begin at least [`MISS_GAP`] apart, so a stream of unknown credentials costs the
    /// store at most one small read per gap; a miss waits for the next one, at most a gap and a
    /// read. Check the credential again afterwards. A store error is logged by the background
    /// reload.
    pub async fn refresh(&self) {
        let arrived = tokio::time::Instant::now();
        let mut last = self.last.lock().await;
        if let Some(began) = *last {
            if began >= arrived {
                return;
            }
            tokio::time::sleep_until(began + MISS_GAP).await;
        }
        let began = tokio::time::Instant::now();
        let _ = self.directory.refresh_if_changed(&self.store).await;
        *last = Some(began);
    }
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    expires_at: Option<OffsetDateTime>,
    used: Arc<KeyUse>,
}

/// What one reload found: usable keys, and refused ones with the reason.
#[derive(Debug, Default)]
struct Snapshot {
    usable: HashMap<[u8; 32], Entry, Spread>,
    refused: HashMap<[u8; 32], Denial, Spread>,
    /// The limits of the usable keys that have any, by key id.
    policies: HashMap<Uuid, Arc<Policy>>,
    /// Each rotated key's first key (see [`Lineage`]).
    lineage: Arc<Lineage>,
}

/// Each key made by rotating another (`rotated_from`), mapped to the first key of its line: the
/// key whose id names the limits and budget the whole line shares. A rotation hands the same
/// allowance to the new key, never a fresh one: the old and new keys draw on one set of limits
/// while both work, and the new key's budget counts what the old one spent in the period.
pub type Lineage = HashMap<Uuid, Uuid>;

/// The most rotations followed back to a line's first key (a guard, never reached in practice).
const MAX_ROTATIONS: usize = 10_000;

/// [`Lineage`] of `keys` (all of them, revoked and expired included: a line's first key is
/// usually long revoked).
fn lineage_of(keys: &[ApiKey]) -> Lineage {
    let parent: HashMap<Uuid, Uuid> = keys
        .iter()
        .filter_map(|k| k.rotated_from.map(|from| (k.id, from)))
        .collect();
    parent
        .keys()
        .map(|&id| {
            let mut root = id;
            for _ in 0..MAX_ROTATIONS {
                match parent.get(&root) {
                    Some(&from) if from != id => root = from,
                    _ => break,
                }
            }
            (id, root)
        })
        .collect()
}

/// When a key was last used (unix seconds), and how much of that the store already has.
#[derive(Debug, Default)]
struct KeyUse {
    last: AtomicI64,
    flushed: AtomicI64,
}

impl KeyUse {
    fn record(&self, now: i64) {
        // Read first: requests with one key write the shared cache line once a second, not each.
        if self.last.load(Ordering::Relaxed) < now {
            self.last.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn unflushed(&self) -> Option<i64> {
        let last = self.last.load(Ordering::Relaxed);
        (last > self.flushed.load(Ordering::Relaxed)).then_some(last)
    }
}

/// Starts the budgets a reload brings (see [`KeyDirectory::set_budget_seeder`]) from what was
/// already spent in their period.
pub trait BudgetSeeder: Send + Sync + std::fmt::Debug {
    /// Count what each of `budgets` (`(policy group, scope, budget)`) already spent in its
    /// current period, a key's with the keys of its line (`lineage`); failures are the
    /// seeder's to report (the reload goes ahead).
    fn seed<'a>(
        &'a self,
        budgets: &'a [(Uuid, Scope, Budget)],
        lineage: &'a Lineage,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// The in-memory directory of store keys.
#[derive(Debug)]
pub struct KeyDirectory {
    hasher: KeyHasher,
    /// Verified credential -> digest, in front of the HMAC (see [`CredentialCache`]).
    digests: CredentialCache<[u8; 32]>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Use clocks by key id; they outlive reloads so no use is lost to one.
    uses: Mutex<HashMap<Uuid, Arc<KeyUse>>>,
    /// Held for a whole reload: reloads run one at a time, in order.
    reloading: tokio::sync::Mutex<()>,
    /// The store's directory version the installed snapshot was read at (see
    /// [`KeyDirectory::refresh_if_changed`]).
    version: AtomicI64,
    /// Seeds the budgets a reload brings, before it takes effect.
    seeder: std::sync::OnceLock<Arc<dyn BudgetSeeder>>,
}

impl KeyDirectory {
    /// An empty directory that digests presented keys with `hasher`.
    #[must_use]
    pub fn new(hasher: KeyHasher) -> Self {
        Self {
            hasher,
            digests: CredentialCache::default(),
            snapshot: RwLock::new(Arc::default()),
            uses: Mutex::default(),
            reloading: tokio::sync::Mutex::new(()),
            version: AtomicI64::new(i64::MIN),
            seeder: std::sync::OnceLock::new(),
        }
    }

    /// From now on, every reload hands the budgets it brings — absent from the directory in
    /// force: a new budget, one with another period, or one whose key moved to another team —
    /// to `seeder` before it takes effect, so a budget set on a running instance counts what
    /// its period already spent (as it does after a restart). Set once; later calls do nothing.
    pub fn set_budget_seeder(&self, seeder: Arc<dyn BudgetSeeder>) {
        let _ = self.seeder.set(seeder);
    }

    /// Reload every key from the store; returns how many are usable. Safe to call concurrently
    /// with the background reload and with other callers: reloads are serialised, and the one
    /// that returns last read the database last.
    ///
    /// # Errors
    /// A store failure (the previous directory stays in force).
    pub async fn refresh(&self, store: &Store) -> rampart_store::Result<usize> {
        let _one_at_a_time = self.reloading.lock().await;
        // Read first: a write after this read moves the version again, so it is never missed.
        let version = store.limits().directory_version().await?;
        let teams = store.list_teams().await?;
        let keys = store
            .list_api_keys(rampart_store::ApiKeyFilter::default())
            .await?;
        let limits = store.limits().all_limits().await?;
        let caching = store.cache_policies().all_cache_policies().await?;
        let next = self.build(&teams, keys, &limits, &caching);
        if let Some(seeder) = self.seeder.get() {
            let known: HashSet<(Uuid, Scope, Period)> = budgets_of(&self.current())
                .into_iter()
                .map(|(group, scope, b)| (group, scope, b.period))
                .collect();
            let brought: Vec<_> = budgets_of(&next)
                .into_iter()
                .filter(|(group, scope, b)| !known.contains(&(*group, *scope, b.period)))
                .collect();
            if !brought.is_empty() {
                seeder.seed(&brought, &next.lineage).await;
            }
        }
        let n = self.publish(next);
        self.version.store(version, Ordering::Relaxed);
        Ok(n)
    }

    /// Put `next` in force; how many keys it has usable.
    fn publish(&self, next: Snapshot) -> usize {
        let n = next.usable.len();
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        n
    }

    /// Build and publish at once (the tests' reload, without a store).
    #[cfg(test)]
    fn install(
        &self,
        teams: &[Team],
        keys: Vec<ApiKey>,
        limits: &AllLimits,
        caching: &AllCachePolicies,
    ) -> usize {
        self.publish(self.build(teams, keys, limits, caching))
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reload only when the store's directory version moved since the last reload (one cheap
    /// read otherwise); returns whether it reloaded.
    ///
    /// # Errors
    /// A store failure (the previous directory stays in force).
    pub async fn refresh_if_changed(&self, store: &Store) -> rampart_store::Result<bool> {
        let version = store.limits().directory_version().await?;
        if version == self.version.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.refresh(store).await.map(|_| true)
    }

    /// The directory of `keys` and their `limits` (installed by the caller).
    fn build(
        &self,
        teams: &[Team],
        keys: Vec<ApiKey>,
        limits: &AllLimits,
        caching: &AllCachePolicies,
    ) -> Snapshot {
        let own: HashMap<Uuid, LimitSettings> = limits.keys.iter().copied().collect();
        let key_caching: HashMap<Uuid, CachePolicy> = caching.keys.iter().copied().collect();
        let team_caching: HashMap<Uuid, CachePolicy> = caching.teams.iter().copied().collect();
        let by_team: HashMap<Uuid, TeamLimitSettings> = limits.teams.iter().copied().collect();
        let disabled_teams: HashSet<Uuid> =
            teams.iter().filter(|t| t.disabled).map(|t| t.id).collect();
        let lineage = lineage_of(&keys);
        let mut next = Snapshot {
            usable: HashMap::with_capacity_and_hasher(keys.len(), Spread),
            refused: HashMap::default(),
            policies: HashMap::new(),
            lineage: Arc::new(HashMap::new()),
        };
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live = HashSet::with_capacity(keys.len());
        for k in keys {
            let Ok(digest) = <[u8; 32]>::try_from(k.key_hash.as_slice()) else {
                continue;
            };
            let refusal = if k.revoked_at.is_some() {
                Some(Denial::Revoked)
            } else if !k.enabled {
                Some(Denial::Disabled)
            } else if disabled_teams.contains(&k.team_id) {
                Some(Denial::TeamDisabled)
            } else {
                None
            };
            if let Some(denial) = refusal {
                next.refused.insert(digest, denial);
                continue;
            }
            live.insert(k.id);
            let used = uses.entry(k.id).or_default().clone();
            let line = lineage.get(&k.id).copied().unwrap_or(k.id);
            let policy = policy(&k, line, own.get(&k.id), by_team.get(&k.team_id));
            if let Some(p) = &policy {
                next.policies.insert(k.id, p.clone());
            }
            let cache = stored_caching(key_caching.get(&k.id), team_caching.get(&k.team_id));
            next.usable.insert(digest, entry(k, used, policy, cache));
        }
        next.lineage = Arc::new(lineage);
        // A clock whose key is gone is kept until the store has its last use.
        uses.retain(|id, u| live.contains(id) || u.unflushed().is_some());
        next
    }

    /// Check the store's directory version every `every` and reload when it moved (and every
    /// [`FULL_RELOAD_EVERY`] regardless), until `shutdown` resolves; failures are logged and
    /// retried. A change made by any process applies here within about `every`.
    pub async fn run_refresher(
        self: Arc<Self>,
        store: Store,
        every: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut ticks = Ticks::new(every, true, shutdown);
        let mut failing = false;
        let full_every = u32::try_from(FULL_RELOAD_EVERY.as_millis() / every.as_millis().max(1))
            .unwrap_or(u32::MAX)
            .max(1);
        let mut tick: u32 = 0;
        while ticks.next().await {
            tick = tick.wrapping_add(1);
            let reloaded = if tick.is_multiple_of(full_every) {
                self.refresh(&store).await.map(|_| true)
            } else {
                self.refresh_if_changed(&store).await
            };
            match reloaded {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("key directory refresh recovered");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "key directory refresh failed; serving the last loaded keys");
                }
                Err(_) => {}
            }
        }
    }

    /// Reload every `every` until the task is aborted; failures are logged and retried.
    pub fn spawn_refresher(
        self: Arc<Self>,
        store: Store,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run_refresher(store, every, std::future::pending()))
    }

    /// Write the key uses recorded since the last flush to the store, in one batch; returns how
    /// many keys were written.
    ///
    /// # Errors
    /// A store failure (the uses stay pending and go with the next flush).
    pub async fn flush_last_used(&self, store: &Store) -> rampart_store::Result<usize> {
        let pending: Vec<(Uuid, i64, Arc<KeyUse>)> = self
            .uses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(id, u)| u.unflushed().map(|last| (*id, last, u.clone())))
            .collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let batch: Vec<(Uuid, OffsetDateTime)> = pending
            .iter()
            .filter_map(|(id, secs, _)| {
                OffsetDateTime::from_unix_timestamp(*secs)
                    .ok()
                    .map(|t| (*id, t))
            })
            .collect();
        store.touch_api_keys_last_used(&batch).await?;
        for (_, secs, u) in &pending {
            u.flushed.fetch_max(*secs, Ordering::Relaxed);
        }
        Ok(pending.len())
    }

    /// Flush recorded key uses every `every` (see [`LAST_USED_FLUSH_EVERY`]) and once more when
    /// `shutdown` resolves, then return. Failures are logged; the uses are retried next time.
    pub async fn run_last_used_flusher(
        self: Arc<Self>,
        store: Store,
        every: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut ticks = Ticks::new(every, false, shutdown);
        while ticks.next().await {
            self.flush_logged(&store).await;
        }
        self.flush_logged(&store).await;
    }

    async fn flush_logged(&self, store: &Store) {
        if let Err(e) = self.flush_last_used(store).await {
            tracing::warn!(error = %e, "cannot record API key use (last_used_at); will retry");
        }
    }

    /// The limits policy of the usable key `key_id`, if it has one.
    #[must_use]
    pub fn policy_of(&self, key_id: Uuid) -> Option<Arc<rampart_limits::Policy>> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .policies
            .get(&key_id)
            .cloned()
    }

    /// Every budget of the loaded keys and their teams, once each: `(policy group, scope,
    /// budget)`.
    #[must_use]
    pub fn budgets(&self) -> Vec<(Uuid, Scope, Budget)> {
        budgets_of(&self.current())
    }

    /// The rotated keys' lines ([`Lineage`]) in the directory in force.
    #[must_use]
    pub fn lineage(&self) -> Arc<Lineage> {
        self.current().lineage.clone()
    }

    /// [`Authenticator::check`] at `now`.
    fn check_at(&self, credential: &str, now: OffsetDateTime) -> Result<Identity, Denial> {
        let slot = self.digests.slot(credential);
        let cached = self.digests.get(slot, credential);
        let digest = match cached {
            // Equal to a credential that was well-formed when it was cached.
            Some(d) => d,
            None => {
                apikey::check_format(credential).map_err(|_| Denial::Unknown)?;
                self.hasher.digest(credential).0
            }
        };
        // The digest is looked up in the current snapshot every time, cached or not.
        let snapshot = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = snapshot.usable.get(&digest) else {
            return Err(snapshot
                .refused
                .get(&digest)
                .copied()
                .unwrap_or(Denial::Unknown));
        };
        if cached.is_none() {
            self.digests.put(slot, credential, digest);
        }
        if entry.expires_at.is_some_and(|t| t <= now) {
            return Err(Denial::Expired);
        }
        entry.used.record(now.unix_timestamp());
        Ok(entry.identity.clone())
    }
}

/// [`KeyDirectory::budgets`] of `snapshot`.
fn budgets_of(snapshot: &Snapshot) -> Vec<(Uuid, Scope, Budget)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in snapshot.usable.values() {
        let Some(policy) = &entry.identity.limits else {
            continue;
        };
        for s in &policy.scopes {
            if let Some(b) = s.budget
                && seen.insert((policy.group, s.scope))
            {
                out.push((policy.group, s.scope, b));
            }
        }
    }
    out
}

// The store validates limits with the same bounds the limiter clamps to: if either side
// changed alone, a value the admin API accepts would be cut silently here.
const _: () = {
    assert!(rampart_store::limits::MAX_RATE == rampart_limits::policy::MAX_RATE);
    assert!(rampart_store::limits::MAX_CONCURRENCY == rampart_limits::policy::MAX_CONCURRENCY);
    assert!(rampart_store::limits::MAX_BUDGET_MICROS == rampart_limits::policy::MAX_BUDGET_MICROS);
};

fn scope(kind: ScopeKind, id: Uuid, s: LimitSettings) -> ScopeLimits {
    ScopeLimits {
        scope: Scope { kind, id },
        rates: Rates {
            rpm: s.rpm,
            itpm: s.itpm,
            otpm: s.otpm,
            concurrency: s.concurrency,
        },
        budget: s.budget.map(|b| Budget {
            limit_micros: b.micros,
            period: match b.period {
                BudgetPeriod::Day => Period::Day,
                BudgetPeriod::Month => Period::Month,
            },
        }),
    }
}

/// The limits of key `k`: its own settings, each unset one from its team's defaults for keys,
/// counted under its line's first key `line` (see [`Lineage`]), and its team's own (shared by
/// all the team's keys).
fn policy(
    k: &ApiKey,
    line: Uuid,
    own: Option<&LimitSettings>,
    team: Option<&TeamLimitSettings>,
) -> Option<Arc<Policy>> {
    let defaults = team.map(|t| t.key_defaults).unwrap_or_default();
    let for_key = own.copied().unwrap_or_default().or(defaults);
    let for_team = team.map(|t| t.team).unwrap_or_default();
    Policy::new(
        k.team_id,
        [
            scope(ScopeKind::Key, line, for_key),
            scope(ScopeKind::Team, k.team_id, for_team),
        ],
    )
}

/// The caching policies a key carries: its own and its team's, when either is stored.
fn stored_caching(
    key: Option<&CachePolicy>,
    team: Option<&CachePolicy>,
) -> Option<Arc<StoredPolicies>> {
    (key.is_some() || team.is_some()).then(|| {
        Arc::new(StoredPolicies {
            key: key.map(PolicyLevel::stored).unwrap_or_default(),
            team: team.map(PolicyLevel::stored).unwrap_or_default(),
        })
    })
}

fn entry(
    k: ApiKey,
    used: Arc<KeyUse>,
    limits: Option<Arc<Policy>>,
    cache: Option<Arc<StoredPolicies>>,
) -> Entry {
    let scopes = Scopes {
        endpoints: k
            .allowed_endpoints
            .iter()
            .filter_map(|e| Endpoint::parse(e))
            .collect(),
        models: k.allowed_models,
    };
    Entry {
        identity: Identity {
            key_label: Arc::from(k.prefix.as_str()),
            scopes: Some(Arc::new(scopes)),
            key_id: Some(k.id),
            team_id: Some(k.team_id),
            user_id: k.user_id,
            limits,
            cache,
        },
        expires_at: k.expires_at,
        used,
    }
}

impl Authenticator for KeyDirectory {
    fn authenticate(&self, credential: &str) -> Option<Identity> {
        self.check(credential).ok()
    }

    fn check(&self, credential: &str) -> Result<Identity, Denial> {
        self.check_at(credential, OffsetDateTime::now_utc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const T0: i64 = 1_800_000_000;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    fn directory() -> KeyDirectory {
        KeyDirectory::new(KeyHasher::new(Secret::new("p".repeat(32))).unwrap())
    }

    fn team(disabled: bool) -> Team {
        Team {
            id: Uuid::now_v7(),
            name: "t".into(),
            disabled,
            created_at: at(T0),
        }
    }

    /// A stored key for `key` in `team`.
    fn stored(dir: &KeyDirectory, key: &str, team: &Team) -> ApiKey {
        ApiKey {
            id: Uuid::now_v7(),
            team_id: team.id,
            user_id: Some(Uuid::now_v7()),
            name: "k".into(),
            prefix: apikey::visible_prefix(key),
            key_hash: dir.hasher.digest(key).0.to_vec(),
            allowed_models: vec![],
            allowed_endpoints: vec!["messages".into()],
            expires_at: None,
            enabled: true,
            created_at: at(T0),
            last_used_at: None,
            rotated_from: None,
            revoked_at: None,
        }
    }

    fn key(dir: &KeyDirectory) -> String {
        dir.hasher.generate("live").key.expose().to_owned()
    }

    #[test]
    fn a_rotated_key_is_counted_under_the_first_key_of_its_line() {
        let dir = directory();
        let t = team(false);
        let mut line: Vec<ApiKey> = Vec::new();
        for _ in 0..3 {
            let mut k = stored(&dir, &key(&dir), &t);
            k.rotated_from = line.last().map(|p| p.id);
            line.push(k);
        }
        line[0].revoked_at = Some(at(T0));
        // A loop in the data (never made by a rotation) ends the walk instead of spinning.
        let (mut a, mut b) = (stored(&dir, &key(&dir), &t), stored(&dir, &key(&dir), &t));
        a.rotated_from = Some(b.id);
        b.rotated_from = Some(a.id);
        let mut all = line.clone();
        all.extend([a.clone(), b]);
        let lineage = lineage_of(&all);
        assert_eq!(lineage.get(&line[1].id), Some(&line[0].id));
        assert_eq!(lineage.get(&line[2].id), Some(&line[0].id));
        assert_eq!(
            lineage.get(&line[0].id),
            None,
            "a first key maps to nothing"
        );
        assert!(lineage.contains_key(&a.id));
        let limits = AllLimits {
            keys: line
                .iter()
                .map(|k| {
                    (
                        k.id,
                        LimitSettings {
                            rpm: Some(5),
                            ..LimitSettings::default()
                        },
                    )
                })
                .collect(),
            teams: vec![],
        };
        dir.install(&[t], all, &limits, &AllCachePolicies::default());
        for k in &line[1..] {
            let policy = dir.policy_of(k.id).expect("a limited key");
            assert_eq!(policy.scopes[0].scope.id, line[0].id);
        }
    }

    #[test]
    fn a_usable_key_carries_its_ids_and_scopes() {
        let dir = directory();
        let (k, t) = (key(&dir), team(false));
        let row = stored(&dir, &k, &t);
        assert_eq!(
            dir.install(
                std::slice::from_ref(&t),
                vec![row.clone()],
                &AllLimits::default(),
                &AllCachePolicies::default()
            ),
            1
        );
        let id = dir.check_at(&k, at(T0)).unwrap();
        assert_eq!(id.key_id, Some(row.id));
        assert_eq!(id.team_id, Some(t.id));
        assert_eq!(id.user_id, row.user_id);
        assert_eq!(&*id.key_label, row.prefix.as_str());
        assert!(!id.scopes.unwrap().allows_endpoint(Endpoint::Batches));
    }

    #[test]
    fn refusals_carry_their_reason() {
        let dir = directory();
        let (live_team, off_team) = (team(false), team(true));
        let keys: Vec<String> = (0..5).map(|_| key(&dir)).collect();
        let mut revoked = stored(&dir, &keys[0], &live_team);
        revoked.revoked_at = Some(at(T0));
        revoked.enabled = false;
        let mut disabled = stored(&dir, &keys[1], &live_team);
        disabled.enabled = false;
        let of_disabled_team = stored(&dir, &keys[2], &off_team);
        let mut expired = stored(&dir, &keys[3], &live_team);
        expired.expires_at = Some(at(T0));
        let n = dir.install(
            &[live_team, off_team],
            vec![revoked, disabled, of_disabled_team, expired],
            &AllLimits::default(),
            &AllCachePolicies::default(),
        );
        assert_eq!(n, 1, "only the expiring key is usable (until its expiry)");
        let reason = |k: &str| dir.check_at(k, at(T0)).unwrap_err();
        assert_eq!(reason(&keys[0]), Denial::Revoked);
        assert_eq!(reason(&keys[1]), Denial::Disabled);
        assert_eq!(reason(&keys[2]), Denial::TeamDisabled);
        assert_eq!(reason(&keys[3]), Denial::Expired);
        assert_eq!(reason(&keys[4]), Denial::Unknown);
        assert_eq!(reason("sk-ant-not-ours"), Denial::Unknown);
        assert!(dir.check_at(&keys[3], at(T0 - 1)).is_ok());
    }

    fn pending(dir: &KeyDirectory) -> Vec<(Uuid, i64)> {
        dir.uses
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, u)| u.unflushed().map(|t| (*id, t)))
            .collect()
    }

    /// A directory holding one usable key: the directory, the key, its team and its row.
    fn one_key() -> (KeyDirectory, String, Team, ApiKey) {
        let dir = directory();
        let (k, t) = (key(&dir), team(false));
        let row = stored(&dir, &k, &t);
        dir.install(
            std::slice::from_ref(&t),
            vec![row.clone()],
            &AllLimits::default(),
            &AllCachePolicies::default(),
        );
        (dir, k, t, row)
    }

    #[test]
    fn uses_are_recorded_in_memory_once_per_second_and_survive_reloads() {
        let (dir, k, t, row) = one_key();
        assert!(pending(&dir).is_empty());
        dir.check_at(&k, at(T0)).unwrap();
        dir.check_at(&k, at(T0 - 5)).unwrap();
        assert_eq!(pending(&dir), vec![(row.id, T0)], "never goes backwards");
        // A reload keeps the clock, and the reloaded entry moves the same clock.
        dir.install(
            std::slice::from_ref(&t),
            vec![row.clone()],
            &AllLimits::default(),
            &AllCachePolicies::default(),
        );
        assert_eq!(pending(&dir), vec![(row.id, T0)]);
        dir.check_at(&k, at(T0 + 1)).unwrap();
        assert_eq!(pending(&dir), vec![(row.id, T0 + 1)]);
        // Flushed: nothing pending until the next use in a later second.
        dir.uses.lock().unwrap()[&row.id]
            .flushed
            .store(T0 + 1, Ordering::Relaxed);
        dir.check_at(&k, at(T0 + 1)).unwrap();
        assert!(pending(&dir).is_empty());
    }

    #[test]
    fn a_removed_keys_clock_is_kept_until_flushed() {
        let (dir, k, t, row) = one_key();
        dir.check_at(&k, at(T0)).unwrap();
        dir.install(
            std::slice::from_ref(&t),
            vec![],
            &AllLimits::default(),
            &AllCachePolicies::default(),
        );
        assert_eq!(pending(&dir), vec![(row.id, T0)]);
        dir.uses.lock().unwrap()[&row.id]
            .flushed
            .store(T0, Ordering::Relaxed);
        dir.install(
            std::slice::from_ref(&t),
            vec![],
            &AllLimits::default(),
            &AllCachePolicies::default(),
        );
        assert!(dir.uses.lock().unwrap().is_empty());
    }

    #[test]
    fn cached_credentials_are_still_refused_after_revocation_and_need_an_exact_match() {
        let (dir, k, t, row) = one_key();
        dir.check_at(&k, at(T0)).unwrap();
        assert_eq!(
            dir.digests.map.read().unwrap().len(),
            1,
            "verified once: cached"
        );
        dir.check_at(&k, at(T0)).unwrap();
        // A near-miss never matches the cached entry.
        let mut near = k.clone();
        let last = near.pop().unwrap();
        near.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(dir.check_at(&near, at(T0)).unwrap_err(), Denial::Unknown);
        // Failed guesses are not cached.
        assert_eq!(dir.digests.map.read().unwrap().len(), 1);
        // Revoked, disabled, team disabled, expired: refused although the digest is cached.
        let mut revoked = row.clone();
        revoked.revoked_at = Some(at(T0));
        let reinstall = |row: ApiKey, team: &Team| {
            dir.install(
                std::slice::from_ref(team),
                vec![row],
                &AllLimits::default(),
                &AllCachePolicies::default(),
            )
        };
        reinstall(revoked, &t);
        assert_eq!(dir.check_at(&k, at(T0)).unwrap_err(), Denial::Revoked);
        let mut disabled = row.clone();
        disabled.enabled = false;
        reinstall(disabled, &t);
        assert_eq!(dir.check_at(&k, at(T0)).unwrap_err(), Denial::Disabled);
        let off = Team {
            disabled: true,
            ..t.clone()
        };
        reinstall(row.clone(), &off);
        assert_eq!(dir.check_at(&k, at(T0)).unwrap_err(), Denial::TeamDisabled);
        let mut expiring = row.clone();
        expiring.expires_at = Some(at(T0));
        reinstall(expiring, &t);
        assert_eq!(dir.check_at(&k, at(T0)).unwrap_err(), Denial::Expired);
        reinstall(row.clone(), &t);
        assert!(dir.check_at(&k, at(T0)).is_ok());
        dir.install(
            std::slice::from_ref(&t),
            vec![],
            &AllLimits::default(),
            &AllCachePolicies::default(),
        );
        assert_eq!(dir.check_at(&k, at(T0)).unwrap_err(), Denial::Unknown);
    }
}
