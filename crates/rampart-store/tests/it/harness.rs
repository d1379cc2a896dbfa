//! Test databases: a temp-file SQLite store, or a fresh PostgreSQL database per test.

use std::ops::Deref;

use rampart_store::{Engine, Store, sqlite_url};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// An open, migrated store plus what is needed to clean it up and tamper with it.
pub struct TestDb {
    store: Store,
    /// The URL the store was opened with (for raw access in tamper tests).
    url: String,
    /// Keeps the SQLite directory alive.
    _dir: Option<tempfile::TempDir>,
    /// `(server URL, database name)` of a PostgreSQL test database, dropped by `finish`.
    pg: Option<(String, String)>,
}

impl Deref for TestDb {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = sqlite_url(dir.path());
        let store = Store::open(&url).await.expect("open sqlite store");
        assert_eq!(store.engine(), Engine::Sqlite);
        store.migrate().await.expect("migrate sqlite");
        TestDb {
            store,
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// `None` (after a loud banner) when no server is configured outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(server) = std::env::var("RAMPART_TEST_DATABASE_URL") else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "CI is set but RAMPART_TEST_DATABASE_URL is not: the PostgreSQL half of the \
                     store suite must run in CI (scripts/test.sh starts a throwaway cluster)"
                );
            }
            // Written to stderr directly (not `eprintln!`) so libtest's capture cannot hide it.
            static BANNER: std::sync::Once = std::sync::Once::new();
            BANNER.call_once(|| {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"\n################################################################################\n\
                      ## SKIPPING every postgres::* store test: RAMPART_TEST_DATABASE_URL is unset. ##\n\
                      ## They pass vacuously. ./scripts/test.sh cargo starts a throwaway PostgreSQL  ##\n\
                      ## and runs them for real (and CI=1 makes a missing server a failure).        ##\n\
                      ################################################################################\n\n",
                );
            });
            return None;
        };
        let name = format!("rampart_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|e| {
            panic!("RAMPART_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}")
        });
        // Identifiers cannot be bound; `name` is ours (a prefix and hex digits).
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = with_database(&server, &name);
        let store = Store::open(&url).await.expect("open postgres store");
        assert_eq!(store.engine(), Engine::Postgres);
        store.migrate().await.expect("migrate postgres");
        Some(TestDb {
            store,
            url,
            _dir: None,
            pg: Some((server, name)),
        })
    }

    /// Run one statement outside the repository (to tamper with rows); rows affected.
    pub async fn raw(&self, sql: &'static str) -> Result<u64, sqlx::Error> {
        match self.store.engine() {
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await?;
                let done = sqlx::query(sql).execute(&mut c).await?;
                c.close().await?;
                Ok(done.rows_affected())
            }
            Engine::Postgres => {
                let mut c = PgConnection::connect(&self.url).await?;
                let done = sqlx::query(sql).execute(&mut c).await?;
                c.close().await?;
                Ok(done.rows_affected())
            }
        }
    }

    /// Close the pool and drop a PostgreSQL test database.
    pub async fn finish(self) {
        self.store.close().await;
        if let Some((server, name)) = self.pg {
            let mut admin = PgConnection::connect(&server).await.expect("reconnect");
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .expect("drop test database");
            admin.close().await.ok();
        }
    }
}

/// `server` with its database path replaced by `name`:
/// `postgres://u@h:p/db?x=y` becomes `postgres://u@h:p/NAME?x=y`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let (scheme, rest) = base.split_once("://").expect("postgres URL has a scheme");
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    if query.is_empty() {
        format!("{scheme}://{authority}/{name}")
    } else {
        format!("{scheme}://{authority}/{name}?{query}")
    }
}

#[test]
fn replaces_the_database_of_a_postgres_url() {
    assert_eq!(
        with_database("postgres://u@localhost:5/postgres?sslmode=disable", "t1"),
        "postgres://u@localhost:5/t1?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:5", "t2"),
        "postgres://u@h:5/t2"
    );
}
