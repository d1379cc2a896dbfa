//! A bounded, incremental SSE scanner that reads usage from a Messages stream on the side.
//!
//! The proxy sends the upstream bytes to the client untouched; a copy of each chunk is fed to
//! [`UsageScanner::feed`], which keeps only the current line (capped) and the `data:` of the few
//! events it cares about: `message_start`, `message_delta` and `error`. Content deltas are
//! counted, and the length of the text they carry measured (for a stream cut before its final
//! usage), in place when the event is whole in a chunk (as the proxy's chunks are).

use serde::Deserialize;

/// Longest line kept; longer lines (e.g. a huge text delta) are skipped, never buffered whole.
const MAX_LINE: usize = 1 << 20;

/// Usage and outcome of one response, from a JSON body or an SSE stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageSummary {
    /// Model that served the request.
    pub model: Option<String>,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens (cumulative, final).
    pub output_tokens: u64,
    /// Cache writes.
    pub cache_creation_input_tokens: u64,
    /// Cache reads.
    pub cache_read_input_tokens: u64,
    /// Cache writes with the 5-minute TTL (`cache_creation.ephemeral_5m_input_tokens`), when
    /// reported.
    pub cache_creation_5m: Option<u64>,
    /// Cache writes with the 1-hour TTL (`cache_creation.ephemeral_1h_input_tokens`), when
    /// reported.
    pub cache_creation_1h: Option<u64>,
    /// Final stop reason.
    pub stop_reason: Option<String>,
    /// In-band error type, when the stream carried `event: error`.
    pub stream_error: Option<String>,
    /// Whether `message_stop` was seen.
    pub completed: bool,
}

#[derive(Deserialize, Default)]
struct UsageFields {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<CacheCreationFields>,
}

#[derive(Deserialize, Default)]
struct CacheCreationFields {
    #[serde(default)]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct MessageFields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<UsageFields>,
}

#[derive(Deserialize)]
struct StartEvent {
    message: MessageFields,
}

#[derive(Deserialize)]
struct DeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaEvent {
    #[serde(default)]
    delta: Option<DeltaBody>,
    #[serde(default)]
    usage: Option<UsageFields>,
}

#[derive(Deserialize)]
struct ErrorInner {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct ErrorEvent {
    error: ErrorInner,
}

impl UsageSummary {
    /// The token counts as the price table takes them, cache writes split by TTL when the
    /// upstream reported the split.
    #[must_use]
    pub fn tokens(&self) -> rampart_ledger::pricing::TokenUsage {
        rampart_ledger::pricing::TokenUsage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens,
            cache_read_input_tokens: self.cache_read_input_tokens,
            cache_creation_5m: self.cache_creation_5m,
            cache_creation_1h: self.cache_creation_1h,
        }
    }

    fn apply_usage(&mut self, u: &UsageFields) {
        if let Some(v) = u.input_tokens {
            self.input_tokens = v;
        }
        if let Some(v) = u.output_tokens {
            self.output_tokens = v;
        }
        if let Some(v) = u.cache_creation_input_tokens {
            self.cache_creation_input_tokens = v;
        }
        if let Some(v) = u.cache_read_input_tokens {
            self.cache_read_input_tokens = v;
        }
        if let Some(c) = &u.cache_creation {
            if let Some(v) = c.ephemeral_5m_input_tokens {
                self.cache_creation_5m = Some(v);
            }
            if let Some(v) = c.ephemeral_1h_input_tokens {
                self.cache_creation_1h = Some(v);
            }
        }
    }

    /// Usage from a complete non-streamed Messages response body.
    ///
    /// Walks the top-level object once: `model`, `stop_reason` and `usage` are decoded, every other
    /// value (the content, which is most of the body) is skipped with a byte scanner instead of a
    /// full JSON parse. A body it cannot walk falls back to serde.
    #[must_use]
    pub fn from_json(body: &[u8]) -> Option<Self> {
        fast_json::summary(body).or_else(|| Self::from_json_serde(body))
    }

    /// The error type of an error answer (status >= 400) relayed from the upstream: its
    /// envelope's `error.type` when the body is an [`rampart_api::ErrorEnvelope`] with a type
    /// the API uses, else the type `status` implies. Never a string of the upstream's own
    /// making. (An error path: read with serde, not the success path's fast reader.)
    #[must_use]
    pub fn error_type_of(status: u16, body: &[u8]) -> rampart_api::ErrorType {
        serde_json::from_slice::<rampart_api::ErrorEnvelope>(body).map_or_else(
            |_| rampart_api::ErrorType::from_status(status),
            |e| e.error.kind,
        )
    }

    fn from_json_serde(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok().map(Self::from_message)
    }

    /// The summary of a whole (non-streamed) message.
    fn from_message(m: MessageFields) -> Self {
        let mut s = Self {
            model: m.model,
            stop_reason: m.stop_reason,
            completed: true,
            ..Self::default()
        };
        if let Some(u) = &m.usage {
            s.apply_usage(u);
        }
        s
    }
}

/// A top-level walker for trusted upstream JSON: finds the value of each top-level key and skips
/// the rest by scanning bytes (strings with `memchr2`, containers by depth).
mod fast_json {
    use super::{
        CacheCreationFields, DeltaBody, DeltaEvent, MessageFields, UsageFields, UsageSummary,
    };

    /// Index of the first byte at or after `b[i]` that is not JSON whitespace (every byte that
    /// starts or ends a token is above `b' '`, so that one comparison settles the usual case).
    #[inline(always)]
    fn ws(b: &[u8], mut i: usize) -> usize {
        while let Some(&c) = b.get(i) {
            if c > b' ' || !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            i += 1;
        }
        i
    }

    /// Index just past `c` at `b[i]` or after whitespace there; `None` when something else is.
    #[inline(always)]
    fn after(b: &[u8], i: usize, c: u8) -> Option<usize> {
        if b.get(i) == Some(&c) {
            return Some(i + 1);
        }
        let i = ws(b, i);
        (b.get(i) == Some(&c)).then_some(i + 1)
    }

    /// Index just past the string starting at `b[i] == b'"'`.
    ///
    /// The first [`SHORT`] bytes are searched eight at a time in a register: most strings here
    /// (keys, ids, model names) end there, and a call to `memchr2` costs more than searching
    /// them. Longer strings (the content) go on with `memchr2`.
    fn skip_string(b: &[u8], i: usize) -> Option<usize> {
        scan_string(b, i).map(|(end, _)| end)
    }

    /// [`skip_string`], and whether the string has an escape (a backslash) in it.
    #[inline(always)]
    fn scan_string(b: &[u8], i: usize) -> Option<(usize, bool)> {
        const SHORT: usize = 32;
        let mut escaped = false;
        let mut j = i + 1;
        let short_end = j + SHORT;
        while j < short_end
            && let Some(word) = b.get(j..j + 8)
        {
            let word = u64::from_le_bytes(word.try_into().ok()?);
            let hits = has_byte(word, b'"') | has_byte(word, b'\\');
            if hits == 0 {
                j += 8;
                continue;
            }
            // The lowest flagged byte is the first quote or backslash (flags above a hit can
            // be false, the lowest never is).
            let k = j + (hits.trailing_zeros() / 8) as usize;
            if b[k] == b'"' {
                return Some((k + 1, escaped));
            }
            escaped = true;
            j = k + 2;
        }
        loop {
            j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
            if b[j] == b'\\' {
                escaped = true;
                j += 2;
            } else {
                return Some((j + 1, escaped));
            }
        }
    }

    /// A word with the high bit set in each byte of `word` equal to `c`, at least in the lowest
    /// such byte (the bytes above a match may be flagged falsely).
    fn has_byte(word: u64, c: u8) -> u64 {
        const ONES: u64 = 0x0101_0101_0101_0101;
        let x = word ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & (ONES << 7)
    }

    /// Index of the first quote, `open` or `close` at or after `b[j]`: the next few bytes one by
    /// one (in a container the next string or bracket is usually near), then `memchr3`.
    #[inline(always)]
    fn find3(b: &[u8], j: usize, open: u8, close: u8) -> Option<usize> {
        let near = b.get(j..)?;
        for (k, &c) in near.iter().take(16).enumerate() {
            if c == b'"' || c == open || c == close {
                return Some(j + k);
            }
        }
        let from = j + 16.min(near.len());
        Some(from + memchr::memchr3(b'"', open, close, b.get(from..)?)?)
    }

    /// Index just past the value starting at `b[i]`.
    fn skip_value(b: &[u8], i: usize) -> Option<usize> {
        match *b.get(i)? {
            b'"' => skip_string(b, i),
            open @ (b'{' | b'[') => {
                // Only this container's own brackets and strings matter for finding its end.
                let close = if open == b'{' { b'}' } else { b']' };
                let mut depth = 0usize;
                let mut j = i;
                loop {
                    j = find3(b, j, open, close)?;
                    match b[j] {
                        b'"' => {
                            j = skip_string(b, j)?;
                            continue;
                        }
                        c if c == open => depth += 1,
                        _ => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                    }
                    j += 1;
                }
            }
            _ => {
                let mut j = i;
                while j < b.len() && !ends_bare(b[j]) {
                    j += 1;
                }
                Some(j)
            }
        }
    }

    /// What a member's reader did with it.
    enum Member {
        /// Read; the index just past its value.
        Read(usize),
        /// Not a member it reads: the walk steps over it.
        Skip,
    }

    /// If the key whose opening quote is at `b[k]` is `name` (byte for byte), the index where its
    /// value starts. A known name is compared in place, so the keys a reader wants are never
    /// scanned for their end first.
    #[inline(always)]
    fn key(b: &[u8], k: usize, name: &[u8]) -> Option<usize> {
        let rest = b.get(k + 1..)?;
        if rest.len() > name.len() && rest.starts_with(name) && rest[name.len()] == b'"' {
            Some(ws(b, after(b, k + 2 + name.len(), b':')?))
        } else {
            None
        }
    }

    /// Calls `f(b, k)` for each member of the object starting at `b[i]`, where the member's
    /// key's opening quote is at `b[k]`: `f` reads the members it knows by [`key`] and returns
    /// [`Member::Read`] with the index just past the value, or [`Member::Skip`] for the walk to
    /// step over the member. Returns the index just past the object, or `None` when the bytes
    /// are not an object it can walk.
    fn walk_object(
        b: &[u8],
        i: usize,
        mut f: impl FnMut(&[u8], usize) -> Option<Member>,
    ) -> Option<usize> {
        let mut i = ws(b, i);
        if b.get(i) != Some(&b'{') {
            return None;
        }
        i = ws(b, i + 1);
        if b.get(i) == Some(&b'}') {
            return Some(i + 1);
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let end = match f(b, i)? {
                Member::Read(end) => end,
                Member::Skip => {
                    let key_end = skip_string(b, i)?;
                    skip_value(b, ws(b, after(b, key_end, b':')?))?
                }
            };
            let (c, e) = match b.get(end) {
                Some(&c) if c > b' ' => (c, end),
                _ => {
                    let e = ws(b, end);
                    (*b.get(e)?, e)
                }
            };
            match c {
                b',' => i = ws(b, e + 1),
                b'}' => return Some(e + 1),
                _ => return None,
            }
        }
    }

    /// The value at `b[i]` read by `read` from its raw bytes; the index just past it.
    fn scalar<T>(b: &[u8], i: usize, read: impl FnOnce(&[u8]) -> Option<T>) -> Option<(T, usize)> {
        let end = skip_value(b, i)?;
        Some((read(&b[i..end])?, end))
    }

    /// Whether the value at `b[i]` is `null` (and not some other bare word starting so).
    fn is_null(b: &[u8], i: usize) -> bool {
        b.get(i..i + 4) == Some(b"null") && skip_value(b, i) == Some(i + 4)
    }

    /// The string or null at `b[i]` (plain strings are sliced, escaped ones decoded by serde);
    /// the index just past it.
    fn string_at(b: &[u8], i: usize) -> Option<(Option<String>, usize)> {
        if b.get(i) != Some(&b'"') {
            return is_null(b, i).then_some((None, i + 4));
        }
        let (end, escaped) = scan_string(b, i)?;
        let s = if escaped {
            serde_json::from_slice::<String>(&b[i..end]).ok()?
        } else {
            std::str::from_utf8(&b[i + 1..end - 1]).ok()?.to_owned()
        };
        Some((Some(s), end))
    }

    /// [`scalar`]`(b, i, uint)` in one scan: the digits are read as they are stepped over.
    fn uint_at(b: &[u8], i: usize) -> Option<(Option<u64>, usize)> {
        let mut j = i;
        let mut n = 0u64;
        while let Some(d) = b.get(j).filter(|d| d.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            j += 1;
        }
        if j == i {
            // Not a digit: `null`, or anything else `uint` refuses.
            return scalar(b, i, uint);
        }
        let ends = b.get(j).is_none_or(|&c| ends_bare(c));
        (ends && j - i <= 19).then_some((Some(n), j))
    }

    /// Whether `c` ends a bare value (a number, `true`, `false`, `null`).
    fn ends_bare(c: u8) -> bool {
        matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
    }

    /// A non-negative integer, or null (as `None`).
    fn uint(raw: &[u8]) -> Option<Option<u64>> {
        if raw == b"null" {
            return Some(None);
        }
        if raw.is_empty() || raw.len() > 19 || !raw.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(Some(
            raw.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        ))
    }

    /// The `usage` object at `b[i]` (of a message or a `message_delta` event); the index just
    /// past it.
    fn usage_at(b: &[u8], i: usize) -> Option<(UsageFields, usize)> {
        let mut u = UsageFields::default();
        let end = walk_object(b, i, |b, k| {
            let (v, field) = if let Some(v) = key(b, k, b"input_tokens") {
                (v, &mut u.input_tokens)
            } else if let Some(v) = key(b, k, b"output_tokens") {
                (v, &mut u.output_tokens)
            } else if let Some(v) = key(b, k, b"cache_creation_input_tokens") {
                (v, &mut u.cache_creation_input_tokens)
            } else if let Some(v) = key(b, k, b"cache_read_input_tokens") {
                (v, &mut u.cache_read_input_tokens)
            } else if let Some(v) = key(b, k, b"cache_creation") {
                if is_null(b, v) {
                    return Some(Member::Read(v + 4));
                }
                let mut c = CacheCreationFields::default();
                let end = walk_object(b, v, |b, k| {
                    let (v, field) = if let Some(v) = key(b, k, b"ephemeral_5m_input_tokens") {
                        (v, &mut c.ephemeral_5m_input_tokens)
                    } else if let Some(v) = key(b, k, b"ephemeral_1h_input_tokens") {
                        (v, &mut c.ephemeral_1h_input_tokens)
                    } else {
                        return Some(Member::Skip);
                    };
                    let (n, end) = uint_at(b, v)?;
                    *field = n;
                    Some(Member::Read(end))
                })?;
                u.cache_creation = Some(c);
                return Some(Member::Read(end));
            } else {
                return Some(Member::Skip);
            };
            let (n, end) = uint_at(b, v)?;
            *field = n;
            Some(Member::Read(end))
        })?;
        Some((u, end))
    }

    /// A whole JSON value: the walk ended at the last byte but for whitespace.
    fn whole<T>(b: &[u8], end: usize, value: T) -> Option<T> {
        (ws(b, end) == b.len()).then_some(value)
    }

    /// The message object at `b[i]` (a response body, or a `message_start` event's `message`);
    /// the index just past it.
    fn message_at(b: &[u8], i: usize) -> Option<(MessageFields, usize)> {
        let mut m = MessageFields {
            model: None,
            stop_reason: None,
            usage: None,
        };
        let end = walk_object(b, i, |b, k| {
            if let Some(v) = key(b, k, b"model") {
                let (s, end) = string_at(b, v)?;
                m.model = s;
                Some(Member::Read(end))
            } else if let Some(v) = key(b, k, b"stop_reason") {
                let (s, end) = string_at(b, v)?;
                m.stop_reason = s;
                Some(Member::Read(end))
            } else if let Some(v) = key(b, k, b"usage") {
                if is_null(b, v) {
                    return Some(Member::Read(v + 4));
                }
                let (u, end) = usage_at(b, v)?;
                m.usage = Some(u);
                Some(Member::Read(end))
            } else {
                Some(Member::Skip)
            }
        })?;
        Some((m, end))
    }

    pub(super) fn summary(b: &[u8]) -> Option<UsageSummary> {
        let (m, end) = message_at(b, 0)?;
        whole(b, end, m).map(UsageSummary::from_message)
    }

    /// The data of a `message_start` event: its `message`.
    pub(super) fn start_event(b: &[u8]) -> Option<MessageFields> {
        let mut message_fields = None;
        let end = walk_object(b, 0, |b, k| {
            let Some(v) = key(b, k, b"message") else {
                return Some(Member::Skip);
            };
            let (m, end) = message_at(b, v)?;
            message_fields = Some(m);
            Some(Member::Read(end))
        })?;
        whole(b, end, message_fields?)
    }

    /// The data of a `message_delta` event.
    pub(super) fn delta_event(b: &[u8]) -> Option<DeltaEvent> {
        let mut ev = DeltaEvent {
            delta: None,
            usage: None,
        };
        let end = walk_object(b, 0, |b, k| {
            if let Some(v) = key(b, k, b"delta") {
                if is_null(b, v) {
                    return Some(Member::Read(v + 4));
                }
                let mut d = DeltaBody { stop_reason: None };
                let end = walk_object(b, v, |b, k| {
                    let Some(v) = key(b, k, b"stop_reason") else {
                        return Some(Member::Skip);
                    };
                    let (s, end) = string_at(b, v)?;
                    d.stop_reason = s;
                    Some(Member::Read(end))
                })?;
                ev.delta = Some(d);
                Some(Member::Read(end))
            } else if let Some(v) = key(b, k, b"usage") {
                if is_null(b, v) {
                    return Some(Member::Read(v + 4));
                }
                let (u, end) = usage_at(b, v)?;
                ev.usage = Some(u);
                Some(Member::Read(end))
            } else {
                Some(Member::Skip)
            }
        })?;
        whole(b, end, ev)
    }

    /// Characters of the text a `content_block_delta` event's data `b` carries: the string
    /// member `text` (a `text_delta`), `thinking` (a `thinking_delta`) or `partial_json` (an
    /// `input_json_delta`) of its `delta`; 0 for other deltas (a thinking block's `signature`, a
    /// citation) and for data it cannot walk. Walked like the other events (the rest skipped,
    /// nothing decoded or copied), the string measured by [`string_chars`].
    pub(super) fn content_delta_chars(b: &[u8]) -> u64 {
        let mut chars = 0;
        // What was measured counts even if the walk then fails (an estimate, not a check).
        let _ = walk_object(b, 0, |b, k| {
            let Some(v) = key(b, k, b"delta") else {
                return Some(Member::Skip);
            };
            let end = walk_object(b, v, |b, k| {
                let Some(v) = key(b, k, b"text")
                    .or_else(|| key(b, k, b"thinking"))
                    .or_else(|| key(b, k, b"partial_json"))
                else {
                    return Some(Member::Skip);
                };
                if b.get(v) != Some(&b'"') {
                    return Some(Member::Skip);
                }
                let (n, end) = string_chars(b, v)?;
                chars += n;
                Some(Member::Read(end))
            })?;
            Some(Member::Read(end))
        });
        chars
    }

    /// The characters of the string starting at `b[i] == b'"'`, counted on its JSON form
    /// without decoding it, and the index just past it.
    ///
    /// Every byte counts but UTF-8 continuation bytes (so a character is one, as the estimator
    /// counts Unicode scalar values); an escape counts as one character (`\n`, `\"`, `\u00e9`),
    /// so a character outside the BMP written as a `\uXXXX\uXXXX` surrogate pair counts two.
    fn string_chars(b: &[u8], i: usize) -> Option<(u64, usize)> {
        let (end, escaped) = scan_string(b, i)?;
        let s = b.get(i + 1..end - 1)?;
        let mut chars = s.iter().filter(|&&c| c & 0xC0 != 0x80).count() as u64;
        if escaped {
            // Each escape's bytes were counted one each: take back all but one.
            let mut j = 0;
            while let Some(at) = s.get(j..).and_then(|r| memchr::memchr(b'\\', r)) {
                let len: usize = if s.get(j + at + 1) == Some(&b'u') {
                    6
                } else {
                    2
                };
                chars = chars.saturating_sub(len as u64 - 1);
                j += at + len;
            }
        }
        Some((chars, end))
    }

    #[cfg(test)]
    mod tests {
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn uint_at_reads_what_scalar_uint_reads(
                b in proptest::collection::vec(
                    prop_oneof![
                        8 => b'0'..=b'9',
                        1 => proptest::sample::select(b",}] \n\r\t-.enul\"x".to_vec()),
                    ],
                    0..24,
                ),
            ) {
                prop_assert_eq!(super::uint_at(&b, 0), super::scalar(&b, 0, super::uint));
            }

            #[test]
            fn skip_string_finds_the_closing_quote_a_byte_walk_finds(
                b in proptest::collection::vec(
                    prop_oneof![
                        8 => b'a'..=b'z',
                        1 => Just(b'"'),
                        1 => Just(b'\\'),
                        1 => any::<u8>(),
                    ],
                    1..80,
                ),
            ) {
                let mut b = b;
                b[0] = b'"';
                // The reference: one byte at a time, a backslash escaping the next byte.
                let mut j = 1;
                let expected = loop {
                    match b.get(j) {
                        None => break None,
                        Some(b'"') => break Some(j + 1),
                        Some(b'\\') => j += 2,
                        Some(_) => j += 1,
                    }
                };
                prop_assert_eq!(super::skip_string(&b, 0), expected);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Start,
    /// A `content_block_delta` read line by line (one not whole in a chunk): its data is kept
    /// to measure its text.
    Content,
    Delta,
    Stop,
    Error,
}

/// Incremental scanner; feed it every chunk in order.
#[derive(Debug, Default)]
pub struct UsageScanner {
    line: Vec<u8>,
    skipping_line: bool,
    event: Option<Wanted>,
    event_named: bool,
    data: Vec<u8>,
    summary: UsageSummary,
    /// `content_block_delta` events seen: each carries output (at least a token).
    content_deltas: u64,
    /// Characters of the text those deltas carried ([`fast_json::content_delta_chars`]).
    delta_chars: u64,
    /// Bytes of the current event's data dropped for their length (a content delta past
    /// [`MAX_LINE`]), counted as characters.
    dropped_data: u64,
    /// A `message_delta` reported the final usage.
    final_usage: bool,
}

impl UsageScanner {
    /// A fresh scanner.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// What has been seen so far.
    #[must_use]
    pub fn summary(&self) -> &UsageSummary {
        &self.summary
    }

    /// Consume the scanner. A stream that ended before a `message_delta` reported its usage
    /// (cut by the upstream, or left by the client) counts the output it delivered, not only
    /// `message_start`'s count: the text of its content deltas (`text`, `thinking`,
    /// `partial_json`) by the input estimator's rule ([`rampart_api::tokens::chars_tokens`],
    /// `ceil(chars / 4)`), and at least one token per content delta. The scanner is fed what
    /// the proxy sends on, so for a client that left this is what was sent before it went.
    #[must_use]
    pub fn into_summary(self) -> UsageSummary {
        let mut summary = self.summary;
        if !self.final_usage {
            let delivered =
                rampart_api::tokens::chars_tokens(self.delta_chars).max(self.content_deltas);
            summary.output_tokens = summary.output_tokens.max(delivered);
        }
        summary
    }

    /// Feed the next chunk of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            // Between events, an unwanted event of the usual shape whole in this chunk (most of
            // a stream: the text deltas) is stepped over with one search for its end instead of
            // being read line by line.
            if self.between_events()
                && let Some(len) = unwanted_event_len(chunk)
            {
                if let Some(rest) = chunk[..len].strip_prefix(CONTENT_DELTA_EVENT) {
                    // `data:…\n\n`, measured in place. Empty data dispatches no event (as
                    // read line by line).
                    let data = &rest[b"data:".len()..rest.len() - 2];
                    let data = data.strip_prefix(b" ").unwrap_or(data);
                    if !data.is_empty() {
                        self.content_delta(data);
                    }
                }
                chunk = &chunk[len..];
                continue;
            }
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    self.push_line_part(&chunk[..i]);
                    self.end_line();
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.push_line_part(chunk);
                    break;
                }
            }
        }
    }

    /// At the start of a line with nothing of an event read yet.
    fn between_events(&self) -> bool {
        self.line.is_empty()
            && !self.skipping_line
            && !self.event_named
            && self.event.is_none()
            && self.data.is_empty()
    }

    /// A content delta whose data is `data` was delivered.
    fn content_delta(&mut self, data: &[u8]) {
        self.content_deltas += 1;
        self.delta_chars += fast_json::content_delta_chars(data);
    }

    /// `len` bytes of the current event's data dropped for their length: a content delta's
    /// are counted as characters.
    fn drop_data(&mut self, len: usize) {
        if self.event == Some(Wanted::Content) {
            self.dropped_data += len as u64;
        }
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.skipping_line {
            self.drop_data(part.len());
            return;
        }
        // The data of an event named but not wanted (pings, block starts and stops) is dropped
        // unseen instead of copied line by line.
        if self.line.is_empty()
            && self.event_named
            && self.event.is_none()
            && part.starts_with(b"data:")
        {
            self.skipping_line = true;
            return;
        }
        if self.line.len() + part.len() > MAX_LINE {
            // (Its data line, as a content delta's line this long is.)
            self.drop_data(self.line.len() + part.len());
            self.skipping_line = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self) {
        if self.skipping_line {
            self.skipping_line = false;
            self.line.clear();
            return;
        }
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            self.dispatch();
        } else if let Some(rest) = line.strip_prefix(b"event:") {
            self.event_named = true;
            self.event = match trim(rest) {
                b"message_start" => Some(Wanted::Start),
                b"content_block_delta" => Some(Wanted::Content),
                b"message_delta" => Some(Wanted::Delta),
                b"message_stop" => Some(Wanted::Stop),
                b"error" => Some(Wanted::Error),
                _ => None,
            };
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            // Without an `event:` line the type is only known from the data; keep it (bounded).
            if self.event.is_some() || !self.event_named {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                if self.data.len() + rest.len() <= MAX_LINE {
                    self.data
                        .extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
                } else {
                    self.drop_data(rest.len());
                }
            }
        }
        line.clear();
        self.line = line;
    }

    fn dispatch(&mut self) {
        let data = std::mem::take(&mut self.data);
        let event = self.event.take();
        let named = std::mem::replace(&mut self.event_named, false);
        let dropped = std::mem::take(&mut self.dropped_data);
        if data.is_empty() && dropped == 0 && event != Some(Wanted::Stop) {
            return;
        }
        let kind = match (event, named) {
            (Some(k), _) => Some(k),
            (None, true) => None,
            (None, false) => sniff_type(&data),
        };
        match kind {
            // The byte walker first (it skips the content), serde for what it cannot walk.
            Some(Wanted::Start) => {
                let message = fast_json::start_event(&data).or_else(|| {
                    serde_json::from_slice::<StartEvent>(&data)
                        .ok()
                        .map(|ev| ev.message)
                });
                if let Some(message) = message {
                    if message.model.is_some() {
                        self.summary.model = message.model;
                    }
                    if let Some(u) = &message.usage {
                        self.summary.apply_usage(u);
                    }
                }
            }
            Some(Wanted::Delta) => {
                let delta = fast_json::delta_event(&data)
                    .or_else(|| serde_json::from_slice::<DeltaEvent>(&data).ok());
                if let Some(ev) = delta {
                    if let Some(d) = ev.delta
                        && d.stop_reason.is_some()
                    {
                        self.summary.stop_reason = d.stop_reason;
                    }
                    if let Some(u) = &ev.usage {
                        self.final_usage |= u.output_tokens.is_some();
                        self.summary.apply_usage(u);
                    }
                }
            }
            Some(Wanted::Content) => {
                self.content_delta(&data);
                self.delta_chars += dropped;
            }
            Some(Wanted::Stop) => self.summary.completed = true,
            Some(Wanted::Error) => {
                self.summary.stream_error = Some(
                    serde_json::from_slice::<ErrorEvent>(&data)
                        .map(|e| e.error.kind)
                        .unwrap_or_else(|_| "unknown".to_owned()),
                );
            }
            None => {}
        }
        let mut data = data;
        data.clear();
        self.data = data;
    }
}

/// How a content delta event starts (as [`unwanted_event_len`] steps over it).
const CONTENT_DELTA_EVENT: &[u8] = b"event: content_block_delta\n";

/// The length of the event `b` starts with when it is `event: NAME\ndata: …\n\n`, whole, and
/// NAME is not one whose data the scanner reads: reading it line by line would change nothing
/// (the data line is skipped, the blank line dispatches nothing), but for a content delta, whose
/// data the caller then measures in place as [`UsageScanner::content_delta`] would after reading
/// it line by line. `None` for anything else, which is read line by line.
fn unwanted_event_len(b: &[u8]) -> Option<usize> {
    const PREFIX: &[u8] = b"event: ";
    let rest = b.strip_prefix(PREFIX)?;
    let name_len = memchr::memchr(b'\n', rest)?;
    let name = &rest[..name_len];
    // Read line by line, the name is trimmed; one that needs no trimming is compared as is.
    if name.first().is_none_or(u8::is_ascii_whitespace)
        || name.last().is_none_or(u8::is_ascii_whitespace)
        || matches!(
            name,
            b"message_start" | b"message_delta" | b"message_stop" | b"error"
        )
    {
        return None;
    }
    let data_at = PREFIX.len() + name_len + 1;
    let data = &b[data_at..];
    if !data.starts_with(b"data:") {
        return None;
    }
    let line_end = memchr::memchr(b'\n', data)?;
    (data.get(line_end + 1) == Some(&b'\n')).then_some(data_at + line_end + 2)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn sniff_type(data: &[u8]) -> Option<Wanted> {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    match serde_json::from_slice::<Typed<'_>>(data).ok()?.kind {
        "message_start" => Some(Wanted::Start),
        "content_block_delta" => Some(Wanted::Content),
        "message_delta" => Some(Wanted::Delta),
        "message_stop" => Some(Wanted::Stop),
        "error" => Some(Wanted::Error),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_text::object;
    use proptest::prelude::*;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":3,\"cache_creation\":{\"ephemeral_5m_input_tokens\":5,\"ephemeral_1h_input_tokens\":2},\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn expected() -> UsageSummary {
        UsageSummary {
            model: Some("claude-sonnet-4-5".into()),
            input_tokens: 25,
            output_tokens: 15,
            cache_creation_input_tokens: 7,
            cache_read_input_tokens: 3,
            cache_creation_5m: Some(5),
            cache_creation_1h: Some(2),
            stop_reason: Some("end_turn".into()),
            stream_error: None,
            completed: true,
        }
    }

    #[test]
    fn an_error_answer_has_its_envelopes_type_when_the_api_uses_it() {
        use rampart_api::{ErrorEnvelope, ErrorType};
        for t in ErrorType::ALL {
            let body = ErrorEnvelope::new(t, "m")
                .with_request_id("req_1")
                .to_json();
            // Whatever the status: the envelope says what the client was told.
            for status in [t.status(), 400, 500] {
                assert_eq!(
                    UsageSummary::error_type_of(status, &body),
                    t,
                    "{t} at {status}"
                );
            }
        }
        for (status, body, want) in [
            // Spaced, reordered, escaped: still an envelope.
            (
                429,
                &b" { \"error\" : { \"message\": \"a \\\"b\\\"\", \"type\" : \"overloaded_error\" } , \"type\": \"error\" }\n"[..],
                ErrorType::OverloadedError,
            ),
            (
                400,
                br#"{"type":"error","error":{"type":"rate\u005flimit_error","message":"x"}}"#,
                ErrorType::RateLimitError,
            ),
            // A type the API does not use: the status's.
            (
                429,
                br#"{"type":"error","error":{"type":"<script>alert(1)</script>","message":"x"}}"#,
                ErrorType::RateLimitError,
            ),
            (
                529,
                br#"{"type":"error","error":{"type":"Overloaded_Error"}}"#,
                ErrorType::OverloadedError,
            ),
            (400, br#"{"type":"error","error":{"type":null}}"#, ErrorType::InvalidRequestError),
            // Not an envelope at all: the status's.
            (503, b"<html><body>Service Unavailable</body></html>", ErrorType::ApiError),
            (502, b"", ErrorType::ApiError),
            (413, br#"{"error":{"type":"overloaded_error"}}"#, ErrorType::RequestTooLarge),
            (404, br#"{"type":"message","error":{"type":"overloaded_error"}}"#, ErrorType::NotFoundError),
            (429, br#"{"type":"error","error":"overloaded_error"}"#, ErrorType::RateLimitError),
            (400, br#"{"type":"error","error":{"type":"overloaded_error"}} x"#, ErrorType::InvalidRequestError),
            (400, br#"{"type":"error","error":{"type":"overloaded_error""#, ErrorType::InvalidRequestError),
            (599, br#"["error"]"#, ErrorType::ApiError),
        ] {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(UsageSummary::error_type_of(status, body), want, "{status} {shown}");
        }
    }

    #[test]
    fn reads_usage_from_start_and_final_delta() {
        let mut s = UsageScanner::new();
        s.feed(STREAM.as_bytes());
        assert_eq!(s.into_summary(), expected());
    }

    #[test]
    fn handles_crlf_line_endings() {
        let mut s = UsageScanner::new();
        s.feed(STREAM.replace('\n', "\r\n").as_bytes());
        assert_eq!(s.into_summary(), expected());
    }

    #[test]
    fn records_in_band_errors_and_incomplete_streams() {
        let mut s = UsageScanner::new();
        let cut = STREAM.find("event: content_block_stop").unwrap();
        s.feed(&STREAM.as_bytes()[..cut]);
        s.feed(b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n");
        let sum = s.into_summary();
        assert_eq!(sum.stream_error.as_deref(), Some("overloaded_error"));
        assert!(!sum.completed);
        assert_eq!(sum.input_tokens, 25);
    }

    #[test]
    fn a_stream_cut_before_its_final_usage_counts_a_token_per_content_delta() {
        // One character each: the floor of a token per delta is more than their text.
        let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n";
        let start_end = STREAM.find("event: content_block_delta").unwrap();
        let cut = format!("{}{}", &STREAM[..start_end], delta.repeat(40));
        // Whole, in one chunk, byte by byte, and with CRLF: the same count.
        let whole = |text: &str| {
            let mut s = UsageScanner::new();
            s.feed(text.as_bytes());
            s.into_summary()
        };
        assert_eq!(whole(&cut).output_tokens, 40);
        assert_eq!(whole(&cut.replace('\n', "\r\n")).output_tokens, 40);
        let mut s = UsageScanner::new();
        for b in cut.as_bytes() {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.into_summary().output_tokens, 40);
        // The final usage, when it came, is the count.
        let done = format!(
            "{}{}",
            &cut,
            &STREAM[STREAM.find("event: content_block_stop").unwrap()..]
        );
        assert_eq!(whole(&done).output_tokens, 15);
    }

    /// A `content_block_delta` event whose `delta` is of `kind` with `field` holding `text`.
    fn content_delta(kind: &str, field: &str, text: &str) -> String {
        let data = serde_json::json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": kind, field: text},
        });
        format!("event: content_block_delta\ndata: {data}\n\n")
    }

    /// The summary of `stream` fed whole, with CRLF line ends, byte by byte and in 7-byte
    /// chunks (every way agreeing).
    fn fed_every_way(stream: &str) -> UsageSummary {
        let feed = |text: &str, chunk: usize| {
            let mut s = UsageScanner::new();
            for c in text.as_bytes().chunks(chunk) {
                s.feed(c);
            }
            s.into_summary()
        };
        let whole = feed(stream, stream.len().max(1));
        let crlf = stream.replace('\n', "\r\n");
        assert_eq!(feed(&crlf, crlf.len().max(1)), whole, "CRLF");
        assert_eq!(feed(stream, 1), whole, "byte by byte");
        assert_eq!(feed(stream, 7), whole, "7-byte chunks");
        whole
    }

    #[test]
    fn a_cut_stream_counts_the_text_thinking_and_tool_input_its_deltas_delivered() {
        let head = &STREAM[..STREAM.find("event: content_block_start").unwrap()];
        // What the gateway sends on for a stream the upstream cut.
        let closing = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream connection lost mid-stream\"}}\n\n";
        let text = [
            "The gateway settles ",
            "what a stream \"delivered\",\n",
            "h\u{e9}llo w\u{f6}rld \u{1F600} caf\u{e9} ",
            "tab\tand backslash\\u done.",
        ];
        let thinking = [
            "Let me think about ",
            "the question asked, ",
            "step by step here.",
        ];
        let json = ["", "{\"city\": \"Par", "is\", \"unit\": \"c", "elsius\"}"];
        let block = |index: usize, kind: &str| {
            format!(
                "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":{{\"type\":\"{kind}\"}}}}\n\n"
            )
        };
        let stop = |index: usize| {
            format!(
                "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{index}}}\n\n"
            )
        };
        let deltas = |kind: &str, field: &str, texts: &[&str]| -> String {
            texts
                .iter()
                .map(|t| content_delta(kind, field, t))
                .collect()
        };
        let text_events = deltas("text_delta", "text", &text);
        let thinking_events = format!(
            "{}{}",
            deltas("thinking_delta", "thinking", &thinking),
            // A signature is not text: a delta, counted at the floor only.
            content_delta("signature_delta", "signature", &"Eq".repeat(200)),
        );
        let json_events = deltas("input_json_delta", "partial_json", &json);
        let chars = |texts: &[&str]| texts.iter().map(|t| t.chars().count() as u64).sum::<u64>();
        let (text_chars, thinking_chars, json_chars) =
            (chars(&text), chars(&thinking), chars(&json));
        for (name, events, chars, n) in [
            ("text", text_events.clone(), text_chars, text.len()),
            (
                "thinking",
                format!("{}{}", block(0, "thinking"), thinking_events),
                thinking_chars,
                thinking.len() + 1,
            ),
            (
                "tool input",
                format!("{}{}", block(0, "tool_use"), json_events),
                json_chars,
                json.len(),
            ),
            (
                "all three",
                format!(
                    "{}{}{}{}{}{}{}",
                    block(0, "thinking"),
                    thinking_events,
                    stop(0),
                    block(1, "text"),
                    text_events,
                    stop(1),
                    json_events
                ),
                thinking_chars + text_chars + json_chars,
                thinking.len() + 1 + text.len() + json.len(),
            ),
        ] {
            let want = chars.div_ceil(4);
            assert!(want > n as u64, "{name}: more than the floor");
            for tail in ["", closing] {
                let sum = fed_every_way(&format!("{head}{events}{tail}"));
                assert_eq!(sum.output_tokens, want, "{name} {tail}");
                assert_eq!((sum.input_tokens, sum.completed), (25, false), "{name}");
            }
            // With its final usage, the upstream's count stands, whatever the text.
            let done = format!(
                "{head}{events}{}",
                &STREAM[STREAM.find("event: message_delta").unwrap()..]
            );
            assert_eq!(fed_every_way(&done).output_tokens, 15, "{name}");
        }
    }

    #[test]
    fn a_delta_cut_off_midway_is_not_counted() {
        // The client's parser never had it whole; nor does the scanner.
        let head = &STREAM[..STREAM.find("event: content_block_start").unwrap()];
        let delta = content_delta("text_delta", "text", &"word ".repeat(40));
        let mut s = UsageScanner::new();
        s.feed(head.as_bytes());
        s.feed(&delta.as_bytes()[..delta.len() - 10]);
        assert_eq!(s.into_summary().output_tokens, 1);
    }

    #[test]
    fn delta_text_is_measured_on_its_json_form_as_the_decoded_characters() {
        for (json, chars) in [
            (r#""""#, 0),
            (r#""plain""#, 5),
            (r#""a\u00e9\"\n\\""#, 5),
            (r#""\\u00e9""#, 6),
            (r#""h\u00e9llo""#, 5),
            ("\"h\u{e9}llo \u{1F600}\"", 7),
            // A surrogate pair counts two (an estimate).
            (r#""\ud83d\ude00""#, 2),
        ] {
            let data = format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{json}}}}}"#
            );
            assert_eq!(
                fast_json::content_delta_chars(data.as_bytes()),
                chars,
                "{json}"
            );
        }
        for data in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abcd"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{"cited_text":"abcd","text":"x"}}}"#,
            r#"{"type":"content_block_delta","text":"abcd","delta":{"type":"text_delta","text":null}}"#,
            r#"{"type":"content_block_delta","delta":"#,
            "not json",
            "",
        ] {
            assert_eq!(fast_json::content_delta_chars(data.as_bytes()), 0, "{data}");
        }
    }

    #[test]
    fn oversized_lines_are_skipped_not_buffered() {
        let mut s = UsageScanner::new();
        let huge = vec![b'x'; MAX_LINE + 10];
        s.feed(b"event: content_block_delta\ndata: ");
        s.feed(&huge);
        s.feed(b"\n\n");
        s.feed(STREAM.as_bytes());
        assert!(s.line.capacity() <= MAX_LINE + 4096 || s.line.is_empty());
        assert_eq!(s.into_summary(), expected());
    }

    #[test]
    fn usage_from_json_body() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"m","stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":4,"cache_creation_input_tokens":0,"cache_read_input_tokens":9}}"#;
        let s = UsageSummary::from_json(body).unwrap();
        assert_eq!(
            (s.input_tokens, s.output_tokens, s.cache_read_input_tokens),
            (3, 4, 9)
        );
        assert_eq!(s.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!((s.cache_creation_5m, s.cache_creation_1h), (None, None));
    }

    #[test]
    fn a_json_body_cut_anywhere_has_no_usage() {
        // A whole answer cut off is charged an estimate (`Completion::estimate_unread_usage`),
        // never the part of a usage read from its prefix.
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"a \"quoted\" }{ answer"}],"model":"m","stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":31,"output_tokens":47}}"#;
        assert_eq!(UsageSummary::from_json(body).unwrap().output_tokens, 47);
        for cut in 0..body.len() {
            assert_eq!(UsageSummary::from_json(&body[..cut]), None, "{cut}");
        }
    }

    #[test]
    fn cache_writes_are_split_by_ttl_when_reported() {
        let body = br#"{"model":"m","usage":{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":30,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20}}}"#;
        let s = UsageSummary::from_json(body).unwrap();
        assert_eq!(
            (s.cache_creation_5m, s.cache_creation_1h),
            (Some(10), Some(20))
        );
        assert_eq!(
            fast_json::summary(body),
            UsageSummary::from_json_serde(body)
        );
    }

    #[test]
    fn fast_walk_agrees_with_serde_even_with_decoys_in_content() {
        let bodies: [&[u8]; 6] = [
            br#"{"id":"msg_1","content":[{"type":"tool_use","input":{"usage":{"input_tokens":999},"model":"decoy","s":"a\"}{b"}}],"model":"claude-x","stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4,"cache_creation_input_tokens":1,"cache_read_input_tokens":2,"cache_creation":{"ephemeral_5m_input_tokens":1,"ephemeral_1h_input_tokens":0}}}"#,
            br#" { "model" : null , "usage" : null } "#,
            br#"{}"#,
            br#"{"usage":{"output_tokens":7},"extra":[1,2,{"a":[true,false,null]}],"n":-1.5e3}"#,
            br#"{"model":"m","usage":nullx}"#,
            br#"{"usage":{"cache_creation":null,"input_tokens":2},"stop_reason":null}"#,
        ];
        for body in bodies {
            assert_eq!(
                fast_json::summary(body),
                UsageSummary::from_json_serde(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let decoy = UsageSummary::from_json(bodies[0]).unwrap();
        assert_eq!(decoy.input_tokens, 3);
        assert_eq!(decoy.model.as_deref(), Some("claude-x"));
    }

    /// What the fast event walkers and serde each read from a `message_start` / `message_delta`.
    fn start_both(b: &[u8]) -> (Option<UsageSummary>, Option<UsageSummary>) {
        (
            fast_json::start_event(b).map(UsageSummary::from_message),
            serde_json::from_slice::<StartEvent>(b)
                .ok()
                .map(|e| UsageSummary::from_message(e.message)),
        )
    }

    fn delta_both(b: &[u8]) -> (Option<UsageSummary>, Option<UsageSummary>) {
        let summary = |ev: DeltaEvent| {
            let mut s = UsageSummary {
                stop_reason: ev.delta.and_then(|d| d.stop_reason),
                ..UsageSummary::default()
            };
            if let Some(u) = &ev.usage {
                s.apply_usage(u);
            }
            s
        };
        (
            fast_json::delta_event(b).map(summary),
            serde_json::from_slice::<DeltaEvent>(b).ok().map(summary),
        )
    }

    #[test]
    fn event_walk_agrees_with_serde_even_with_decoys() {
        let starts: [&[u8]; 4] = [
            br#"{"type":"message_start","message":{"id":"m","content":[{"type":"text","text":"\"usage\":{\"input_tokens\":9}"}],"model":"claude-\u0078","usage":{"input_tokens":5,"output_tokens":1,"cache_creation":{"ephemeral_1h_input_tokens":2}}}}"#,
            br#" {"message" : {"model":null,"usage":null} , "type":"message_start"} "#,
            br#"{"type":"message_start","usage":{"input_tokens":3},"message":{"model":"m"}}"#,
            br#"{"type":"message_start"}"#,
        ];
        for b in starts {
            let (fast, serde) = start_both(b);
            assert_eq!(fast, serde, "{}", String::from_utf8_lossy(b));
        }
        assert_eq!(start_both(starts[0]).0.unwrap().input_tokens, 5);
        assert_eq!(start_both(starts[3]).0, None, "no message: nothing read");
        let deltas: [&[u8]; 4] = [
            br#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":15,"input_tokens":null}}"#,
            br#"{"type":"message_delta","delta":null,"usage":null}"#,
            br#"{"type":"message_delta","delta":{"x":{"stop_reason":"decoy"}},"usage":{"output_tokens":2}}"#,
            br#"{"type":"message_delta","usage":{"output_tokens":-1}}"#,
        ];
        for b in deltas {
            let (fast, serde) = delta_both(b);
            assert_eq!(fast, serde, "{}", String::from_utf8_lossy(b));
        }
        assert_eq!(delta_both(deltas[0]).0.unwrap().output_tokens, 15);
    }

    /// A Messages response body of varied shape: the members the walker reads (or `null`), among
    /// others whose names share a prefix with them and nested objects that reuse their names, in
    /// any order, with any whitespace.
    fn message_text() -> impl Strategy<Value = String> {
        let uint = || {
            prop_oneof![
                4 => (0u64..10_000_000).prop_map(|n| n.to_string()),
                1 => Just("null".to_owned()),
            ]
            .boxed()
        };
        let string = || {
            prop_oneof![
                4 => "\\PC{0,16}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                1 => Just("null".to_owned()),
                1 => Just(r#""claude-\u0041\"x\\""#.to_owned()),
            ]
            .boxed()
        };
        let cache_creation = object(
            vec![
                ("ephemeral_5m_input_tokens", uint()),
                ("ephemeral_1h_input_tokens", uint()),
                ("ephemeral_5m_input_tokens_x", uint()),
            ],
            0.5,
            0.0,
        );
        let usage = object(
            vec![
                ("input_tokens", uint()),
                ("output_tokens", uint()),
                ("cache_creation_input_tokens", uint()),
                ("cache_read_input_tokens", uint()),
                (
                    "cache_creation",
                    prop_oneof![4 => cache_creation, 1 => Just("null".to_owned())].boxed(),
                ),
                ("input_tokens_x", uint()),
                ("service_tier", string()),
                (
                    "server_tool_use",
                    Just(r#"{"web_search_requests":1}"#.to_owned()).boxed(),
                ),
            ],
            0.5,
            0.0,
        );
        let decoy = string().prop_map(|text| {
            format!(
                r#"[{{"type":"tool_use","input":{{"model":"decoy","usage":{{"input_tokens":1}},"text":{text}}}}}]"#
            )
        });
        object(
            vec![
                ("id", string()),
                ("model", string()),
                ("content", decoy.boxed()),
                ("stop_reason", string()),
                ("stop_sequence", string()),
                (
                    "usage",
                    prop_oneof![4 => usage, 1 => Just("null".to_owned())].boxed(),
                ),
                ("models", string()),
                ("usage_x", Just(r#"{"input_tokens":9}"#.to_owned()).boxed()),
            ],
            0.5,
            0.0,
        )
    }

    /// One event of many shapes: mostly the usual `event: NAME` + `data:` + blank line, and
    /// the variations the scanner must read the same way (no space, CRLF, no event line, a
    /// second event line, more data lines, other fields).
    fn event_text() -> impl Strategy<Value = String> {
        const EVENTS: [(&str, &str); 9] = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":"m1","usage":{"input_tokens":7,"output_tokens":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi\n\n"}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "message_delta\t",
                r#"{"type":"message_delta","usage":{"output_tokens":4}}"#,
            ),
            ("Odd-Name", "not json"),
            ("", ""),
        ];
        let usual = prop::sample::select(EVENTS.to_vec())
            .prop_map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"));
        let pick = || prop::sample::select(EVENTS.to_vec());
        let varied = (
            prop::sample::select(vec!["event: ", "event:", "event:  ", ""]),
            pick(),
            proptest::option::of(pick()),
            proptest::collection::vec(pick(), 0..3),
            proptest::option::of(prop::sample::select(vec!["id: 1", ": comment", "retry: 5"])),
            prop::sample::select(vec!["\n", "\r\n"]),
        )
            .prop_map(|(event_line, (name, _), second, datas, other, end)| {
                let mut t = String::new();
                if !event_line.is_empty() {
                    t.push_str(&format!("{event_line}{name}{end}"));
                }
                if let Some((second, _)) = second {
                    t.push_str(&format!("event: {second}{end}"));
                }
                for (_, d) in datas {
                    t.push_str(&format!("data: {d}{end}"));
                }
                if let Some(other) = other {
                    t.push_str(&format!("{other}{end}"));
                }
                t.push_str(end);
                t
            });
        prop_oneof![2 => usual, 1 => varied]
    }

    proptest! {
        #[test]
        fn fast_walk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = UsageSummary::from_json(&bytes);
        }

        #[test]
        fn fast_walk_matches_serde_on_generated_messages(text in "\\PC{0,40}", n in 0u64..100_000) {
            let body = serde_json::json!({
                "id": "msg_x", "content": [{"type": "text", "text": text}],
                "model": "claude-y", "stop_reason": "end_turn",
                "usage": {"input_tokens": n, "output_tokens": n / 2}
            }).to_string();
            prop_assert_eq!(fast_json::summary(body.as_bytes()), UsageSummary::from_json_serde(body.as_bytes()));
        }

        #[test]
        fn fast_walk_matches_serde_on_messages_of_any_shape(body in message_text()) {
            let fast = fast_json::summary(body.as_bytes());
            prop_assert!(fast.is_some(), "{}", body);
            prop_assert_eq!(fast, UsageSummary::from_json_serde(body.as_bytes()), "{}", body);
        }

        #[test]
        fn event_walk_matches_serde_on_generated_events(model in "\\PC{0,20}", text in "\\PC{0,40}", n in 0u64..100_000, stop in proptest::option::of("\\PC{0,12}")) {
            let start = serde_json::json!({
                "type": "message_start",
                "message": {"id": "msg_x", "content": [{"type": "text", "text": text}],
                    "model": model, "usage": {"input_tokens": n, "output_tokens": 1}}
            }).to_string();
            let (fast, serde) = start_both(start.as_bytes());
            prop_assert_eq!(fast, serde);
            let delta = serde_json::json!({
                "type": "message_delta", "delta": {"stop_reason": stop, "text": text},
                "usage": {"output_tokens": n}
            }).to_string();
            let (fast, serde) = delta_both(delta.as_bytes());
            prop_assert!(fast.is_some());
            prop_assert_eq!(fast, serde);
        }

        #[test]
        fn any_chunking_gives_the_same_summary(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let bytes = STREAM.as_bytes();
            let mut s = UsageScanner::new();
            let mut prev = 0;
            for c in cuts {
                s.feed(&bytes[prev..c]);
                prev = c;
            }
            s.feed(&bytes[prev..]);
            prop_assert_eq!(s.into_summary(), expected());
        }

        #[test]
        fn whole_events_read_as_line_by_line(events in proptest::collection::vec(event_text(), 0..12)) {
            // Fed byte by byte no event is ever whole in a chunk: every line takes the slow path.
            let stream = events.concat();
            let mut whole = UsageScanner::new();
            whole.feed(stream.as_bytes());
            let mut bytes = UsageScanner::new();
            for b in stream.as_bytes() {
                bytes.feed(std::slice::from_ref(b));
            }
            prop_assert_eq!(whole.into_summary(), bytes.into_summary());
        }

        #[test]
        fn content_deltas_measure_their_decoded_text(
            deltas in proptest::collection::vec(
                (prop::sample::select(vec![
                    ("text_delta", "text"),
                    ("thinking_delta", "thinking"),
                    ("input_json_delta", "partial_json"),
                ]), "\\PC{0,40}"),
                0..8,
            ),
            cut in 1usize..64,
        ) {
            // serde writes escapes but never a surrogate pair: the count is exact.
            let stream: String = deltas.iter().map(|((k, f), t)| content_delta(k, f, t)).collect();
            let want = (deltas.len() as u64, deltas.iter().map(|(_, t)| t.chars().count() as u64).sum::<u64>());
            let mut whole = UsageScanner::new();
            whole.feed(stream.as_bytes());
            prop_assert_eq!((whole.content_deltas, whole.delta_chars), want);
            let mut chunked = UsageScanner::new();
            for c in stream.as_bytes().chunks(cut) {
                chunked.feed(c);
            }
            prop_assert_eq!((chunked.content_deltas, chunked.delta_chars), want);
        }

        #[test]
        fn never_panics_on_arbitrary_input(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut s = UsageScanner::new();
            for c in &chunks {
                s.feed(c);
            }
            let _ = s.into_summary();
        }
    }
}
