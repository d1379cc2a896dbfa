//! Message batches: submit three requests, wait until the batch has ended, print each result.
//! `cargo run -p rampart-client --example batch`

#![allow(clippy::print_stdout)]

use std::time::Duration;

use rampart_client::Client;
use rampart_client::types::{BatchRequest, BatchResult, MessageCreateParams, MessageParam};

#[tokio::main]
async fn main() -> Result<(), rampart_client::Error> {
    let client = Client::from_env()?;
    let requests: Vec<_> = ["red", "green", "blue"]
        .into_iter()
        .map(|colour| BatchRequest {
            custom_id: format!("colour-{colour}"),
            params: MessageCreateParams::new(
                "claude-haiku-4-5",
                64,
                vec![MessageParam::user(format!("echo: {colour} is a colour"))],
            ),
        })
        .collect();
    let batch = client.batches().create(&requests).await?;
    println!("created {} ({:?})", batch.id, batch.processing_status);
    let ended = client
        .batches()
        .wait_until_ended(&batch.id, Duration::from_secs(1))
        .await?;
    println!("ended: {:?}", ended.request_counts);
    let mut results = client.batches().results(&batch.id).await?;
    while let Some(line) = results.next_result().await {
        let line = line?;
        match line.result {
            BatchResult::Succeeded { message } => {
                println!("{}: {}", line.custom_id, message.text())
            }
            other => println!("{}: {other:?}", line.custom_id),
        }
    }
    Ok(())
}
