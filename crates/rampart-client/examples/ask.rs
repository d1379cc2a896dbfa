//! One question, one answer: `cargo run -p rampart-client --example ask -- "echo: hello"`.
//!
//! Reads `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY` (export what `rampart demo` prints).

#![allow(clippy::print_stdout)]

use rampart_client::Client;
use rampart_client::types::{MessageCreateParams, MessageParam};

#[tokio::main]
async fn main() -> Result<(), rampart_client::Error> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Hello, Claude".to_owned());
    let client = Client::from_env()?;
    let params =
        MessageCreateParams::new("claude-sonnet-4-6", 256, vec![MessageParam::user(prompt)])
            .system("Answer briefly.");
    let message = client.messages().create(&params).await?;
    println!("{}", message.text());
    println!(
        "-- {} input + {} output tokens, stop reason {:?}, request {}",
        message.usage.input_tokens,
        message.usage.output_tokens,
        message.stop_reason,
        message.request_id().unwrap_or("?")
    );
    Ok(())
}
