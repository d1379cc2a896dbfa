//! A tool-use loop: the model calls `get_weather`, the program answers, the model finishes.
//! `cargo run -p rampart-client --example tools -- "What is the weather in Paris? use get_weather"`

#![allow(clippy::print_stdout)]

use rampart_client::Client;
use rampart_client::types::{
    ContentBlock, ContentBlockParam, MessageCreateParams, MessageParam, StopReason, Tool,
};
use serde_json::{Value, json};

/// The local implementation of the tool.
fn get_weather(input: &Value) -> String {
    let city = input["city"].as_str().unwrap_or("somewhere");
    format!("18 degrees and clear in {city}")
}

#[tokio::main]
async fn main() -> Result<(), rampart_client::Error> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the weather in Paris? use get_weather".to_owned());
    let client = Client::from_env()?;
    let tool = Tool::new(
        "get_weather",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    )
    .description("The current weather in a city");
    let mut params =
        MessageCreateParams::new("claude-sonnet-4-6", 512, vec![MessageParam::user(prompt)])
            .tools([tool]);
    // At most a few rounds: each tool call is answered, then the model continues.
    for _ in 0..4 {
        let reply = client.messages().create(&params).await?;
        params.messages.push(MessageParam::from(&*reply));
        if reply.stop_reason != Some(StopReason::ToolUse) {
            println!("{}", reply.text());
            return Ok(());
        }
        let results: Vec<ContentBlockParam> = reply
            .content
            .iter()
            .filter_map(|block| match block {
                ContentBlock::ToolUse { id, name, input } if name == "get_weather" => {
                    println!("-- tool call {name}({input})");
                    Some(ContentBlockParam::tool_result(
                        id.clone(),
                        get_weather(input),
                    ))
                }
                _ => None,
            })
            .collect();
        params.messages.push(MessageParam::user(results));
    }
    println!("-- stopped after 4 rounds");
    Ok(())
}
