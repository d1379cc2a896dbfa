//! [`Client`] and [`ClientBuilder`]: where requests go, with which key, timeouts and retries.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use rampart_crypto::Secret;

use crate::batches::Batches;
use crate::error::Error;
use crate::messages::Messages;
use crate::models::Models;
use crate::retry::{Backoff, DEFAULT_MAX_RETRIES};
use crate::transport::{Hyper, Transport};

/// The API's address, used when neither the builder nor `ANTHROPIC_BASE_URL` names one.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Per-attempt timeout (10 minutes, as the SDKs).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// TCP (and TLS) connect timeout (5 s, as the SDKs).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures a [`Client`].
///
/// Explicit settings win over the environment, which wins over the defaults.
#[derive(Debug, Default)]
pub struct ClientBuilder {
    base_url: Option<String>,
    api_key: Option<Secret>,
    from_env: bool,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    max_retries: Option<u32>,
    backoff: Option<Backoff>,
    headers: Vec<(String, String)>,
    transport: Option<Arc<dyn Transport>>,
}

impl ClientBuilder {
    /// Where to send requests, e.g. `http://127.0.0.1:8080` for a local Rampart; a path prefix is
    /// kept (`https://host/anthropic` → `https://host/anthropic/v1/messages`).
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The API key, sent as `x-api-key` (and marked sensitive, so HTTP/2 never indexes it).
    #[must_use]
    pub fn api_key(mut self, key: Secret) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Take the base URL and the API key from `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY` when
    /// they are not set on the builder (empty values count as unset).
    #[must_use]
    pub const fn from_env(mut self) -> Self {
        self.from_env = true;
        self
    }

    /// Timeout of each attempt: until the whole body has arrived for a JSON response, until the
    /// headers for a stream (and then the longest wait between two pieces of it). Default 10
    /// minutes; sent as `x-stainless-timeout` so a gateway can stop when the client gives up.
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Connect timeout (default 5 s).
    #[must_use]
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Retries after the first attempt (default 2; 0 disables retries).
    #[must_use]
    pub const fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// The backoff's first delay and cap (default 0.5 s and 8 s, as the SDKs).
    #[must_use]
    pub const fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Some(Backoff { initial, max });
        self
    }

    /// A header sent with every request (e.g. `anthropic-beta`); repeat to send several values.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    #[cfg(test)]
    pub(crate) fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when there is no API key, the base URL is not an `http(s)` URL
    /// without credentials, query or fragment, a header is invalid, or an `https` base URL finds
    /// no usable CA certificates on the machine.
    pub fn build(self) -> Result<Client, Error> {
        self.build_with_env(|name| std::env::var(name).ok())
    }

    fn build_with_env(self, env: impl Fn(&str) -> Option<String>) -> Result<Client, Error> {
        let env = |name: &str| {
            if self.from_env {
                env(name).filter(|v| !v.trim().is_empty())
            } else {
                None
            }
        };
        let base_url = self
            .base_url
            .clone()
            .or_else(|| env("ANTHROPIC_BASE_URL"))
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let (base, https) = parse_base_url(&base_url)?;
        let key = self
            .api_key
            .clone()
            .or_else(|| env("ANTHROPIC_API_KEY").map(Secret::new))
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "no API key: pass one to ClientBuilder::api_key or set ANTHROPIC_API_KEY"
                        .into(),
                )
            })?;
        let mut api_key = HeaderValue::from_str(key.expose()).map_err(|_| {
            Error::InvalidArgument("the API key is not a valid HTTP header value".into())
        })?;
        api_key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let (name, value) = header(name, value)?;
            headers.append(name, value);
        }
        let transport = match self.transport {
            Some(t) => t,
            None => Arc::new(Hyper::new(
                self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                https,
            )?),
        };
        Ok(Client {
            shared: Arc::new(Shared {
                transport,
                base,
                api_key,
            }),
            options: Options {
                timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
                timeout_overridden: self.timeout.is_some(),
                max_retries: self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
                backoff: self.backoff.unwrap_or_default(),
                headers,
            },
        })
    }
}

/// What every copy of a client shares: the connection pool, the address and the key.
pub(crate) struct Shared {
    pub(crate) transport: Arc<dyn Transport>,
    /// `scheme://authority[/prefix]`, no trailing slash.
    pub(crate) base: String,
    pub(crate) api_key: HeaderValue,
}

/// Per-copy settings ([`Client::with_timeout`] and friends change a copy only).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) timeout: Duration,
    pub(crate) timeout_overridden: bool,
    pub(crate) max_retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) headers: HeaderMap,
}

/// A client for the Messages API (Anthropic's, or Rampart's in front of it).
///
/// Cheap to clone: copies share one connection pool. Build one per process and clone it.
///
/// ```no_run
/// # async fn run() -> Result<(), rampart_client::Error> {
/// use rampart_client::types::{MessageCreateParams, MessageParam};
///
/// let client = rampart_client::Client::from_env()?; // ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY
/// let params = MessageCreateParams::new("claude-sonnet-4-6", 256, vec![MessageParam::user("Hello")]);
/// let message = client.messages().create(&params).await?;
/// println!("{} (request {:?})", message.text(), message.request_id());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    pub(crate) options: Options,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.shared.base)
            .field("api_key", &"[REDACTED]")
            .field("timeout", &self.options.timeout)
            .field("max_retries", &self.options.max_retries)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder with nothing set.
    #[must_use]
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client configured from `ANTHROPIC_BASE_URL` (default [`DEFAULT_BASE_URL`]) and
    /// `ANTHROPIC_API_KEY`.
    ///
    /// # Errors
    /// As [`ClientBuilder::build`].
    pub fn from_env() -> Result<Self, Error> {
        ClientBuilder::default().from_env().build()
    }

    /// The base URL requests go to.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.shared.base
    }

    /// A copy with another per-attempt timeout (same connection pool).
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        c.options.timeout = timeout;
        c.options.timeout_overridden = true;
        c
    }

    /// A copy with another retry limit.
    #[must_use]
    pub fn with_max_retries(&self, retries: u32) -> Self {
        let mut c = self.clone();
        c.options.max_retries = retries;
        c
    }

    /// A copy that also sends `name: value` (replacing that header's earlier values).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid name or value.
    pub fn with_header(&self, name: &str, value: &str) -> Result<Self, Error> {
        let (name, value) = header(name, value)?;
        let mut c = self.clone();
        c.options.headers.insert(name, value);
        Ok(c)
    }

    /// `/v1/messages`: create, stream, count tokens, batches.
    #[must_use]
    pub const fn messages(&self) -> Messages<'_> {
        Messages::new(self)
    }

    /// `/v1/messages/batches` (also [`Messages::batches`]).
    #[must_use]
    pub const fn batches(&self) -> Batches<'_> {
        Batches::new(self)
    }

    /// `/v1/models`.
    #[must_use]
    pub const fn models(&self) -> Models<'_> {
        Models::new(self)
    }
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("invalid header name {name:?}")))?;
    let v = HeaderValue::from_str(value)
        .map_err(|_| Error::InvalidArgument(format!("invalid value for header {n}")))?;
    Ok((n, v))
}

/// `scheme://authority[/prefix]` without a trailing slash, and whether it is https.
fn parse_base_url(url: &str) -> Result<(String, bool), Error> {
    let bad = |why: &str| Error::InvalidArgument(format!("base URL {url:?}: {why}"));
    let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "must not carry credentials; pass the API key separately",
        ));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    let prefix = uri.path().trim_end_matches('/');
    let scheme = if https { "https" } else { "http" };
    Ok((format!("{scheme}://{authority}{prefix}"), https))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn explicit_settings_win_over_the_environment_which_wins_over_defaults() {
        let env = env_of(&[
            ("ANTHROPIC_BASE_URL", "http://env:1"),
            ("ANTHROPIC_API_KEY", "sk-env"),
        ]);
        let c = Client::builder().from_env().build_with_env(&env).unwrap();
        assert_eq!(c.base_url(), "http://env:1");
        assert_eq!(c.shared.api_key, "sk-env");
        let c = Client::builder()
            .from_env()
            .base_url("http://arg:2/")
            .api_key(Secret::new("sk-arg".into()))
            .build_with_env(&env)
            .unwrap();
        assert_eq!(
            (c.base_url(), c.shared.api_key.to_str().unwrap()),
            ("http://arg:2", "sk-arg")
        );
        // Without from_env the environment is not read.
        let err = Client::builder().build_with_env(&env).unwrap_err();
        assert!(err.to_string().contains("no API key"), "{err}");
        let c = Client::builder()
            .api_key(Secret::new("k".into()))
            .build_with_env(env_of(&[("ANTHROPIC_BASE_URL", "  ")]))
            .unwrap();
        assert_eq!(c.base_url(), DEFAULT_BASE_URL);
    }

    #[test]
    fn base_urls_are_checked_and_keep_their_prefix() {
        for (url, want) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            (
                "https://gw.example/anthropic/",
                "https://gw.example/anthropic",
            ),
        ] {
            assert_eq!(parse_base_url(url).unwrap().0, want);
        }
        for (url, why) in [
            ("ftp://x", "http:// or https://"),
            ("127.0.0.1:8080", "http:// or https://"),
            ("http://user:pw@host", "credentials"),
            ("http://host/?a=1", "query"),
            ("http://host/#f", "fragment"),
            ("not a url", "not a URL"),
        ] {
            let e = parse_base_url(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn the_key_never_prints() {
        let c = Client::builder()
            .base_url("http://127.0.0.1:1")
            .api_key(Secret::new("sk-ant-very-secret".into()))
            .build()
            .unwrap();
        let shown = format!("{c:?} {:?}", c.shared.api_key);
        assert!(!shown.contains("very-secret"), "{shown}");
        let builder = format!(
            "{:?}",
            Client::builder().api_key(Secret::new("sk-ant-very-secret".into()))
        );
        assert!(!builder.contains("very-secret"), "{builder}");
        let bad = Client::builder()
            .base_url("http://127.0.0.1:1")
            .api_key(Secret::new("sk-ant-bad\nkey".into()))
            .build()
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("sk-ant"), "{bad}");
    }

    #[test]
    fn copies_change_their_own_options_only() {
        let c = Client::builder()
            .base_url("http://127.0.0.1:1")
            .api_key(Secret::new("k".into()))
            .header("anthropic-beta", "a")
            .build()
            .unwrap();
        let d = c
            .with_timeout(Duration::from_secs(3))
            .with_max_retries(0)
            .with_header("anthropic-beta", "b")
            .unwrap();
        assert_eq!(
            (c.options.timeout, c.options.max_retries),
            (DEFAULT_TIMEOUT, 2)
        );
        assert_eq!(
            (d.options.timeout, d.options.max_retries),
            (Duration::from_secs(3), 0)
        );
        assert!(d.options.timeout_overridden && !c.options.timeout_overridden);
        assert_eq!(c.options.headers["anthropic-beta"], "a");
        assert_eq!(d.options.headers["anthropic-beta"], "b");
        assert!(Arc::ptr_eq(&c.shared, &d.shared));
        assert!(c.with_header("bad name", "x").is_err());
    }
}
