//! The plain Messages body read without serde: what an SDK sends for a chat turn (`model`,
//! `max_tokens`, `stream`, `system` as text, `messages` of text, and the sampling numbers), with
//! no escapes in its strings. Any other body is `None` here and is read the general way
//! ([`super::peek_estimating`]'s serde pass), which answers the same for every body this reader
//! answers (a property test below holds it so). A chat turn is most of a gateway's traffic, and
//! reading it here costs a fraction of the general pass.

use std::ops::Range;

use rampart_api::tokens::{BLOCK_OVERHEAD, MESSAGE_OVERHEAD};

use super::{Estimate, Peeked};

/// [`Peeked`] and [`Estimate`] of a plain body; `None` for any other body (or one that is not
/// JSON at all: the general reader then says why).
pub(super) fn read(text: &str) -> Option<(Peeked, Estimate)> {
    let mut r = Reader {
        b: text.as_bytes(),
        i: 0,
    };
    let mut seen = Seen::default();
    let mut model = None;
    let (mut max_tokens, mut stream, mut system, mut messages) = (None, false, 0, 0);
    r.object(|r, key| {
        match key {
            b"model" => {
                seen.once(0)?;
                r.ws();
                let start = r.i;
                let (value, _) = r.string()?;
                model = Some((start..r.i, value));
            }
            b"max_tokens" => {
                seen.once(1)?;
                max_tokens = Some(r.uint()?);
            }
            b"stream" => {
                seen.once(2)?;
                stream = r.boolean()?;
            }
            b"system" => {
                seen.once(3)?;
                system = BLOCK_OVERHEAD + quarter(r.string()?.1);
            }
            b"messages" => {
                seen.once(4)?;
                messages = r.messages()?;
            }
            b"temperature" => {
                seen.once(5)?;
                r.number()?;
            }
            b"top_p" => {
                seen.once(6)?;
                r.number()?;
            }
            b"top_k" => {
                seen.once(7)?;
                r.number()?;
            }
            _ => return None,
        }
        Some(())
    })?;
    r.ws();
    if r.i != r.b.len() {
        return None;
    }
    let (model, model_span) = match model {
        Some((span, value)) => (Some(text.get(value)?.to_owned()), Some(span)),
        None => (None, None),
    };
    Some((
        Peeked {
            model,
            stream,
            max_tokens: super::asked(max_tokens.unwrap_or(0)),
            model_span,
        },
        Estimate {
            input_tokens: system + messages,
            max_tokens: max_tokens.unwrap_or(0),
        },
    ))
}

/// `ceil(chars / 4)`: the estimator's text rule.
fn quarter(chars: u64) -> u64 {
    chars.div_ceil(4)
}

/// Which of a few keys an object has had: a repeated one is not plain (the general reader
/// decides what it means).
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn once(&mut self, bit: u8) -> Option<()> {
        let b = 1 << bit;
        (self.0 & b == 0).then(|| self.0 |= b)
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = ONES << 7;

/// Non-zero when some byte of `w` is below `n` (for `n <= 128`).
fn has_less(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH
}

/// Non-zero when some byte of `w` is `c`.
fn has_byte(w: u64, c: u8) -> u64 {
    has_less(w ^ (ONES * u64::from(c)), 1)
}

/// What eight bytes of a string are ([`Reader::word`]).
enum Word {
    /// The string ends at this index (or is not plain there).
    Ends(usize),
    /// All eight are characters of the string.
    Plain,
    /// Fewer than eight bytes are left.
    Short,
}

/// A cursor over JSON text that accepts only the plain shapes.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if c > b' ' || !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    /// Whether the next token is `c`; consumed if so.
    fn next_is(&mut self, c: u8) -> bool {
        self.ws();
        let is = self.b.get(self.i) == Some(&c);
        self.i += usize::from(is);
        is
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.next_is(c).then_some(())
    }

    /// A string without escapes or control characters: where its characters are, and how many
    /// there are (Unicode scalar values: the text is UTF-8 already).
    fn string(&mut self) -> Option<(Range<usize>, u64)> {
        self.expect(b'"')?;
        let start = self.i;
        let mut j = start;
        let mut continuations = 0u64;
        // Most strings here (keys, roles, models) end within eight bytes: one word first.
        match self.word(j, &mut continuations) {
            Word::Ends(k) => return self.end_string(start, k, continuations),
            Word::Plain => j += 8,
            Word::Short => {}
        }
        // Then sixteen bytes at a time while none of them ends the string or is not plain: the
        // compiler makes these folds a few vector instructions.
        while let Some(chunk) = self.b.get(j..j + 16) {
            let chunk: &[u8; 16] = chunk.try_into().ok()?;
            let special = chunk.iter().fold(0u8, |acc, &c| {
                acc | u8::from(c == b'"') | u8::from(c == b'\\') | u8::from(c < 0x20)
            });
            if special != 0 {
                break;
            }
            if chunk.iter().fold(0u8, |acc, &c| acc | c) >= 0x80 {
                continuations += chunk
                    .iter()
                    .map(|&c| u64::from(c & 0xc0 == 0x80))
                    .sum::<u64>();
            }
            j += 16;
        }
        // Then eight at a time.
        loop {
            match self.word(j, &mut continuations) {
                Word::Ends(k) => return self.end_string(start, k, continuations),
                Word::Plain => j += 8,
                Word::Short => break,
            }
        }
        // The text's last few bytes, one by one.
        while let Some(&c) = self.b.get(j) {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return self.end_string(start, j, continuations);
            }
            continuations += u64::from(c & 0xc0 == 0x80);
            j += 1;
        }
        None
    }

    /// The eight bytes from `b[j]`, read as one word: the lowest flagged byte of it is the first
    /// quote, backslash or control byte in it (the flags above it may be false, the lowest never
    /// is). The continuation bytes before it are counted.
    fn word(&self, j: usize, continuations: &mut u64) -> Word {
        let Some(word) = self.b.get(j..j + 8) else {
            return Word::Short;
        };
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let hits = has_byte(w, b'"') | has_byte(w, b'\\') | has_less(w, 0x20);
        let (before, word) = if hits == 0 {
            (u64::MAX, Word::Plain)
        } else {
            let k = hits.trailing_zeros() / 8;
            (
                (1u64 << (8 * k)).wrapping_sub(1),
                Word::Ends(j + k as usize),
            )
        };
        // A continuation byte has its high bit set and the next one clear.
        let cont = w & !(w << 1) & HIGH & before;
        if cont != 0 {
            *continuations += u64::from(cont.count_ones());
        }
        word
    }

    /// The string from `start` ends at `b[j]` if that is a quote (and is not plain if it is an
    /// escape or a control byte).
    fn end_string(
        &mut self,
        start: usize,
        j: usize,
        continuations: u64,
    ) -> Option<(Range<usize>, u64)> {
        if self.b[j] != b'"' {
            return None;
        }
        self.i = j + 1;
        Some((start..j, (j - start) as u64 - continuations))
    }

    /// An object whose members `member` reads (it is given the key, the cursor just past the
    /// colon). Keys are plain strings.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.next_is(b'}') {
            return Some(());
        }
        loop {
            let (key, _) = self.string()?;
            self.expect(b':')?;
            let b = self.b;
            member(self, &b[key])?;
            if !self.next_is(b',') {
                return self.expect(b'}');
            }
        }
    }

    /// An array whose items `item` reads, and the sum of what it answers.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<u64>) -> Option<u64> {
        self.expect(b'[')?;
        if self.next_is(b']') {
            return Some(0);
        }
        let mut sum = 0u64;
        loop {
            sum = sum.checked_add(item(self)?)?;
            if !self.next_is(b',') {
                self.expect(b']')?;
                return Some(sum);
            }
        }
    }

    /// A non-negative integer as JSON writes it, that `u64` holds; a fraction or an exponent is
    /// not plain.
    fn uint(&mut self) -> Option<u64> {
        self.ws();
        let n = self.integer()?;
        (!matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E'))).then_some(n)
    }

    /// A number as JSON writes it, without an exponent: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, its
    /// integer part one `u64` holds.
    fn number(&mut self) -> Option<()> {
        self.ws();
        self.i += usize::from(self.b.get(self.i) == Some(&b'-'));
        self.integer()?;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            let start = self.i;
            while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            if self.i == start {
                return None;
            }
        }
        (!matches!(self.b.get(self.i), Some(b'e' | b'E'))).then_some(())
    }

    /// The integer part of a number: `0`, or digits not starting with `0`, that `u64` holds.
    fn integer(&mut self) -> Option<u64> {
        let start = self.i;
        let mut n = 0u64;
        while let Some(d) = self.b.get(self.i).filter(|d| d.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        (digits == 1 || (digits > 1 && self.b[start] != b'0')).then_some(n)
    }

    fn boolean(&mut self) -> Option<bool> {
        self.ws();
        let rest = self.b.get(self.i..)?;
        let (value, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        self.i += len;
        // `truex` is not JSON: the next byte must end the word.
        self.b
            .get(self.i)
            .is_none_or(|c| matches!(c, b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t'))
            .then_some(value)
    }

    /// `messages`: each message's tokens ([`MESSAGE_OVERHEAD`] and its content's).
    fn messages(&mut self) -> Option<u64> {
        self.array(|r| {
            let mut seen = Seen::default();
            let mut content = 0;
            r.object(|r, key| {
                match key {
                    b"role" => {
                        seen.once(0)?;
                        r.string()?;
                    }
                    b"content" => {
                        seen.once(1)?;
                        content = r.content()?;
                    }
                    _ => return None,
                }
                Some(())
            })?;
            Some(MESSAGE_OVERHEAD + content)
        })
    }

    /// A message's `content`: text, or text blocks ([`BLOCK_OVERHEAD`] and their text's tokens
    /// each).
    fn content(&mut self) -> Option<u64> {
        self.ws();
        if self.b.get(self.i) == Some(&b'"') {
            return Some(quarter(self.string()?.1));
        }
        self.array(|r| {
            let mut seen = Seen::default();
            let mut text = 0;
            r.object(|r, key| {
                match key {
                    b"type" => {
                        seen.once(0)?;
                        let (ty, _) = r.string()?;
                        if &r.b[ty] != b"text" {
                            return None;
                        }
                    }
                    b"text" => {
                        seen.once(1)?;
                        text = r.string()?.1;
                    }
                    _ => return None,
                }
                Some(())
            })?;
            // A block without its type is counted by its JSON: not plain.
            (seen.0 & 1 != 0).then_some(BLOCK_OVERHEAD + quarter(text))
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::peek_estimating_generally;
    use super::read;
    use crate::json_text::object;

    /// What the general reader answers for a body the plain reader answers.
    fn agrees(text: &str) -> Result<(), TestCaseError> {
        if let Some((peeked, estimate)) = read(text) {
            let general = peek_estimating_generally(text);
            prop_assert_eq!(general, Ok((peeked, Some(estimate))), "{}", text);
        }
        Ok(())
    }

    #[test]
    fn reads_what_sdks_send_for_a_chat_turn() {
        let bodies = [
            r#"{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Summarise the benefits of a gateway in front of an LLM API in one paragraph."}]}"#,
            r#"{"max_tokens": 1024, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hällo, 世界 🌍"}]}, {"role": "assistant", "content": "Hi"}], "model": "claude-haiku-4-5", "stream": true, "system": "Be brief.", "temperature": 0.7, "top_p": 1, "top_k": 5}"#,
            "{\n  \"model\": \"m\",\n  \"messages\": []\n}\n",
            "{}",
            r#"{"max_tokens":0}"#,
        ];
        for text in bodies {
            assert!(read(text).is_some(), "{text}");
            agrees(text).unwrap();
        }
        let (p, e) = read(bodies[1]).unwrap();
        assert_eq!(
            (p.model.as_deref(), p.stream, p.max_tokens),
            (Some("claude-haiku-4-5"), true, Some(1024))
        );
        // 4 + 3 + ceil(11 / 4) (eleven characters, in 19 bytes), 4 + ceil(2 / 4), and the
        // system's 3 + ceil(9 / 4).
        assert_eq!(
            (e.input_tokens, e.max_tokens),
            (4 + 3 + 3 + 4 + 1 + 3 + 3, 1024)
        );
        assert_eq!(&bodies[1][p.model_span.unwrap()], r#""claude-haiku-4-5""#);
    }

    #[test]
    fn leaves_every_other_body_to_the_general_reader() {
        let bodies = [
            r#"{"model":"claude\u002dx","messages":[]}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":null}"#,
            r#"{"max_tokens":064}"#,
            r#"{"max_tokens":1e3}"#,
            r#"{"max_tokens":-1}"#,
            r#"{"max_tokens":99999999999999999999}"#,
            r#"{"stream":truex}"#,
            r#"{"temperature":1e400}"#,
            r#"{"temperature":01}"#,
            r#"{"temperature":1.}"#,
            r#"{"metadata":{"user_id":"u"}}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"text":"no type"}]}]}"#,
            r#"{"messages":[{"role":"user","role":"user","content":"x"}]}"#,
            r#"{"messages":[{"role":"user","content":"x","name":"y"}]}"#,
            "{\"system\":\"a\u{1}b\"}",
            r#"{"model":"a"} x"#,
            r#"{"model":"a",}"#,
            r#"[]"#,
            "",
        ];
        for text in bodies {
            assert!(read(text).is_none(), "{text}");
        }
    }

    /// A string value: mostly plain text (some of it not ASCII), sometimes with escapes or a raw
    /// control character (not JSON), as JSON text.
    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-zA-Z0-9 .,!?-]{0,40}".prop_map(|s| format!("\"{s}\"")),
            2 => "\\PC{0,24}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            1 => Just(r#""a\"b\\c\nd\u00e9""#.to_owned()),
            1 => Just("\"raw\u{7}bell\"".to_owned()),
            1 => Just(r#""tab	inside""#.to_owned()),
        ]
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u64..100_000).prop_map(|n| n.to_string()),
            1 => prop::sample::select(vec![
                "0", "064", "-1", "-0", "1.5", "0.25", "1.", ".5", "1e3", "1E+2", "-0.0",
                "18446744073709551615", "18446744073709551616", "99999999999999999999",
                "null", "true", "\"64\"",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// An object of some of `members` (see [`object`]), now and then with one repeated.
    fn some_of(members: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
        object(members, 0.7, 0.05)
    }

    fn block() -> BoxedStrategy<String> {
        prop_oneof![
            6 => some_of(vec![
                ("type", prop_oneof![8 => Just("\"text\"".to_owned()), 1 => string()].boxed()),
                ("text", string().boxed()),
            ]),
            1 => some_of(vec![
                ("type", Just("\"text\"".to_owned()).boxed()),
                ("text", string().boxed()),
                ("cache_control", Just(r#"{"type":"ephemeral"}"#.to_owned()).boxed()),
            ]),
            1 => Just(r#"{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBO"}}"#.to_owned()),
        ]
        .boxed()
    }

    fn list(item: BoxedStrategy<String>, max: usize) -> BoxedStrategy<String> {
        (
            proptest::collection::vec(item, 0..max),
            prop::sample::select(vec![",", ", ", " ,\n"]),
        )
            .prop_map(|(items, sep)| format!("[{}]", items.join(sep)))
            .boxed()
    }

    fn message() -> BoxedStrategy<String> {
        some_of(vec![
            ("role", string().boxed()),
            (
                "content",
                prop_oneof![3 => string().boxed(), 2 => list(block(), 4), 1 => number().boxed()]
                    .boxed(),
            ),
            ("name", string().boxed()),
        ])
    }

    /// Text as a JSON string without escapes (some of it not ASCII).
    fn plain_string() -> BoxedStrategy<String> {
        prop_oneof![
            3 => "[a-zA-Z0-9 .,!?-]{0,40}",
            1 => "[^\"\\\\\\p{Cc}]{0,24}",
        ]
        .prop_map(|s| format!("\"{s}\""))
        .boxed()
    }

    /// A plain body (see the module's documentation).
    fn plain_body() -> BoxedStrategy<String> {
        let block = some_of(vec![
            ("type", Just("\"text\"".to_owned()).boxed()),
            ("text", plain_string()),
        ]);
        let message = some_of(vec![
            ("role", plain_string()),
            (
                "content",
                prop_oneof![plain_string(), list(block, 4)].boxed(),
            ),
        ]);
        let fraction = || {
            (0u32..100, prop::option::of(0u32..1000))
                .prop_map(|(i, f)| f.map_or(i.to_string(), |f| format!("{i}.{f}")))
                .boxed()
        };
        some_of(vec![
            ("model", plain_string()),
            (
                "max_tokens",
                (0u64..200_000).prop_map(|n| n.to_string()).boxed(),
            ),
            (
                "stream",
                prop::sample::select(vec!["true", "false"])
                    .prop_map(str::to_owned)
                    .boxed(),
            ),
            ("system", plain_string()),
            ("messages", list(message, 4)),
            ("temperature", fraction()),
            ("top_p", fraction()),
            ("top_k", fraction()),
        ])
    }

    /// A Messages body: plain ones, and ones with every way of not being plain mixed in.
    fn body() -> BoxedStrategy<String> {
        prop_oneof![1 => plain_body(), 1 => any_body()].boxed()
    }

    /// A Messages body of any shape.
    fn any_body() -> BoxedStrategy<String> {
        let top = some_of(vec![
            (
                "model",
                prop_oneof![6 => string().boxed(), 1 => number().boxed()].boxed(),
            ),
            ("max_tokens", number().boxed()),
            (
                "stream",
                prop::sample::select(vec!["true", "false", "null", "\"true\"", "1"])
                    .prop_map(str::to_owned)
                    .boxed(),
            ),
            (
                "system",
                prop_oneof![4 => string().boxed(), 1 => list(block(), 3)].boxed(),
            ),
            ("messages", list(message(), 4)),
            ("temperature", number().boxed()),
            ("top_p", number().boxed()),
            ("top_k", number().boxed()),
            ("metadata", Just(r#"{"user_id":"u-1"}"#.to_owned()).boxed()),
        ]);
        (top, prop::sample::select(vec!["", " ", "\n", " x", ","]))
            .prop_map(|(t, tail)| format!("{t}{tail}"))
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn answers_as_the_general_reader(text in body()) {
            agrees(&text)?;
        }

        #[test]
        fn a_string_counts_its_own_characters(
            text in "[^\"\\\\\\p{Cc}]{0,40}",
            after in "\\PC{0,12}",
            lead in 0usize..3,
        ) {
            let json = format!("{}\"{text}\"{after}", " ".repeat(lead));
            let mut r = super::Reader { b: json.as_bytes(), i: 0 };
            let (span, chars) = r.string().unwrap();
            prop_assert_eq!(&json[span], text.as_str());
            prop_assert_eq!(chars, text.chars().count() as u64);
            prop_assert_eq!(r.i, lead + text.len() + 2);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = read(text);
            }
        }
    }
}
