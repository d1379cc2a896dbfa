//! Which webhook URLs are allowed: `https://` (or `http://` to a loopback host when
//! `allow_http_loopback` is set), no credentials in the URL, and no target address on a
//! loopback, private, link-local, shared, multicast or unspecified network unless
//! `allow_private_networks` is set — checked for IP literals at once and for host names on every
//! resolution (the dispatcher's resolver drops refused addresses, so DNS rebinding does not help).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The URL and address rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `http://` to loopback hosts (and loopback addresses) allowed.
    pub allow_http_loopback: bool,
    /// Non-public addresses allowed.
    pub allow_private_networks: bool,
}

/// A checked URL's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URI to request.
    pub uri: http::Uri,
    /// The host, without brackets.
    pub host: String,
    /// `https`.
    pub https: bool,
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why an address may not be a target, or `None` when it may (public).
#[must_use]
pub fn check_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => check_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return check_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if v6 == Ipv6Addr::UNSPECIFIED {
                Some("the unspecified address")
            } else {
                None
            }
        }
    }
}

fn check_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives there)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("the unspecified address")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("a broadcast or multicast address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if o[0] >= 240 {
        Some("a reserved address")
    } else {
        None
    }
}

impl UrlPolicy {
    /// Whether the dispatcher may connect to `ip`.
    ///
    /// # Errors
    /// Why not.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private_networks {
            return Ok(());
        }
        match check_ip(ip) {
            None => Ok(()),
            Some(_) if self.allow_http_loopback && ip.is_loopback() => Ok(()),
            Some(why) => Err(format!(
                "{ip} is {why}; webhooks may not target it (set webhooks.allow_private_networks to allow)"
            )),
        }
    }

    /// Checks a webhook URL: scheme, no credentials, a host, and an IP-literal host's address.
    /// Host names are checked when resolved.
    ///
    /// # Errors
    /// A message saying what is wrong, for the admin API's answer.
    pub fn check_url(&self, url: &str) -> Result<Target, String> {
        if url.len() > 2048 {
            return Err("url: at most 2048 characters".to_owned());
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|_| "url: not a valid absolute URL".to_owned())?;
        let Some(authority) = uri.authority() else {
            return Err("url: must be absolute (https://host/path)".to_owned());
        };
        if authority.as_str().contains('@') {
            return Err("url: must not contain credentials".to_owned());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("url: has no host".to_owned());
        }
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_http_loopback && is_loopback_host(&host) => false,
            Some("http") => {
                return Err(
                    "url: must be https (http is allowed only to a loopback host with webhooks.allow_http_loopback)"
                        .to_owned(),
                );
            }
            _ => return Err("url: must be an https URL".to_owned()),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_addr(ip).map_err(|e| format!("url: {e}"))?;
        } else if host.eq_ignore_ascii_case("localhost") && !self.allow_http_loopback {
            self.check_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .map_err(|e| format!("url: {e}"))?;
        }
        Ok(Target { uri, host, https })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_public_urls_pass() {
        let p = UrlPolicy::default();
        let t = p.check_url("https://hooks.example.com/rampart?x=1");
        assert!(t.is_ok_and(|t| t.https && t.host == "hooks.example.com"));
        assert!(p.check_url("https://93.184.216.34/hook").is_ok());
    }

    #[test]
    fn refuses_plain_http_credentials_and_private_targets() {
        let p = UrlPolicy::default();
        for (url, why) in [
            ("http://hooks.example.com/", "must be https"),
            ("ftp://hooks.example.com/", "must be an https URL"),
            ("https://user:pw@hooks.example.com/", "credentials"),
            ("https://127.0.0.1/", "loopback"),
            ("https://localhost/", "loopback"),
            ("https://10.1.2.3/", "private"),
            ("https://192.168.0.1/", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://[::1]/", "loopback"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[fd00::1]/", "unique local"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            ("https://100.64.0.1/", "carrier-grade"),
            ("https://0.0.0.0/", "unspecified"),
            ("/relative", "absolute"),
            ("http://127.0.0.1:8080/", "must be https"),
        ] {
            match p.check_url(url) {
                Ok(_) => panic!("{url} passed"),
                Err(e) => assert!(e.contains(why), "{url}: {e}"),
            }
        }
    }

    #[test]
    fn flags_open_loopback_http_and_private_networks() {
        let loopback = UrlPolicy {
            allow_http_loopback: true,
            allow_private_networks: false,
        };
        assert!(loopback.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(loopback.check_url("http://localhost:8080/hook").is_ok());
        assert!(loopback.check_url("http://[::1]:8080/hook").is_ok());
        assert!(loopback.check_url("http://10.0.0.1/hook").is_err());
        assert!(loopback.check_url("https://10.0.0.1/hook").is_err());
        let private = UrlPolicy {
            allow_http_loopback: false,
            allow_private_networks: true,
        };
        assert!(private.check_url("https://10.0.0.1/hook").is_ok());
        assert!(private.check_url("http://10.0.0.1/hook").is_err());
    }
}
