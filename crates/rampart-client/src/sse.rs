//! A bounded server-sent-events decoder (the WHATWG rules the API's streams follow): `event:` and
//! `data:` fields (several `data:` lines join with `\n`), comments and other fields ignored, an
//! event dispatched at a blank line, a leading byte-order mark dropped, and an incomplete event at
//! the end of the stream discarded. Lines are decoded as UTF-8 once complete, so a character
//! split across chunks is intact; invalid bytes become U+FFFD as the standard says. One event's
//! data is capped, so a broken or hostile server cannot make the client buffer without bound.

use crate::lines::{LineTooLong, Lines};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An event (or a line of one) over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventTooLarge(pub usize);

impl From<LineTooLong> for EventTooLarge {
    fn from(e: LineTooLong) -> Self {
        Self(e.0)
    }
}

/// Incremental decoder.
#[derive(Debug)]
pub(crate) struct SseDecoder {
    lines: Lines,
    event: Option<String>,
    data: String,
    has_data: bool,
    started: bool,
    max: usize,
}

impl SseDecoder {
    /// A decoder whose events (and lines) may hold at most `max` bytes.
    pub(crate) const fn new(max: usize) -> Self {
        Self {
            lines: Lines::new(max),
            event: None,
            data: String::new(),
            has_data: false,
            started: false,
            max,
        }
    }

    /// Feeds a chunk and appends every event it completes to `out`.
    ///
    /// # Errors
    /// [`EventTooLarge`] when a line or an event's data exceeds the limit.
    pub(crate) fn push(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<SseEvent>,
    ) -> Result<(), EventTooLarge> {
        self.lines.push(chunk);
        while let Some(raw) = self.lines.next_line()? {
            let mut line = String::from_utf8_lossy(raw);
            if !self.started {
                self.started = true;
                if let Some(rest) = line.strip_prefix('\u{feff}') {
                    line = rest.to_owned().into();
                }
            }
            if line.is_empty() {
                let event = self.event.take();
                if self.has_data {
                    self.has_data = false;
                    out.push(SseEvent {
                        event: event.unwrap_or_else(|| "message".to_owned()),
                        data: std::mem::take(&mut self.data),
                    });
                }
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(0) => continue,
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                    if self.data.len() > self.max {
                        return Err(EventTooLarge(self.max));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut d = SseDecoder::new(1 << 16);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out)?;
        }
        Ok(out)
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn decodes_the_apis_framing() {
        let out = decode(&[
            b"event: message_start\ndata: {\"a\":1}\n\n: comment\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n",
        ])
        .unwrap();
        assert_eq!(
            out,
            [
                ev("message_start", "{\"a\":1}"),
                ev("ping", "{\"type\": \"ping\"}")
            ]
        );
    }

    #[test]
    fn multi_line_data_crlf_bom_and_field_quirks() {
        let out = decode(&[b"\xEF\xBB\xBFdata:x\r\ndata: y\r\nid: 7\r\nretry: 10\r\n\r\nevent:e\ndata\n\nevent: lone\n\n"]).unwrap();
        assert_eq!(out, [ev("message", "x\ny"), ev("e", "")]);
    }

    #[test]
    fn an_unfinished_event_at_the_end_is_not_dispatched() {
        assert_eq!(decode(&[b"event: a\ndata: 1\n"]).unwrap(), []);
    }

    #[test]
    fn utf8_split_across_chunks_survives() {
        let text = "event: t\ndata: héllo — ✓\n\n".as_bytes();
        let cut = text.iter().position(|b| *b == 0xC3).unwrap() + 1;
        let out = decode(&[&text[..cut], &text[cut..]]).unwrap();
        assert_eq!(out, [ev("t", "héllo — ✓")]);
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut d = SseDecoder::new(10);
        let mut out = Vec::new();
        assert_eq!(
            d.push(b"data: 12345\ndata: 67890\n", &mut out),
            Err(EventTooLarge(10))
        );
        let mut d = SseDecoder::new(10);
        assert_eq!(
            d.push(b"data: 0123456789abc", &mut out),
            Err(EventTooLarge(10))
        );
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            events in proptest::collection::vec(("[a-z_]{1,12}", "[ -~é✓]{0,40}"), 0..6),
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(0usize..2000, 0..12),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let text: String = events
                .iter()
                .map(|(e, d)| format!("event: {e}{nl}data: {d}{nl}{nl}"))
                .collect();
            let chunks = crate::lines::tests::cut(text.as_bytes(), cuts);
            let want: Vec<SseEvent> = events.iter().map(|(e, d)| ev(e, d)).collect();
            prop_assert_eq!(decode(&chunks).unwrap(), want);
        }
    }
}
