//! Unique ids in the API's formats: `req_011C…`, `msg_01…`, `toolu_01…`, `msgbatch_01…`.
//!
//! Ids are unique within a process (a counter mixed with a start-up seed), not cryptographically random.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        splitmix64(nanos ^ u64::from(std::process::id()).rotate_left(32))
    })
}

/// The splitmix64 finaliser: a fast, well-mixed bijection on `u64`.
pub(crate) const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn with_suffix(prefix: &str, len: usize) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut a = splitmix64(seed() ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
    let mut b = splitmix64(a ^ n);
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    for i in 0..len {
        let src = if i % 2 == 0 { &mut a } else { &mut b };
        out.push(char::from(ALPHABET[(*src % 58) as usize]));
        *src /= 58;
        if *src == 0 {
            *src = splitmix64(n.wrapping_add(i as u64) ^ seed());
        }
    }
    out
}

/// A `request-id` value, e.g. `req_011CZxLhDCoWDPfTJaeGeagn`.
pub(crate) fn request_id() -> String {
    with_suffix("req_011C", 20)
}

/// A message id, e.g. `msg_01XFDUDYJgAACzvnptvVoYEL`.
pub(crate) fn message_id() -> String {
    with_suffix("msg_01", 22)
}

/// A tool-use id, e.g. `toolu_01A09q90qw90lq917835lq9`.
pub(crate) fn tool_use_id() -> String {
    with_suffix("toolu_01", 22)
}

/// A batch id, e.g. `msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d`.
pub(crate) fn batch_id() -> String {
    with_suffix("msgbatch_01", 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_api_prefixes_and_are_unique() {
        let a = request_id();
        let b = request_id();
        assert!(a.starts_with("req_011C") && a.len() == 28, "{a}");
        assert_ne!(a, b);
        assert!(message_id().starts_with("msg_01"));
        assert!(tool_use_id().starts_with("toolu_01"));
        assert!(batch_id().starts_with("msgbatch_01"));
    }
}
