//! A migrated SQLite store in a temporary directory, and helpers to make keys in it.

use std::ops::Deref;
use std::path::PathBuf;

use rampart_crypto::Secret;
use rampart_crypto::apikey::KeyHasher;
use rampart_store::{ApiKey, NewApiKey, Store, Team};

/// A store that removes its directory on drop.
pub struct TestStore {
    store: Store,
    dir: PathBuf,
}

impl Deref for TestStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestStore {
    pub async fn new() -> TestStore {
        let dir = std::env::temp_dir().join(format!("rampart-gw-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&rampart_store::sqlite_url(&dir)).await.unwrap();
        store.migrate().await.unwrap();
        TestStore { store, dir }
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    pub async fn team(&self, name: &str) -> Team {
        self.create_team(name, None).await.unwrap()
    }

    /// A new key in `team` with the given model scopes; returns the key and its row.
    pub async fn key(&self, team: &Team, models: &[&str]) -> (String, ApiKey) {
        let new = hasher().generate("live");
        let row = self
            .create_api_key(
                &NewApiKey {
                    team_id: team.id,
                    user_id: None,
                    name: "test".into(),
                    prefix: new.prefix.clone(),
                    key_hash: new.digest.0.to_vec(),
                    allowed_models: models.iter().map(|m| (*m).to_owned()).collect(),
                    allowed_endpoints: vec![],
                    expires_at: None,
                },
                None,
            )
            .await
            .unwrap();
        (new.key.expose().to_owned(), row)
    }
}

pub fn hasher() -> KeyHasher {
    KeyHasher::new(Secret::new("pepper-".repeat(6))).unwrap()
}
