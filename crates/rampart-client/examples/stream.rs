//! Streaming: print the answer as it is generated, then the accumulated message's usage.
//! `cargo run -p rampart-client --example stream -- "tell me about lighthouses"`

#![allow(clippy::print_stdout)]

use std::io::Write;

use rampart_client::Client;
use rampart_client::types::stream::{Delta, StreamEvent};
use rampart_client::types::{MessageCreateParams, MessageParam};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Tell me a short story".to_owned());
    let client = Client::from_env()?;
    let params =
        MessageCreateParams::new("claude-sonnet-4-6", 512, vec![MessageParam::user(prompt)]);
    let mut stream = client.messages().stream(&params).await?;
    let mut out = std::io::stdout();
    while let Some(event) = stream.next_event().await {
        if let StreamEvent::ContentBlockDelta {
            delta: Delta::TextDelta { text },
            ..
        } = event?
        {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    let request_id = stream.request_id().unwrap_or("?").to_owned();
    let message = stream.into_message()?;
    println!(
        "\n-- {} output tokens, stop reason {:?}, request {request_id}",
        message.usage.output_tokens, message.stop_reason
    );
    Ok(())
}
