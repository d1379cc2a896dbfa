//! Bounded line splitting over a byte stream, for SSE and JSONL: lines end at `\n`, `\r\n` or `\r`
//! (a `\r\n` split across two chunks is one line end), a line may span any number of chunks, and
//! a line longer than the limit is an error rather than unbounded buffering.

/// A line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineTooLong(pub usize);

/// Splits pushed bytes into lines.
#[derive(Debug)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
    /// Where to resume looking for a line end (everything before it in the unread part has none).
    scanned: usize,
    /// The previous line ended with `\r` at the very end of the data: skip a leading `\n`.
    skip_lf: bool,
    max: usize,
}

impl Lines {
    pub(crate) const fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skip_lf: false,
            max,
        }
    }

    /// Appends a chunk.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line (without its line end), or `None` until more data arrives.
    ///
    /// # Errors
    /// [`LineTooLong`] when a line exceeds the limit.
    pub(crate) fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        if self.skip_lf && self.start < self.buf.len() {
            if self.buf[self.start] == b'\n' {
                self.start += 1;
            }
            self.skip_lf = false;
        }
        self.scanned = self.scanned.max(self.start);
        let found = self.buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r');
        let Some(offset) = found else {
            self.scanned = self.buf.len();
            return if self.buf.len() - self.start > self.max {
                Err(LineTooLong(self.max))
            } else {
                Ok(None)
            };
        };
        let end = self.scanned + offset;
        if end - self.start > self.max {
            return Err(LineTooLong(self.max));
        }
        let mut next = end + 1;
        if self.buf[end] == b'\r' {
            match self.buf.get(next) {
                Some(b'\n') => next += 1,
                Some(_) => {}
                None => self.skip_lf = true,
            }
        }
        let line_start = self.start;
        self.start = next;
        self.scanned = next;
        Ok(Some(&self.buf[line_start..end]))
    }

    /// At the end of the stream: the last line if it had no line end (once).
    pub(crate) fn take_remainder(&mut self) -> Option<Vec<u8>> {
        let rest = self.buf.split_off(self.start.min(self.buf.len()));
        self.start = self.buf.len();
        self.scanned = self.start;
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(
        chunks: &[&[u8]],
        max: usize,
    ) -> Result<(Vec<String>, Option<String>), LineTooLong> {
        let mut lines = Lines::new(max);
        let mut out = Vec::new();
        for c in chunks {
            lines.push(c);
            while let Some(l) = lines.next_line()? {
                out.push(String::from_utf8_lossy(l).into_owned());
            }
        }
        let rest = lines
            .take_remainder()
            .map(|r| String::from_utf8_lossy(&r).into_owned());
        assert_eq!(
            lines.take_remainder(),
            None,
            "the remainder is handed out once"
        );
        Ok((out, rest))
    }

    #[test]
    fn every_line_end_style_and_a_crlf_split_across_chunks() {
        let (lines, rest) = split_all(&[b"a\nb\r\nc\rd\r", b"\ne", b"\n\nf"], 100).unwrap();
        assert_eq!(lines, ["a", "b", "c", "d", "e", ""]);
        assert_eq!(rest.as_deref(), Some("f"));
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_even_before_it_ends() {
        assert_eq!(split_all(&[b"0123456789"], 5), Err(LineTooLong(5)));
        assert_eq!(split_all(&[b"012", b"345\n"], 5), Err(LineTooLong(5)));
        assert!(split_all(&[b"01234\n"], 5).is_ok());
    }

    /// `bytes` cut at the given offsets (clamped, in any order), for chunking property tests.
    pub(crate) fn cut(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
        for c in &mut cuts {
            *c = (*c).min(bytes.len());
        }
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in cuts {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        chunks
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_lines(
            text in "[a-c\r\n]{0,200}",
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let bytes = text.as_bytes();
            let whole = split_all(&[bytes], 1000).unwrap();
            prop_assert_eq!(split_all(&cut(bytes, cuts), 1000).unwrap(), whole);
        }
    }
}
