//! First-admin bootstrap, without default passwords: `rampart init` creates the first admin from
//! `RAMPART_ADMIN_EMAIL` / `RAMPART_ADMIN_PASSWORD` (checked against the password policy, stored
//! only as an argon2id hash, recorded in the audit log); `rampart demo` creates a demo admin with a
//! random password kept (mode 0600) in its data directory.

use anyhow::Context;
use rampart_crypto::{Secret, password};
use rampart_store::{NewAuditEvent, NewUser, Role, Store};

/// What bootstrap did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first admin was created.
    Created,
    /// Users already exist; nothing was changed.
    AlreadyInitialised,
}

/// A plausible e-mail address: one `@`, something on both sides, no spaces or controls.
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && email.len() <= 254
        && email.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// Create the first admin unless any user exists.
///
/// # Errors
/// An invalid e-mail, a password the policy refuses (with the reason), or a store failure.
pub async fn first_admin(
    store: &Store,
    email: &str,
    pw: &Secret,
    actor: &str,
) -> anyhow::Result<Outcome> {
    if !store.list_users(None).await?.is_empty() {
        return Ok(Outcome::AlreadyInitialised);
    }
    let email = email.trim();
    anyhow::ensure!(
        valid_email(email),
        "RAMPART_ADMIN_EMAIL is not a valid e-mail address"
    );
    let local = email.split('@').next().unwrap_or_default();
    password::check_policy(pw.expose(), &[email, local])
        .map_err(|e| anyhow::anyhow!("RAMPART_ADMIN_PASSWORD refused: {e}"))?;
    let password_hash = password::hash(pw).map_err(|e| anyhow::anyhow!("{e}"))?;
    let audit = NewAuditEvent::new(actor, "user.bootstrap", format!("user:{email}"));
    store
        .create_user(
            &NewUser {
                email: email.to_owned(),
                password_hash,
                role: Role::Admin,
                team_id: None,
            },
            Some(&audit),
        )
        .await
        .context("cannot create the first admin")?;
    Ok(Outcome::Created)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("rampart-bootstrap-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&rampart_store::sqlite_url(&dir)).await.unwrap();
        store.migrate().await.unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn creates_the_first_admin_once_with_a_hashed_password_and_an_audit_event() {
        let (store, dir) = store().await;
        let pw = Secret::new("correct horse battery staple".to_owned());
        assert_eq!(
            first_admin(&store, "ops@example.com", &pw, "cli:test")
                .await
                .unwrap(),
            Outcome::Created
        );
        let user = store.get_user_by_email("OPS@example.com").await.unwrap();
        assert_eq!(user.role, Role::Admin);
        assert!(user.password_hash.starts_with("$argon2id$"));
        assert!(!user.password_hash.contains("horse"));
        assert!(password::verify(&pw, &user.password_hash));
        assert_eq!(
            first_admin(&store, "other@example.com", &pw, "cli:test")
                .await
                .unwrap(),
            Outcome::AlreadyInitialised
        );
        assert!(store.verify_audit_chain().await.unwrap().is_none());
        assert_eq!(
            store.audit_head().await.unwrap().map(|(seq, _)| seq),
            Some(1)
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn refuses_weak_passwords_and_bad_emails_without_writing() {
        let (store, dir) = store().await;
        let weak = first_admin(
            &store,
            "ops@example.com",
            &Secret::new("password1234".into()),
            "cli:test",
        )
        .await;
        assert!(weak.unwrap_err().to_string().contains("too common"));
        let bad = first_admin(
            &store,
            "not-an-email",
            &Secret::new("correct horse battery staple".into()),
            "cli:test",
        )
        .await;
        assert!(bad.unwrap_err().to_string().contains("e-mail"));
        assert!(store.list_users(None).await.unwrap().is_empty());
        std::fs::remove_dir_all(dir).ok();
    }
}
