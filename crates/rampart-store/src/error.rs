//! [`StoreError`]: what a repository call can fail with, mapped the same way for both engines.

/// A repository failure. `Display` never contains SQL text, bound values or a connection string;
/// the driver's error is kept as the `source` for logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row the call names does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated; `what` names the rule in words (e.g. `"user email"`).
    #[error("conflict on {what}")]
    Conflict {
        /// The unique attribute that clashed.
        what: &'static str,
    },
    /// The input breaks a rule of the schema (a foreign key, a check) or of the repository.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database could not be reached or failed; details are in `source`.
    #[error("storage backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Shorthand for repository results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => {
                use sqlx::error::ErrorKind;
                match db.kind() {
                    ErrorKind::UniqueViolation => StoreError::Conflict {
                        what: conflict_subject(db.constraint().unwrap_or(db.message())),
                    },
                    ErrorKind::ForeignKeyViolation => {
                        StoreError::Invalid("a referenced row does not exist".to_owned())
                    }
                    ErrorKind::CheckViolation | ErrorKind::NotNullViolation => {
                        StoreError::Invalid("a value is outside what the schema allows".to_owned())
                    }
                    _ if is_data_exception(&*db) => {
                        StoreError::Invalid("a value cannot be stored as it is".to_owned())
                    }
                    _ => StoreError::Backend(Box::new(sqlx::Error::Database(db))),
                }
            }
            other => StoreError::Backend(Box::new(other)),
        }
    }
}

/// Whether the database refused a value itself, whatever the connection's state: PostgreSQL's
/// data exceptions (SQLSTATE class 22: a NUL in text, a number out of range, …), SQLite's
/// `SQLITE_TOOBIG` and `SQLITE_MISMATCH`. The same statement fails again the same way, so it
/// is the input's fault, never the backend's.
fn is_data_exception(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Primary result codes (the low byte of an extended one).
        return code
            .parse::<i32>()
            .is_ok_and(|c| matches!(c & 0xff, 18 | 20));
    }
    code.starts_with("22")
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// Names the unique rule behind a violation. PostgreSQL reports the constraint name; SQLite reports
/// `table.column` or `index 'name'` in its message. Both schemas use the same constraint names.
fn conflict_subject(text: &str) -> &'static str {
    const RULES: &[(&[&str], &str)] = &[
        (&["teams_name_key", "teams.name"], "team name"),
        (&["users_email_lower_key", "users.email"], "user email"),
        (&["api_keys_key_hash_key", "api_keys.key_hash"], "api key"),
        (
            &["upstream_credentials_name_key", "upstream_credentials.name"],
            "upstream credential name",
        ),
        (
            &["refresh_tokens_token_hash_key", "refresh_tokens.token_hash"],
            "refresh token",
        ),
        (&["revoked_jti"], "revoked jti"),
        (&["audit_log"], "audit sequence number"),
    ];
    RULES
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| text.contains(n)))
        .map_or("record", |(_, what)| what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_conflicts_from_either_engine() {
        assert_eq!(conflict_subject("users_email_lower_key"), "user email");
        assert_eq!(
            conflict_subject("UNIQUE constraint failed: index 'users_email_lower_key'"),
            "user email"
        );
        assert_eq!(
            conflict_subject("UNIQUE constraint failed: teams.name"),
            "team name"
        );
        assert_eq!(conflict_subject("something_else"), "record");
    }

    #[test]
    fn backend_errors_do_not_display_their_cause() {
        let e = StoreError::Backend(Box::new(sqlx::Error::Configuration(
            "postgres://user:secret@host/db".into(),
        )));
        assert_eq!(e.to_string(), "storage backend error");
    }
}
