//! The messages pipeline shared by `POST /v1/messages` and batch items: validate, resolve the
//! model, split the prompt, apply the prompt cache, generate the reply, build the [`Message`].

use rampart_api::{ContentBlock, Message};
use serde_json::Value;

use crate::cache::{InputUsage, min_cacheable_tokens};
use crate::error::ApiError;
use crate::generate::{Block, Reply, reply, request_seed};
use crate::models::unknown_model;
use crate::state::Sim;
use crate::validate::{Endpoint, message_params};

/// A generated reply with its accounting.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The resolved model id.
    pub model: String,
    /// The reply.
    pub reply: Reply,
    /// Input-token split.
    pub input: InputUsage,
    /// Whether the request asked for a stream.
    pub stream: bool,
}

/// Runs one messages request. `credential` scopes the prompt cache; `None` disables caching.
///
/// # Errors
/// Validation errors (400) and unknown models (404).
pub(crate) fn run(sim: &Sim, body: &Value, credential: Option<&str>) -> Result<Outcome, ApiError> {
    let p = message_params(body, Endpoint::Create)?;
    let model = sim
        .catalogue
        .resolve(p.model)
        .ok_or_else(|| unknown_model(p.model))?;
    let prompt = crate::tokens::prompt(&p)?;
    let input = match credential {
        Some(key) => sim
            .cache
            .apply(&prompt, key, &model.id, min_cacheable_tokens(&model.id)),
        None => InputUsage::uncached(prompt.total),
    };
    let reply = reply(&p, &request_seed(&p));
    Ok(Outcome {
        model: model.id.clone(),
        reply,
        input,
        stream: p.stream,
    })
}

/// `count_tokens`: validates and counts.
///
/// # Errors
/// Validation errors (400) and unknown models (404).
pub(crate) fn count(sim: &Sim, body: &Value) -> Result<u64, ApiError> {
    let p = message_params(body, Endpoint::CountTokens)?;
    if sim.catalogue.resolve(p.model).is_none() {
        return Err(unknown_model(p.model));
    }
    Ok(crate::tokens::prompt(&p)?.total)
}

/// The response content of a generated block.
pub(crate) fn content_block(b: &Block) -> ContentBlock {
    match b {
        Block::Thinking {
            text, signature, ..
        } => ContentBlock::Thinking {
            thinking: text.text().to_owned(),
            signature: signature.clone(),
        },
        Block::Text(t) => ContentBlock::Text {
            text: t.text().to_owned(),
        },
        Block::ToolUse {
            id, name, input, ..
        } => ContentBlock::ToolUse {
            id: id.clone(),
            name: name.clone(),
            input: input.clone(),
        },
    }
}

/// The complete (non-streamed) message.
pub(crate) fn message(id: String, outcome: &Outcome, tier: &str) -> Message {
    Message {
        id,
        kind: "message".to_owned(),
        role: "assistant".to_owned(),
        content: outcome.reply.blocks.iter().map(content_block).collect(),
        model: outcome.model.clone(),
        stop_reason: Some(outcome.reply.stop_reason),
        stop_sequence: outcome.reply.stop_sequence.clone(),
        usage: outcome.input.usage(outcome.reply.output_tokens, tier),
    }
}
