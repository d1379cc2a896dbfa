//! What reading the usage from a simulator answer costs, per answer (release, warm).
//!
//! `cargo run --release -p rampart-gateway --example usage_read_cost [ITERATIONS]`; under
//! `valgrind --tool=callgrind` with a small count, the instructions per answer.
#![allow(clippy::print_stdout, clippy::expect_used)]

use std::hint::black_box;
use tokio::time::Instant;

use rampart_gateway::sse::{UsageScanner, UsageSummary};

const BODY: &[u8] = br#"{"id":"msg_01YUsUhs9SKPQt9NrJSkbk3M","type":"message","role":"assistant","content":[{"type":"text","text":"Steady signal on clear by clear as river signal late remains might few gateway. Small early second steady second but a summer remains. Between cache swift few writes becomes some across, mountain seems steady keeps signal, clear. Writes and, small engine by writes can mountain data signal next honest the calm. Becomes, second network."}],"model":"claude-sonnet-4-6","stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":23,"output_tokens":54,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"service_tier":"standard"}}"#;

const START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01YUsUhs9SKPQt9NrJSkbk3M\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-6\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":23,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"service_tier\":\"standard\"}}}\n\n";

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let summary = UsageSummary::from_json(BODY).expect("the answer is read");
    assert_eq!((summary.input_tokens, summary.output_tokens), (23, 54));
    let t = Instant::now();
    for _ in 0..n {
        black_box(UsageSummary::from_json(black_box(BODY)));
    }
    println!(
        "json answer: {:.0} ns",
        t.elapsed().as_nanos() as f64 / f64::from(n)
    );
    let t = Instant::now();
    for _ in 0..n {
        let mut s = UsageScanner::new();
        s.feed(black_box(START));
        black_box(s.into_summary());
    }
    println!(
        "message_start: {:.0} ns",
        t.elapsed().as_nanos() as f64 / f64::from(n)
    );
}
