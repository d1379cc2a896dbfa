//! [`Secret`]: a string that never prints, never serialises, and is zeroed on drop.

use secrecy::{ExposeSecret, SecretString};

/// A secret value (API key, password, token). `Debug` shows `Secret([REDACTED])`; there is no
/// `Display` or `Serialize`. Read it with [`Secret::expose`] only where it is used.
pub struct Secret(SecretString);

impl Secret {
    /// Wrap a value.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    /// The value, for the one place that needs it.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Self::new(self.expose().to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("sk-ant-very-secret".to_owned());
        assert_eq!(format!("{s:?}"), "Secret([REDACTED])");
        assert_eq!(s.clone().expose(), "sk-ant-very-secret");
    }
}
