//! Streams and the cache: [`Capture`] rebuilds the final message from a streamed answer (bounded,
//! on the side, from the exact bytes sent to the client), and [`replay`] turns a stored message
//! back into a well-formed SSE stream, in the event order the API uses, so the SDKs' stream
//! helpers accept a cache hit like a live answer.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};

/// Stop reasons of complete answers worth storing. Refusals, `max_tokens` truncation, pauses and
/// context-window stops are not.
pub const CACHEABLE_STOP_REASONS: [&str; 3] = ["end_turn", "stop_sequence", "tool_use"];

/// Whether a final message may be stored: a `message` with a cacheable stop reason.
#[must_use]
pub fn is_cacheable(message: &Value) -> bool {
    message.get("type").and_then(Value::as_str) == Some("message")
        && message
            .get("stop_reason")
            .and_then(Value::as_str)
            .is_some_and(|r| CACHEABLE_STOP_REASONS.contains(&r))
}

/// Rebuilds the final message of a stream from its bytes. Bounded: past `limit` bytes the capture
/// gives up (the stream itself is unaffected).
#[derive(Debug)]
pub struct Capture {
    buf: BytesMut,
    limit: usize,
    overflowed: bool,
}

impl Capture {
    /// A capture that keeps at most `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
            overflowed: false,
        }
    }

    /// Feed the next chunk sent to the client.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.buf.len() + chunk.len() > self.limit {
            self.overflowed = true;
            self.buf = BytesMut::new();
            return;
        }
        self.buf.put_slice(chunk);
    }

    /// The final message, when the stream was complete (ended with `message_stop`, no `error`
    /// event, every block closed) and within the limit.
    #[must_use]
    pub fn finish(self) -> Option<Value> {
        if self.overflowed {
            return None;
        }
        assemble(&self.buf)
    }
}

/// Parse an SSE byte stream's `data:` payloads, event by event.
fn events(bytes: &[u8]) -> impl Iterator<Item = Value> + '_ {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    text.split("\n\n").filter_map(|raw| {
        let mut data = String::new();
        for line in raw.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        (!data.is_empty())
            .then(|| serde_json::from_str(&data).ok())
            .flatten()
    })
}

fn assemble(bytes: &[u8]) -> Option<Value> {
    let mut message: Option<Value> = None;
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial_json: Vec<String> = Vec::new();
    let mut open: Vec<bool> = Vec::new();
    let mut stopped = false;
    for ev in events(bytes) {
        match ev.get("type").and_then(Value::as_str)? {
            "message_start" => message = Some(ev.get("message")?.clone()),
            "content_block_start" => {
                let index = usize::try_from(ev.get("index")?.as_u64()?).ok()?;
                if index != blocks.len() {
                    return None;
                }
                blocks.push(ev.get("content_block")?.clone());
                partial_json.push(String::new());
                open.push(true);
            }
            "content_block_delta" => {
                let index = usize::try_from(ev.get("index")?.as_u64()?).ok()?;
                let block = blocks.get_mut(index)?;
                let delta = ev.get("delta")?;
                match delta.get("type").and_then(Value::as_str)? {
                    "text_delta" => append(block, "text", delta.get("text")?.as_str()?)?,
                    "thinking_delta" => {
                        append(block, "thinking", delta.get("thinking")?.as_str()?)?;
                    }
                    "signature_delta" => {
                        block["signature"] = delta.get("signature")?.clone();
                    }
                    "input_json_delta" => {
                        partial_json
                            .get_mut(index)?
                            .push_str(delta.get("partial_json")?.as_str()?);
                    }
                    "citations_delta" => {
                        let citation = delta.get("citation")?.clone();
                        match block.get_mut("citations") {
                            Some(Value::Array(list)) => list.push(citation),
                            _ => block["citations"] = json!([citation]),
                        }
                    }
                    _ => return None,
                }
            }
            "content_block_stop" => {
                let index = usize::try_from(ev.get("index")?.as_u64()?).ok()?;
                let json_text = partial_json.get(index)?;
                if !json_text.is_empty() {
                    blocks.get_mut(index)?["input"] = serde_json::from_str(json_text).ok()?;
                }
                *open.get_mut(index)? = false;
            }
            "message_delta" => {
                let msg = message.as_mut()?;
                if let Some(Value::Object(delta)) = ev.get("delta") {
                    for (k, v) in delta {
                        msg[k] = v.clone();
                    }
                }
                if let Some(Value::Object(usage)) = ev.get("usage") {
                    let target = msg
                        .as_object_mut()?
                        .entry("usage")
                        .or_insert_with(|| Value::Object(Map::new()));
                    for (k, v) in usage {
                        if !v.is_null() {
                            target[k] = v.clone();
                        }
                    }
                }
            }
            "message_stop" => stopped = true,
            "ping" => {}
            // An in-band error (or anything unknown) means the answer is not one to keep.
            _ => return None,
        }
    }
    if !stopped || open.iter().any(|o| *o) {
        return None;
    }
    let mut msg = message?;
    msg["content"] = Value::Array(blocks);
    Some(msg)
}

fn append(block: &mut Value, field: &str, more: &str) -> Option<()> {
    let current = block.get(field).and_then(Value::as_str).unwrap_or("");
    let joined = format!("{current}{more}");
    block[field] = Value::String(joined);
    Some(())
}

/// Text deltas are cut into pieces of about this many characters, like a live stream.
const CHUNK_CHARS: usize = 64;

fn event(out: &mut BytesMut, name: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

fn chunks(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(CHUNK_CHARS);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

/// A stored message as the SSE stream the API would have sent: `message_start` (empty content,
/// null stop reason, the input-side usage), each block's start / deltas / stop, `message_delta`
/// (stop reason and the final usage), `message_stop`.
#[must_use]
pub fn replay(message: &Value) -> Bytes {
    let mut out = BytesMut::with_capacity(1024);
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    if let Some(Value::Object(usage)) = start.get_mut("usage") {
        usage.insert("output_tokens".to_owned(), json!(1));
    }
    event(
        &mut out,
        "message_start",
        &json!({"type": "message_start", "message": start}),
    );
    let empty = Vec::new();
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (index, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        let (opening, deltas): (Value, Vec<Value>) = match kind {
            "text" => {
                let mut open = block.clone();
                open["text"] = json!("");
                if open.get("citations").is_some() {
                    open["citations"] = json!([]);
                }
                let mut d: Vec<Value> = block
                    .get("citations")
                    .and_then(Value::as_array)
                    .map(|cs| {
                        cs.iter()
                            .map(|c| json!({"type": "citations_delta", "citation": c}))
                            .collect()
                    })
                    .unwrap_or_default();
                d.extend(
                    chunks(block.get("text").and_then(Value::as_str).unwrap_or(""))
                        .map(|t| json!({"type": "text_delta", "text": t})),
                );
                (open, d)
            }
            "thinking" => {
                let mut open = block.clone();
                open["thinking"] = json!("");
                open["signature"] = json!("");
                let mut d: Vec<Value> =
                    chunks(block.get("thinking").and_then(Value::as_str).unwrap_or(""))
                        .map(|t| json!({"type": "thinking_delta", "thinking": t}))
                        .collect();
                if let Some(sig) = block.get("signature") {
                    d.push(json!({"type": "signature_delta", "signature": sig}));
                }
                (open, d)
            }
            "tool_use" | "server_tool_use" => {
                let mut open = block.clone();
                open["input"] = json!({});
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                let text = input.to_string();
                let d = if input.as_object().is_some_and(Map::is_empty) {
                    vec![]
                } else {
                    chunks(&text)
                        .map(|t| json!({"type": "input_json_delta", "partial_json": t}))
                        .collect()
                };
                (open, d)
            }
            // Blocks without deltas (redacted thinking, tool results of server tools, ...) are
            // sent whole in their start event.
            _ => (block.clone(), vec![]),
        };
        event(
            &mut out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": opening}),
        );
        for d in deltas {
            event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": d}),
            );
        }
        event(
            &mut out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    event(
        &mut out,
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {
                "stop_reason": message.get("stop_reason").cloned().unwrap_or(Value::Null),
                "stop_sequence": message.get("stop_sequence").cloned().unwrap_or(Value::Null),
            },
            "usage": message.get("usage").cloned().unwrap_or_else(|| json!({})),
        }),
    );
    event(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out.freeze()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message() -> Value {
        json!({
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [
                {"type": "thinking", "thinking": "Let me add. ".repeat(20), "signature": "sig=="},
                {"type": "text", "text": "The answer is 4, naïvely — ✓ ".repeat(10)},
                {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"a": 2, "b": [1, 2, {"c": "d"}]}},
                {"type": "redacted_thinking", "data": "opaque"}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 42, "output_tokens": 77, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}}
        })
    }

    #[test]
    fn a_replayed_stream_reassembles_to_the_same_message() {
        let m = message();
        let stream = replay(&m);
        let text = std::str::from_utf8(&stream).unwrap();
        assert!(text.starts_with("event: message_start\n"));
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert!(text.contains("\"input_json_delta\""));
        assert!(text.contains("\"signature_delta\""));
        let mut cap = Capture::new(1 << 20);
        // Fed in awkward pieces, as a network would.
        for piece in stream.chunks(7) {
            cap.push(piece);
        }
        assert_eq!(cap.finish().unwrap(), m);
    }

    #[test]
    fn incomplete_errored_or_oversized_streams_are_not_captured() {
        let full = replay(&message());
        let cut = &full[..full.len() - 40];
        let mut cap = Capture::new(1 << 20);
        cap.push(cut);
        assert_eq!(cap.finish(), None);

        let mut errored = BytesMut::from(&full[..full.len() / 2]);
        errored.put_slice(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        let mut cap = Capture::new(1 << 20);
        cap.push(&errored);
        assert_eq!(cap.finish(), None);

        let mut small = Capture::new(100);
        small.push(&full);
        assert_eq!(small.finish(), None);
    }

    #[test]
    fn only_complete_answers_are_cacheable() {
        let mut m = message();
        assert!(is_cacheable(&m));
        for reason in [
            "max_tokens",
            "refusal",
            "pause_turn",
            "model_context_window_exceeded",
        ] {
            m["stop_reason"] = json!(reason);
            assert!(!is_cacheable(&m), "{reason}");
        }
        assert!(!is_cacheable(&json!({"type": "error"})));
    }
}
