//! The key directory against a real store: last-use clocks flushed in one batch, and reloads
//! that an admin write can force at once while the background reload runs.

use std::sync::Arc;
use std::time::Duration;

use rampart_gateway::auth::{Authenticator, Denial};
use rampart_gateway::keydir::KeyDirectory;
use rampart_store::ApiKey;
use time::OffsetDateTime;

use crate::harness::{TestStore, hasher};

#[tokio::test]
async fn key_use_reaches_last_used_at_in_one_flush_and_only_when_it_moved() {
    let db = TestStore::new().await;
    let team = db.team("payments").await;
    let (key, row) = db.key(&team, &[]).await;
    let (_, other_row) = db.key(&team, &[]).await;
    let dir = KeyDirectory::new(hasher());
    assert_eq!(dir.refresh(&db).await.unwrap(), 2);
    assert_eq!(dir.flush_last_used(&db).await.unwrap(), 0, "no use yet");

    let before = OffsetDateTime::now_utc().unix_timestamp();
    for _ in 0..100 {
        assert!(dir.check(&key).is_ok());
    }
    dir.refresh(&db).await.unwrap();
    assert_eq!(
        dir.flush_last_used(&db).await.unwrap(),
        1,
        "one key, one row"
    );
    let used = db.get_api_key(row.id).await.unwrap().last_used_at.unwrap();
    assert!(used.unix_timestamp() >= before);
    assert!(used.unix_timestamp() <= OffsetDateTime::now_utc().unix_timestamp());
    assert_eq!(
        db.get_api_key(other_row.id).await.unwrap().last_used_at,
        None
    );
    assert_eq!(dir.flush_last_used(&db).await.unwrap(), 0, "nothing moved");
}

/// A store with one key and a directory loaded from it.
async fn one_key() -> (TestStore, Arc<KeyDirectory>, String, ApiKey) {
    let db = TestStore::new().await;
    let team = db.team("t").await;
    let (key, row) = db.key(&team, &[]).await;
    let dir = Arc::new(KeyDirectory::new(hasher()));
    dir.refresh(&db).await.unwrap();
    (db, dir, key, row)
}

#[tokio::test]
async fn the_flusher_writes_once_more_at_shutdown() {
    let (db, dir, key, row) = one_key().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let flusher = tokio::spawn(dir.clone().run_last_used_flusher(
        db.store(),
        Duration::from_secs(3600),
        async {
            let _ = stopped.await;
        },
    ));
    dir.check(&key).unwrap();
    stop.send(()).unwrap();
    flusher.await.unwrap();
    assert!(db.get_api_key(row.id).await.unwrap().last_used_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_after_a_write_applies_it_even_while_background_reloads_run() {
    let (db, dir, key, row) = one_key().await;
    let background = dir
        .clone()
        .spawn_refresher(db.store(), Duration::from_millis(1));
    for round in 0..20 {
        let (k, r) = if round == 0 {
            (key.clone(), row.clone())
        } else {
            let team = db.get_team(row.team_id).await.unwrap();
            db.key(&team, &[]).await
        };
        // Several admin handlers refreshing at once, the background reload running beside them.
        let refreshes: Vec<_> = (0..4)
            .map(|_| {
                let (dir, store) = (dir.clone(), db.store());
                tokio::spawn(async move { dir.refresh(&store).await.unwrap() })
            })
            .collect();
        dir.refresh(&db).await.unwrap();
        assert!(dir.check(&k).is_ok(), "a created key works at once");
        db.revoke_api_key(r.id, OffsetDateTime::now_utc(), None)
            .await
            .unwrap();
        dir.refresh(&db).await.unwrap();
        assert_eq!(
            dir.check(&k).unwrap_err(),
            Denial::Revoked,
            "a revoked key stops at once"
        );
        for r in refreshes {
            r.await.unwrap();
        }
        assert_eq!(
            dir.check(&k).unwrap_err(),
            Denial::Revoked,
            "and stays stopped"
        );
    }
    background.abort();
}

/// A key created in the store after the gateway started (by the CLI, or on another instance)
/// works at its first request, though the background poll would only see it in an hour; an
/// unknown key is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_after_start_works_at_its_first_request() {
    use rampart_gateway::Gateway;
    use rampart_gateway::store_plane::{StorePlane, StorePlaneOptions};

    use crate::harness::{message, serve, settings, sim};

    let db = TestStore::new().await;
    let team = db.team("t").await;
    let upstream = sim(Some("sk-ant-up")).await;
    let directory = Arc::new(KeyDirectory::new(hasher()));
    let (plane, parts) = StorePlane::start(
        db.store(),
        directory.clone(),
        None,
        StorePlaneOptions {
            key_poll_every: Duration::from_secs(3600),
            ..StorePlaneOptions::default()
        },
    )
    .await
    .unwrap();
    let gw = serve(
        Gateway::with_parts(
            settings(&upstream.url, Some("sk-ant-up")),
            directory.clone(),
            parts,
        )
        .unwrap(),
    )
    .await;

    let (key, _) = db.key(&team, &[]).await;
    let resp = gw
        .send("/v1/messages", &key, &message("claude-sonnet-4-6"))
        .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // So does one whose first requests come together: those that waited while another read
    // the store look again too.
    for _ in 0..5 {
        let (key, _) = db.key(&team, &[]).await;
        let body = message("claude-sonnet-4-6");
        let burst = (0..8).map(|_| gw.send("/v1/messages", &key, &body));
        let statuses: Vec<u16> = futures_util::future::join_all(burst)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }

    let unknown = format!("{}x", &key[..key.len() - 1]);
    let resp = gw
        .send("/v1/messages", &unknown, &message("claude-sonnet-4-6"))
        .await;
    assert_eq!(resp.status(), 401);
    gw.stop().await;
    plane.stop().await;
}

/// The budgets one reload handed over (key or team id, budget), and how many budgets the
/// directory in force had then.
type Handed = (Vec<(uuid::Uuid, rampart_limits::Budget)>, usize);

/// Records the budgets each reload hands over, and whether the directory in force already had
/// them (it must not: seeding comes before the reload takes effect).
#[derive(Debug)]
struct Recorder {
    dir: std::sync::OnceLock<Arc<KeyDirectory>>,
    seen: std::sync::Mutex<Vec<Handed>>,
}

impl rampart_gateway::keydir::BudgetSeeder for Recorder {
    fn seed<'a>(
        &'a self,
        budgets: &'a [(uuid::Uuid, rampart_limits::Scope, rampart_limits::Budget)],
        _lineage: &'a rampart_gateway::keydir::Lineage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let in_force = self.dir.get().unwrap().budgets().len();
            let got = budgets.iter().map(|(_, s, b)| (s.id, *b)).collect();
            self.seen.lock().unwrap().push((got, in_force));
        })
    }
}

#[tokio::test]
async fn a_reload_hands_the_budgets_it_brings_to_the_seeder_before_they_apply() {
    use rampart_store::{BudgetPeriod, BudgetSetting, LimitSettings};
    let db = TestStore::new().await;
    let team = db.team("t").await;
    let (_, row) = db.key(&team, &[]).await;
    let dir = Arc::new(KeyDirectory::new(hasher()));
    let recorder = Arc::new(Recorder {
        dir: std::sync::OnceLock::new(),
        seen: std::sync::Mutex::default(),
    });
    recorder.dir.set(dir.clone()).unwrap();
    dir.set_budget_seeder(recorder.clone());
    dir.refresh(&db).await.unwrap();
    let budget = |micros: u64, period: BudgetPeriod| LimitSettings {
        budget: Some(BudgetSetting { micros, period }),
        ..LimitSettings::default()
    };
    let set = |l: LimitSettings| {
        let db = &db;
        async move { db.limits().set_key_limits(row.id, &l, None).await.unwrap() }
    };
    // A new budget: handed over while the directory in force has none.
    set(budget(5_000_000, BudgetPeriod::Day)).await;
    dir.refresh(&db).await.unwrap();
    // The same budget raised, and a reload with no change: nothing to seed.
    set(budget(9_000_000, BudgetPeriod::Day)).await;
    dir.refresh(&db).await.unwrap();
    dir.refresh(&db).await.unwrap();
    // Another period: handed over again.
    set(budget(9_000_000, BudgetPeriod::Month)).await;
    dir.refresh(&db).await.unwrap();
    let day = rampart_limits::Budget {
        limit_micros: 5_000_000,
        period: rampart_limits::Period::Day,
    };
    let month = rampart_limits::Budget {
        limit_micros: 9_000_000,
        period: rampart_limits::Period::Month,
    };
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        [(vec![(row.id, day)], 0), (vec![(row.id, month)], 1)]
    );
    let [(_, scope, in_force)] = dir.budgets()[..] else {
        panic!("one budget: {:?}", dir.budgets());
    };
    assert_eq!((scope.id, in_force), (row.id, month));
}
