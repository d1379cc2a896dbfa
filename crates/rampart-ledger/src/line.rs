//! A usage record as the JSON of a spool line, written field by field: the same bytes as
//! `serde_json::to_writer` (a test holds them equal), at a fraction of its cost (no generic
//! serializer; strings that need no escaping, the usual case, are copied as they are; UUIDs are
//! formatted in place, integers by `itoa` as serde_json does). Read back with serde ([`crate::spool`]'s decoder).

use rampart_store::UsageRecord;

/// Append `record`'s JSON to `buf`.
pub(crate) fn write_json(record: &UsageRecord, buf: &mut Vec<u8>) {
    write_json_head(record, buf);
    write_json_tail(record, buf);
}

/// The JSON of `record`'s fields known before its request goes upstream, `id` to
/// `model_requested`: an unclosed object that [`write_json_tail`] completes.
pub(crate) fn write_json_head(record: &UsageRecord, buf: &mut Vec<u8>) {
    let r = record;
    buf.extend_from_slice(b"{\"id\":");
    uuid(buf, Some(&r.id));
    buf.extend_from_slice(b",\"at\":");
    // Microseconds: `time` stops at year ±9999, well inside an i64.
    int(
        buf,
        i64::try_from(r.at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX),
    );
    buf.extend_from_slice(b",\"request_id\":");
    string(buf, Some(&r.request_id));
    buf.extend_from_slice(b",\"key_id\":");
    uuid(buf, r.key_id.as_ref());
    buf.extend_from_slice(b",\"team_id\":");
    uuid(buf, r.team_id.as_ref());
    buf.extend_from_slice(b",\"user_id\":");
    uuid(buf, r.user_id.as_ref());
    buf.extend_from_slice(b",\"key_label\":");
    string(buf, r.key_label.as_deref());
    buf.extend_from_slice(b",\"endpoint\":");
    string(buf, Some(&r.endpoint));
    buf.extend_from_slice(b",\"model_requested\":");
    string(buf, r.model_requested.as_deref());
}

/// The rest of `record`'s JSON after [`write_json_head`], `model_served` on, closed.
pub(crate) fn write_json_tail(record: &UsageRecord, buf: &mut Vec<u8>) {
    let r = record;
    buf.extend_from_slice(b",\"model_served\":");
    string(buf, r.model_served.as_deref());
    buf.extend_from_slice(b",\"status\":");
    int(buf, r.status);
    buf.extend_from_slice(b",\"error_type\":");
    string(buf, r.error_type.as_deref());
    for (name, v) in [
        (&b",\"input_tokens\":"[..], r.input_tokens),
        (b",\"output_tokens\":", r.output_tokens),
        (b",\"cache_write_5m_tokens\":", r.cache_write_5m_tokens),
        (b",\"cache_write_1h_tokens\":", r.cache_write_1h_tokens),
        (b",\"cache_read_tokens\":", r.cache_read_tokens),
        (b",\"cost_micro_usd\":", r.cost_micro_usd),
    ] {
        buf.extend_from_slice(name);
        int(buf, v);
    }
    buf.extend_from_slice(b",\"priced\":");
    boolean(buf, r.priced);
    buf.extend_from_slice(b",\"latency_us\":");
    int(buf, r.latency_us);
    buf.extend_from_slice(b",\"upstream_latency_us\":");
    match r.upstream_latency_us {
        Some(v) => int(buf, v),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"upstream_attempts\":");
    int(buf, r.upstream_attempts);
    buf.extend_from_slice(b",\"streamed\":");
    boolean(buf, r.streamed);
    buf.extend_from_slice(b",\"cache_hit\":");
    boolean(buf, r.cache_hit);
    buf.extend_from_slice(b",\"client_aborted\":");
    boolean(buf, r.client_aborted);
    buf.extend_from_slice(b",\"saved_micro_usd\":");
    int(buf, r.saved_micro_usd);
    buf.push(b'}');
}

fn uuid(buf: &mut Vec<u8>, id: Option<&uuid::Uuid>) {
    match id {
        Some(id) => {
            let mut text = [0u8; 36];
            buf.push(b'"');
            buf.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
}

fn string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        // Nothing to escape: copied as it is (what serde_json writes for it too).
        Some(s) if plain(s) => {
            buf.push(b'"');
            buf.extend_from_slice(s.as_bytes());
            buf.push(b'"');
        }
        // Serialising a string into a Vec cannot fail.
        Some(s) => {
            let _ = serde_json::to_writer(&mut *buf, s);
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// Whether `s` has nothing JSON would escape (checked without branching per byte, so the
/// compiler can check many bytes at a time).
fn plain(s: &str) -> bool {
    s.bytes().fold(true, |ok, b| {
        ok & (b >= 0x20) & (b != b'"') & (b != b'\\') & (b != 0x7f)
    })
}

fn boolean(buf: &mut Vec<u8>, v: bool) {
    buf.extend_from_slice(if v { b"true" } else { b"false" });
}

fn int(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn record(
        strings: [Option<String>; 6],
        numbers: [u64; 8],
        flags: [bool; 4],
        saved: i64,
    ) -> UsageRecord {
        let [request_id, key_label, endpoint, requested, served, error] = strings;
        let id = |n: u64| Some(uuid::Uuid::from_u64_pair(n, n.rotate_left(17)));
        let mut r: UsageRecord = serde_json::from_value(serde_json::json!({
            "id": "0196c3a0-0000-7000-8000-000000000001",
            "at": 1_780_000_000_123_456_i64,
            "request_id": "", "endpoint": "", "status": 200,
            "key_id": null, "team_id": null, "user_id": null, "key_label": null,
            "model_requested": null, "model_served": null, "error_type": null,
            "input_tokens": 0, "output_tokens": 0, "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0, "cache_read_tokens": 0, "cost_micro_usd": 0,
            "priced": true, "latency_us": 0, "upstream_latency_us": null,
            "upstream_attempts": 0, "streamed": false, "cache_hit": false, "client_aborted": false
        }))
        .unwrap();
        r.id = id(numbers[0]).unwrap();
        r.at = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(numbers[1] % 4_000_000_000_000_000) * 1_000,
        )
        .unwrap();
        (r.key_id, r.team_id, r.user_id) = if flags[0] {
            (id(numbers[2]), id(numbers[3]), None)
        } else {
            (None, None, id(numbers[4]))
        };
        r.request_id = request_id.unwrap_or_default();
        r.key_label = key_label;
        r.endpoint = endpoint.unwrap_or_default();
        r.model_requested = requested;
        r.model_served = served;
        r.error_type = error;
        r.status = (numbers[5] % 1000) as u16;
        r.input_tokens = numbers[6];
        r.output_tokens = numbers[7];
        r.cost_micro_usd = numbers[2];
        r.upstream_latency_us = flags[1].then_some(numbers[3]);
        r.upstream_attempts = numbers[4] as u32;
        (r.streamed, r.cache_hit, r.client_aborted) = (flags[1], flags[2], flags[3]);
        r.saved_micro_usd = saved;
        r
    }

    #[test]
    fn writes_the_bytes_serde_json_writes() {
        let r = record(
            [
                Some("req_\"quoted\"\\ and \u{1}".to_owned()),
                Some("rk_abcd1".to_owned()),
                Some("/v1/messages".to_owned()),
                Some("claude-sonnet-4-6 é ✓".to_owned()),
                None,
                Some("tab\there\u{7f}".to_owned()),
            ],
            [u64::MAX, 7, 0, 1, 2, 529, u64::MAX, 42],
            [true, true, false, true],
            i64::MIN,
        );
        let mut ours = Vec::new();
        write_json(&r, &mut ours);
        assert_eq!(
            String::from_utf8(ours.clone()).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
        assert_eq!(serde_json::from_slice::<UsageRecord>(&ours).unwrap(), r);
    }

    /// Records with any strings (escaped or not, absent or not), numbers and flags.
    pub(crate) fn any_record() -> impl Strategy<Value = UsageRecord> {
        (
            proptest::array::uniform6(proptest::option::of(".{0,40}")),
            proptest::array::uniform8(any::<u64>()),
            proptest::array::uniform4(any::<bool>()),
            any::<i64>(),
        )
            .prop_map(|(strings, numbers, flags, saved)| record(strings, numbers, flags, saved))
    }

    proptest! {
        #[test]
        fn any_record_is_written_as_serde_json_writes_it(r in any_record()) {
            let mut ours = Vec::new();
            write_json(&r, &mut ours);
            prop_assert_eq!(ours, serde_json::to_vec(&r).unwrap());
        }
    }
}
