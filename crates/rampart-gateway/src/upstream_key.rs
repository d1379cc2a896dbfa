//! The upstream (Anthropic) credential the proxy sends, which may change while serving.
//!
//! - [`UpstreamKey`] holds the `x-api-key` header value. Fixed when it comes from the
//!   configuration (`RAMPART_UPSTREAM_API_KEY`, `upstream.api_key_file`); replaced by
//!   [`StoredUpstream`] when it comes from the store. On the hot path [`UpstreamKey::header`] is
//!   one atomic load of a generation counter and a lookup in a thread-local copy: the shared
//!   value is read (under a lock) only by each thread's first request after a change, so
//!   requests never contend on it.
//! - [`StoredUpstream`] picks a credential from the store's `upstream_credentials` (the one named
//!   by `upstream.credential`, else the oldest), opens it with the master keys (AES-256-GCM, the
//!   credential's name as associated data) and re-reads the table on every refresh, so a new,
//!   re-encrypted or deleted credential applies without a restart. The plaintext lives only in
//!   a [`Secret`] and the header value; neither is ever logged.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use http::HeaderValue;
use rampart_crypto::envelope::{EnvelopeError, MasterKeys, Sealed};
use rampart_store::{NewUpstreamCredential, Store, StoreError, UpstreamCredential};
use uuid::Uuid;

use crate::secret::Secret;

/// The current upstream `x-api-key`, cheap to read from every thread. See the module docs.
#[derive(Debug)]
pub struct UpstreamKey {
    /// Tells cells apart in the thread-local copies.
    id: u64,
    /// Bumped after every change.
    generation: AtomicU64,
    current: RwLock<Option<HeaderValue>>,
}

/// `(cell id, generation, value)` as last read by this thread.
type Copies = RefCell<Vec<(u64, u64, Option<HeaderValue>)>>;

thread_local! {
    static COPIES: Copies = const { RefCell::new(Vec::new()) };
}

impl UpstreamKey {
    /// A cell without a key (requests fail until one is set).
    #[must_use]
    pub fn empty() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            current: RwLock::new(None),
        }
    }

    /// A cell holding `key`.
    ///
    /// # Errors
    /// When the key has characters a header value may not carry.
    pub fn fixed(key: &Secret) -> Result<Self, String> {
        let cell = Self::empty();
        cell.set(Some(key))?;
        Ok(cell)
    }

    /// Replace the key (`None` removes it); every thread sees the change on its next request.
    ///
    /// # Errors
    /// When the key has characters a header value may not carry (the old key stays).
    pub fn set(&self, key: Option<&Secret>) -> Result<(), String> {
        let value = key.map(header_value).transpose()?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = value;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Whether a key is set.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The header value to send, or `None` when no key is set.
    #[must_use]
    pub fn header(&self) -> Option<HeaderValue> {
        let generation = self.generation.load(Ordering::Acquire);
        COPIES.with(|copies| {
            let mut copies = copies.borrow_mut();
            if let Some((_, seen, value)) = copies.iter().find(|(id, _, _)| *id == self.id)
                && *seen == generation
            {
                return value.clone();
            }
            // Read after the generation: at worst this copy is newer than its generation and
            // is read again on the next request.
            let value = self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            copies.retain(|(id, _, _)| *id != self.id);
            copies.push((self.id, generation, value.clone()));
            value
        })
    }
}

fn header_value(key: &Secret) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(key.expose().trim())
        .map_err(|_| "the upstream API key contains characters not allowed in a header")?;
    value.set_sensitive(true);
    Ok(value)
}

/// Why the stored upstream credential could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum StoredUpstreamError {
    /// No credential is stored, or none with the configured name.
    #[error("{}", match .name {
        Some(n) => format!("upstream.credential names `{n}`, but no upstream credential of that name is stored (see `rampart upstreams list`)"),
        None => "no upstream credential is stored: add one with `rampart upstreams add --name NAME` (or set RAMPART_UPSTREAM_API_KEY)".to_owned(),
    })]
    Missing {
        /// The configured name, if any.
        name: Option<String>,
    },
    /// The credential does not open with the loaded master keys.
    #[error(
        "upstream credential `{name}` (master key `{key_id}`) cannot be decrypted with RAMPART_MASTER_KEY: {source}"
    )]
    Decrypt {
        /// The credential's name.
        name: String,
        /// The master key id it is stored under.
        key_id: String,
        /// What failed.
        source: EnvelopeError,
    },
    /// The decrypted key cannot be sent as a header.
    #[error("upstream credential `{name}`: {why}")]
    Unusable {
        /// The credential's name.
        name: String,
        /// Why.
        why: String,
    },
    /// The store failed.
    #[error("cannot read upstream credentials: {0}")]
    Store(#[from] StoreError),
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The credential in use did not change.
    Unchanged,
    /// A credential was loaded (a new one, or the same one re-encrypted).
    Loaded {
        /// Its id.
        id: Uuid,
        /// Its name.
        name: String,
    },
}

/// What is in the cell now: the row it came from, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    id: Uuid,
    key_id: String,
    nonce: Vec<u8>,
}

/// The upstream key from the store's encrypted credentials. See the module docs.
#[derive(Debug)]
pub struct StoredUpstream {
    keys: Arc<MasterKeys>,
    name: Option<String>,
    key: Arc<UpstreamKey>,
    loaded: Mutex<Option<Loaded>>,
    /// Held for a whole refresh, so refreshes apply in the order they read.
    refreshing: tokio::sync::Mutex<()>,
}

impl StoredUpstream {
    /// Credentials opened with `keys`; the one named `name`, else the oldest.
    #[must_use]
    pub fn new(keys: Arc<MasterKeys>, name: Option<String>) -> Self {
        Self {
            keys,
            name,
            key: Arc::new(UpstreamKey::empty()),
            loaded: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The cell the proxy reads.
    #[must_use]
    pub fn key(&self) -> Arc<UpstreamKey> {
        self.key.clone()
    }

    /// The configured credential name (`None`: the oldest stored one).
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Re-read the credentials and load the chosen one if it changed.
    ///
    /// # Errors
    /// [`StoredUpstreamError::Missing`] when there is none (the key is removed), else the
    /// failure (the key in use stays).
    pub async fn refresh(&self, store: &Store) -> Result<Refreshed, StoredUpstreamError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let creds = store.list_upstream_credentials().await?;
        let chosen = match &self.name {
            Some(name) => creds.into_iter().find(|c| &c.name == name),
            None => creds.into_iter().min_by_key(|c| (c.created_at, c.id)),
        };
        let Some(cred) = chosen else {
            let had = self
                .loaded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .is_some();
            if had || self.key.is_set() {
                let _ = self.key.set(None);
            }
            return Err(StoredUpstreamError::Missing {
                name: self.name.clone(),
            });
        };
        let row = Loaded {
            id: cred.id,
            key_id: cred.key_id.clone(),
            nonce: cred.nonce.clone(),
        };
        if self
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            == Some(&row)
        {
            return Ok(Refreshed::Unchanged);
        }
        let secret = open(&self.keys, &cred)?;
        self.key
            .set(Some(&secret))
            .map_err(|why| StoredUpstreamError::Unusable {
                name: cred.name.clone(),
                why,
            })?;
        *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) = Some(row);
        Ok(Refreshed::Loaded {
            id: cred.id,
            name: cred.name,
        })
    }

    /// Refresh every `every` until `shutdown` resolves, logging changes and failures (once per
    /// change of state, never the key).
    pub async fn run_refresher(
        self: Arc<Self>,
        store: Store,
        every: std::time::Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut ticks = crate::store_plane::Ticks::new(every, true, shutdown);
        let mut last_error: Option<String> = None;
        while ticks.next().await {
            match self.refresh(&store).await {
                Ok(outcome) => {
                    if let Refreshed::Loaded { id, name } = &outcome {
                        tracing::info!(credential = %name, %id, "upstream credential loaded from the store");
                    } else if last_error.is_some() {
                        tracing::info!("upstream credential refresh recovered");
                    }
                    last_error = None;
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        if self.key.is_set() {
                            tracing::error!(error = %text, "upstream credential refresh failed; the key in use stays");
                        } else {
                            tracing::error!(error = %text, "no upstream credential: requests fail until one is stored");
                        }
                        last_error = Some(text);
                    }
                }
            }
        }
    }
}

/// A new stored credential: `key` sealed under the current master key, bound to `name`.
///
/// # Errors
/// [`EnvelopeError::Seal`] (not expected in practice).
pub fn seal(
    keys: &MasterKeys,
    name: &str,
    key: &Secret,
) -> Result<NewUpstreamCredential, EnvelopeError> {
    let sealed = keys.seal(
        key.expose().as_bytes(),
        &rampart_store::upstream_credential_aad(name),
    )?;
    Ok(NewUpstreamCredential {
        name: name.to_owned(),
        ciphertext: sealed.ciphertext,
        nonce: sealed.nonce.to_vec(),
        key_id: sealed.key_id,
    })
}

/// Decrypt a stored credential.
///
/// # Errors
/// [`StoredUpstreamError::Decrypt`] for a wrong or missing master key, a tampered row or one
/// moved from another name.
pub fn open(keys: &MasterKeys, cred: &UpstreamCredential) -> Result<Secret, StoredUpstreamError> {
    let failed = |source| StoredUpstreamError::Decrypt {
        name: cred.name.clone(),
        key_id: cred.key_id.clone(),
        source,
    };
    let nonce =
        <[u8; 12]>::try_from(cred.nonce.as_slice()).map_err(|_| failed(EnvelopeError::Open))?;
    let sealed = Sealed {
        key_id: cred.key_id.clone(),
        nonce,
        ciphertext: cred.ciphertext.clone(),
    };
    keys.open(&sealed, &rampart_store::upstream_credential_aad(&cred.name))
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_sees_a_change_on_its_next_read() {
        let cell = Arc::new(UpstreamKey::fixed(&Secret::new("sk-ant-one".into())).unwrap());
        assert_eq!(cell.header().unwrap(), "sk-ant-one");
        assert!(cell.header().unwrap().is_sensitive());
        let other = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.header())
        };
        assert_eq!(other.join().unwrap().unwrap(), "sk-ant-one");
        cell.set(Some(&Secret::new("sk-ant-two".into()))).unwrap();
        assert_eq!(cell.header().unwrap(), "sk-ant-two");
        let other = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.header())
        };
        assert_eq!(other.join().unwrap().unwrap(), "sk-ant-two");
        cell.set(None).unwrap();
        assert!(cell.header().is_none() && !cell.is_set());
    }

    #[test]
    fn cells_do_not_share_copies_and_bad_values_are_refused() {
        let a = UpstreamKey::fixed(&Secret::new("sk-a".into())).unwrap();
        let b = UpstreamKey::fixed(&Secret::new("sk-b".into())).unwrap();
        assert_eq!(
            (a.header().unwrap(), b.header().unwrap()),
            ("sk-a".parse().unwrap(), "sk-b".parse().unwrap())
        );
        assert!(a.set(Some(&Secret::new("bad\nvalue".into()))).is_err());
        assert_eq!(a.header().unwrap(), "sk-a");
        assert!(UpstreamKey::empty().header().is_none());
    }
}
