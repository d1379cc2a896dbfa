//! The SSE body of a streamed `POST /v1/messages`: events in the API's order, paced by
//! `tokens_per_sec`, with the stream faults (stall, error event, abort, slow) applied.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use rampart_api::stream::{Delta, DeltaUsage, MessageDeltaBody, StreamEvent};
use rampart_api::{ContentBlock, ErrorBody};
use serde_json::json;

use crate::engine::{Outcome, message};
use crate::generate::{Block, Pieces};
use crate::respond::{ABORTED, BoxError, SimBody};

/// Pieces per text or thinking delta.
const PIECES_PER_DELTA: usize = 3;
/// Characters per `input_json_delta`.
const JSON_CHARS_PER_DELTA: usize = 12;

/// An event to frame and the output tokens it carries (for pacing).
struct Pending<'a>(&'a StreamEvent, u32);

fn frame(event: &StreamEvent, tokens: u32) -> Pending<'_> {
    Pending(event, tokens)
}

/// All events of a reply framed into one buffer, with where each ends and its tokens.
#[derive(Debug, Default)]
pub(crate) struct SseFrames {
    buf: Vec<u8>,
    marks: Vec<(usize, u32)>,
}

impl SseFrames {
    fn push(&mut self, Pending(event, tokens): Pending<'_>) {
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(event.name().as_bytes());
        self.buf.extend_from_slice(b"\ndata: ");
        if serde_json::to_writer(&mut self.buf, event).is_err() {
            self.buf.extend_from_slice(b"{}");
        }
        self.buf.extend_from_slice(b"\n\n");
        self.marks.push((self.buf.len(), tokens));
    }
}

fn piece_deltas(
    index: usize,
    pieces: &Pieces,
    make: impl Fn(String) -> Delta,
    out: &mut SseFrames,
) {
    let all: Vec<&str> = pieces.iter().collect();
    for chunk in all.chunks(PIECES_PER_DELTA) {
        let delta = make(chunk.concat());
        out.push(frame(
            &StreamEvent::ContentBlockDelta { index, delta },
            chunk.len() as u32,
        ));
    }
}

/// The events of a streamed reply, framed.
pub(crate) fn frames(id: String, outcome: &Outcome) -> SseFrames {
    let mut out = SseFrames {
        buf: Vec::with_capacity(1024 + outcome.reply.output_tokens as usize * 90),
        marks: Vec::with_capacity(8 + outcome.reply.output_tokens as usize / PIECES_PER_DELTA),
    };
    let mut shell = message(id, outcome, "standard");
    shell.content.clear();
    shell.stop_reason = None;
    shell.stop_sequence = None;
    shell.usage.output_tokens = 1;
    out.push(frame(&StreamEvent::MessageStart { message: shell }, 0));
    if outcome.reply.blocks.is_empty() {
        out.push(frame(&StreamEvent::Ping, 0));
    }
    for (index, block) in outcome.reply.blocks.iter().enumerate() {
        let start = match block {
            Block::Thinking { .. } => ContentBlock::Thinking {
                thinking: String::new(),
                signature: String::new(),
            },
            Block::Text(_) => ContentBlock::Text {
                text: String::new(),
            },
            Block::ToolUse { id, name, .. } => ContentBlock::ToolUse {
                id: id.clone(),
                name: name.clone(),
                input: json!({}),
            },
        };
        out.push(frame(
            &StreamEvent::ContentBlockStart {
                index,
                content_block: start,
            },
            0,
        ));
        if index == 0 {
            out.push(frame(&StreamEvent::Ping, 0));
        }
        match block {
            Block::Thinking {
                text, signature, ..
            } => {
                piece_deltas(
                    index,
                    text,
                    |thinking| Delta::ThinkingDelta { thinking },
                    &mut out,
                );
                let delta = Delta::SignatureDelta {
                    signature: signature.clone(),
                };
                out.push(frame(&StreamEvent::ContentBlockDelta { index, delta }, 0));
            }
            Block::Text(text) => {
                piece_deltas(index, text, |text| Delta::TextDelta { text }, &mut out)
            }
            Block::ToolUse { json, .. } => {
                let delta = Delta::InputJsonDelta {
                    partial_json: String::new(),
                };
                out.push(frame(&StreamEvent::ContentBlockDelta { index, delta }, 0));
                let chars: Vec<char> = json.chars().collect();
                for chunk in chars.chunks(JSON_CHARS_PER_DELTA) {
                    let partial_json: String = chunk.iter().collect();
                    let tokens = partial_json.len().div_ceil(4) as u32;
                    let delta = Delta::InputJsonDelta { partial_json };
                    out.push(frame(
                        &StreamEvent::ContentBlockDelta { index, delta },
                        tokens,
                    ));
                }
            }
        }
        out.push(frame(&StreamEvent::ContentBlockStop { index }, 0));
    }
    let usage = DeltaUsage {
        output_tokens: outcome.reply.output_tokens,
        input_tokens: Some(outcome.input.input),
        cache_creation_input_tokens: Some(outcome.input.cache_creation()),
        cache_read_input_tokens: Some(outcome.input.cache_read),
    };
    let delta = MessageDeltaBody {
        stop_reason: Some(outcome.reply.stop_reason),
        stop_sequence: outcome.reply.stop_sequence.clone(),
    };
    out.push(frame(&StreamEvent::MessageDelta { delta, usage }, 0));
    out.push(frame(&StreamEvent::MessageStop, 0));
    out
}

/// A fault applied to the stream.
#[derive(Debug, Clone)]
pub(crate) enum StreamFault {
    /// Pause `delay` after `after` events.
    Stall { after: u64, delay: Duration },
    /// Send an `error` event after `after` events, then end.
    Error { after: u64, error: ErrorBody },
    /// Fail the body after `after` events.
    Abort { after: u64 },
    /// Delay every event.
    Slow { delay: Duration },
}

struct State {
    buf: Bytes,
    marks: std::vec::IntoIter<(usize, u32)>,
    start: usize,
    sent: u64,
    per_token: Option<Duration>,
    fault: Option<StreamFault>,
    done: bool,
}

async fn next(mut st: State) -> Option<(Result<Frame<Bytes>, BoxError>, State)> {
    if st.done {
        return None;
    }
    let (end, tokens) = st.marks.next()?;
    let bytes = st.buf.slice(st.start..end);
    st.start = end;
    match &st.fault {
        Some(StreamFault::Stall { after, delay }) if *after == st.sent => {
            tokio::time::sleep(*delay).await;
        }
        Some(StreamFault::Error { after, error }) if *after == st.sent => {
            st.done = true;
            let event = StreamEvent::Error {
                error: error.clone(),
            };
            return Some((Ok(Frame::data(Bytes::from(event.to_sse()))), st));
        }
        Some(StreamFault::Abort { after }) if *after == st.sent => {
            st.done = true;
            // Let hyper flush what was sent before the connection is torn down.
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Some((Err(Box::new(ABORTED)), st));
        }
        Some(StreamFault::Slow { delay }) => tokio::time::sleep(*delay).await,
        _ => {}
    }
    if let Some(per_token) = st.per_token
        && tokens > 0
    {
        tokio::time::sleep(per_token.saturating_mul(tokens)).await;
    }
    st.sent += 1;
    Some((Ok(Frame::data(bytes)), st))
}

/// The body streaming `frames`, paced at `tokens_per_sec` (0 = unpaced) with `fault` applied.
pub(crate) fn body(frames: SseFrames, tokens_per_sec: f64, fault: Option<StreamFault>) -> SimBody {
    let per_token = (tokens_per_sec > 0.0 && tokens_per_sec.is_finite())
        .then(|| Duration::try_from_secs_f64(1.0 / tokens_per_sec).ok())
        .flatten();
    let buf = Bytes::from(frames.buf);
    if per_token.is_none() && fault.is_none() {
        // Unpaced: one chunk holding every event (still a chunked stream, as the API sends it).
        let stream = futures_util::stream::once(async move { Ok::<_, BoxError>(Frame::data(buf)) });
        return StreamBody::new(stream).boxed_unsync();
    }
    let state = State {
        buf,
        marks: frames.marks.into_iter(),
        start: 0,
        sent: 0,
        per_token,
        fault,
        done: false,
    };
    StreamBody::new(futures_util::stream::unfold(state, next)).boxed_unsync()
}
