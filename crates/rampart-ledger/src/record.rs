//! A usage record prepared before its response ends.
//!
//! A record's head, `id` to `model_requested`, is known when its request goes upstream; the rest
//! (the outcome: status, tokens, cost, latency …) when the response ends. A [`Prepared`] record
//! has its head already encoded as the start of its spool line, so the gateway does that while
//! the upstream answers; what is left on the response's path, before its last byte is released
//! ([`crate::Ledger::record_prepared`]), is the outcome's part of the line, the rest of its CRC
//! and the `write`.

use rampart_store::UsageRecord;

/// Room for a usual spool line (they run to about 700 bytes), so finishing one does not grow it.
const LINE_CAPACITY: usize = 1024;

/// A usage record whose head is encoded already: the start of its spool line (see
/// [`crate::spool`]'s format), the CRC still to be filled in.
#[derive(Debug)]
pub struct Prepared {
    record: UsageRecord,
    line: Vec<u8>,
    /// The CRC of the line's JSON so far.
    crc: crc32fast::Hasher,
}

impl Prepared {
    /// Encode `record`'s head; its other fields are set when it is finished.
    #[must_use]
    pub fn new(record: UsageRecord) -> Self {
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        line.extend_from_slice(crate::spool::CRC_PLACEHOLDER);
        crate::line::write_json_head(&record, &mut line);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&line[crate::spool::CRC_PLACEHOLDER.len()..]);
        Self { record, line, crc }
    }

    /// The record with its outcome set by `outcome` (which leaves the head as it was), and its
    /// whole spool line (the CRC filled in, the newline ended).
    pub(crate) fn finish(self, outcome: impl FnOnce(&mut UsageRecord)) -> (UsageRecord, Vec<u8>) {
        let Self {
            mut record,
            mut line,
            mut crc,
        } = self;
        outcome(&mut record);
        debug_assert!(
            {
                let mut head = crate::spool::CRC_PLACEHOLDER.to_vec();
                crate::line::write_json_head(&record, &mut head);
                head == line
            },
            "a prepared record's outcome changed its head"
        );
        let head = line.len();
        crate::line::write_json_tail(&record, &mut line);
        crc.update(&line[head..]);
        crate::spool::seal_line_with(&mut line, crc.finalize());
        (record, line)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::spool::Spool;
    use proptest::prelude::*;

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "changed its head")]
    fn an_outcome_that_changes_the_head_is_caught() {
        let r = crate::spool::tests::record(1);
        let _ = Prepared::new(r).finish(|o| o.request_id.push('x'));
    }

    proptest! {
        /// A record prepared with an empty outcome and finished with its own is the record, on
        /// the same spool line as the record encoded whole.
        #[test]
        fn a_prepared_record_is_the_record_on_the_same_line(r in crate::line::tests::any_record()) {
            let head = UsageRecord {
                model_served: None,
                status: 0,
                error_type: None,
                input_tokens: 0,
                output_tokens: 0,
                cost_micro_usd: 0,
                latency_us: 0,
                upstream_latency_us: None,
                upstream_attempts: 0,
                saved_micro_usd: 0,
                ..r.clone()
            };
            let (record, line) = Prepared::new(head).finish(|o| *o = r.clone());
            prop_assert_eq!(&record, &r);
            let mut whole = Vec::new();
            Spool::encode(&r, &mut whole);
            prop_assert_eq!(line, whole);
        }
    }
}
