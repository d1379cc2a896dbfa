//! `rampart rotate-master-key`: re-encrypt every stored upstream credential that is not under the
//! current master key. Rotation: set `RAMPART_MASTER_KEY=new:<material>,old:<material>` (the
//! first entry is current), run this once (all rows change in one transaction, or none), then
//! restart every instance with the new key alone. Running it again changes nothing. Each run is
//! audited (`master_key.rotate`, actor `cli:<OS user>`), with key ids, never keys.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context;
use rampart_gateway::upstream_key;
use rampart_store::{NewAuditEvent, Reencrypted, StoreError, upstream_credential_aad};

use crate::cli::MigrateArgs;
use crate::people::{actor, existing};

/// Run `rampart rotate-master-key`.
///
/// # Errors
/// No or weak master key, a credential under a key that is not loaded (nothing changes), or a
/// store failure.
pub async fn rotate(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let keys = crate::secrets::master_keys()?;
    let current = keys.current_id().to_owned();
    let store = existing(args).await?;
    let creds = store.list_upstream_credentials().await?;
    let mut batch = Vec::new();
    let mut from = BTreeSet::new();
    for c in creds.iter().filter(|c| c.key_id != current) {
        let plain = upstream_key::open(&keys, c).map_err(|e| {
            anyhow::anyhow!("{e}; nothing was changed (list every old key after the new one in RAMPART_MASTER_KEY)")
        })?;
        let sealed = keys
            .seal(plain.expose().as_bytes(), &upstream_credential_aad(&c.name))
            .map_err(anyhow::Error::msg)?;
        from.insert(c.key_id.clone());
        batch.push(Reencrypted {
            id: c.id,
            old_key_id: c.key_id.clone(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce.to_vec(),
            key_id: sealed.key_id,
        });
    }
    let mut audit = NewAuditEvent::new(actor(), "master_key.rotate", "upstream_credentials");
    audit.details = serde_json::json!({
        "key_id": current,
        "from_key_ids": from,
        "reencrypted": batch.len(),
    });
    let done = store
        .reencrypt_upstream_credentials(&batch, Some(&audit))
        .await;
    store.close().await;
    let n = match done {
        Ok(n) => n,
        Err(StoreError::Conflict { .. }) => anyhow::bail!(
            "a credential changed while rotating (another rotation?); nothing was changed: run it again"
        ),
        Err(e) => return Err(e).context("cannot store the re-encrypted credentials"),
    };
    println!(
        "re-encrypted {n} upstream credential(s) under master key {current}; {} already were",
        creds.len() - batch.len()
    );
    Ok(ExitCode::SUCCESS)
}
