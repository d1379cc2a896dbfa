//! The upstream key from the store's encrypted credentials: served, replaced while running,
//! refused with a clear error when missing or sealed under an unknown master key.

use std::sync::Arc;
use std::time::Duration;

use rampart_crypto::Secret;
use rampart_crypto::envelope::MasterKeys;
use rampart_gateway::Gateway;
use rampart_gateway::keydir::KeyDirectory;
use rampart_gateway::store_plane::{StartError, StorePlane, StorePlaneOptions};
use rampart_gateway::upstream_key::{self, Refreshed, StoredUpstream, StoredUpstreamError};
use rampart_store::UpstreamCredential;

use crate::harness::{TestStore, hasher, message, serve, settings, sim};

fn master(spec: &str) -> Arc<MasterKeys> {
    Arc::new(MasterKeys::from_spec(&Secret::new(spec.to_owned()), "RAMPART_MASTER_KEY").unwrap())
}

fn material() -> String {
    rampart_crypto::keyspec::generate().expose().to_owned()
}

async fn add(db: &TestStore, keys: &MasterKeys, name: &str, key: &str) -> UpstreamCredential {
    let new = upstream_key::seal(keys, name, &Secret::new(key.to_owned())).unwrap();
    db.create_upstream_credential(&new, None).await.unwrap()
}

fn fast() -> StorePlaneOptions {
    StorePlaneOptions {
        reload_every: Duration::from_millis(20),
        ..StorePlaneOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_credential_serves_and_a_replacement_applies_without_restart() {
    let db = TestStore::new().await;
    let keys = master(&format!("mk1:{}", material()));
    let old = add(&db, &keys, "old", "sk-ant-old-credential-0000").await;
    let team = db.team("t").await;
    let (client_key, key_row) = db.key(&team, &[]).await;
    let upstream = sim(Some("sk-ant-new-credential-1111")).await;

    let directory = Arc::new(KeyDirectory::new(hasher()));
    let stored = StoredUpstream::new(keys.clone(), None);
    let (plane, parts) = StorePlane::start(db.store(), directory.clone(), Some(stored), fast())
        .await
        .unwrap();
    let gateway = Gateway::with_parts(settings(&upstream.url, None), directory, parts).unwrap();
    let gw = serve(gateway).await;

    let (status, body) = gw
        .post("/v1/messages", &client_key, &message("claude-haiku-4-5"))
        .await;
    assert_eq!(
        status, 401,
        "the simulator refuses the old upstream key: {body}"
    );

    db.delete_upstream_credential(old.id, None).await.unwrap();
    add(&db, &keys, "new", "sk-ant-new-credential-1111").await;
    let mut served = 0;
    for _ in 0..100 {
        let (status, _) = gw
            .post("/v1/messages", &client_key, &message("claude-haiku-4-5"))
            .await;
        if status == 200 {
            served += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served, 1, "the new credential was picked up while serving");

    gw.stop().await;
    plane.stop().await;
    assert!(
        db.get_api_key(key_row.id)
            .await
            .unwrap()
            .last_used_at
            .is_some(),
        "stopping the plane flushed the key's last use"
    );
}

#[tokio::test]
async fn without_a_stored_credential_the_plane_does_not_start() {
    let db = TestStore::new().await;
    let keys = master(&material());
    let start = |name: Option<&str>| {
        StorePlane::start(
            db.store(),
            Arc::new(KeyDirectory::new(hasher())),
            Some(StoredUpstream::new(keys.clone(), name.map(str::to_owned))),
            StorePlaneOptions::default(),
        )
    };
    let err = start(None).await.unwrap_err();
    assert!(matches!(
        err,
        StartError::Upstream(StoredUpstreamError::Missing { name: None })
    ));
    assert!(err.to_string().contains("rampart upstreams add"), "{err}");
    add(&db, &keys, "primary", "sk-ant-x").await;
    let err = start(Some("other")).await.unwrap_err().to_string();
    assert!(err.contains("`other`"), "{err}");
    let (plane, parts) = start(Some("primary")).await.unwrap();
    assert!(parts.upstream_key.unwrap().is_set());
    plane.stop().await;
}

#[tokio::test]
async fn rotation_reloads_and_an_unknown_master_key_keeps_the_key_in_use() {
    let db = TestStore::new().await;
    let (old_material, new_material) = (material(), material());
    let old_only = master(&format!("old:{old_material}"));
    let cred = add(&db, &old_only, "primary", "sk-ant-rotating-key").await;
    let stored = StoredUpstream::new(old_only.clone(), None);
    assert!(matches!(
        stored.refresh(&db).await.unwrap(),
        Refreshed::Loaded { .. }
    ));
    assert_eq!(stored.refresh(&db).await.unwrap(), Refreshed::Unchanged);

    // Re-encrypt under a new master key, as `rampart rotate-master-key` does.
    let both = master(&format!("new:{new_material},old:{old_material}"));
    let plain = upstream_key::open(&both, &cred).unwrap();
    let resealed = both
        .seal(
            plain.expose().as_bytes(),
            &rampart_store::upstream_credential_aad("primary"),
        )
        .unwrap();
    db.reencrypt_upstream_credentials(
        &[rampart_store::Reencrypted {
            id: cred.id,
            old_key_id: "old".into(),
            ciphertext: resealed.ciphertext,
            nonce: resealed.nonce.to_vec(),
            key_id: resealed.key_id,
        }],
        None,
    )
    .await
    .unwrap();

    let err = stored.refresh(&db).await.unwrap_err();
    assert!(matches!(err, StoredUpstreamError::Decrypt { .. }), "{err}");
    assert!(err.to_string().contains("`new`") && !err.to_string().contains("sk-ant"));
    assert_eq!(
        stored.key().header().unwrap(),
        "sk-ant-rotating-key",
        "the key in use stays"
    );
    let restarted = StoredUpstream::new(master(&format!("new:{new_material}")), None);
    assert!(matches!(
        restarted.refresh(&db).await.unwrap(),
        Refreshed::Loaded { .. }
    ));
    assert_eq!(restarted.key().header().unwrap(), "sk-ant-rotating-key");

    db.delete_upstream_credential(cred.id, None).await.unwrap();
    assert!(stored.refresh(&db).await.is_err());
    assert!(
        !stored.key().is_set(),
        "a deleted credential is no longer sent"
    );
}
