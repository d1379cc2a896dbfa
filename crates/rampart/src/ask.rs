//! `rampart ask`: one question to the Messages API — Rampart's or Anthropic's — through
//! rampart-client, printing the answer (as it arrives with `--stream`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rampart_client::types::stream::{Delta, StreamEvent};
use rampart_client::types::{MessageCreateParams, MessageParam, StopReason};
use rampart_client::{Client, Error, Secret};

/// `rampart ask` options.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// The prompt; `-` reads it from standard input.
    prompt: String,
    /// Model id or alias.
    #[arg(long, short, default_value = "claude-sonnet-4-6")]
    model: String,
    /// Upper bound on output tokens.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u64,
    /// Print the answer as it is generated.
    #[arg(long)]
    stream: bool,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    conn: ClientArgs,
}

/// Where the API is and how to talk to it: `rampart ask`'s and `rampart batch`'s options.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Where to send it [default: ANTHROPIC_BASE_URL, else https://api.anthropic.com].
    #[arg(long)]
    base_url: Option<String>,
    /// API key [default: ANTHROPIC_API_KEY]. Prefer the variable: arguments are visible to
    /// other users of the machine.
    #[arg(long)]
    api_key: Option<String>,
    /// Timeout of each attempt in seconds [default: 600].
    #[arg(long)]
    timeout_secs: Option<f64>,
    /// Retries after the first attempt [default: 2].
    #[arg(long)]
    max_retries: Option<u32>,
}

/// Run `rampart ask`: the answer on stdout; on failure the typed error on stderr and exit 1.
pub async fn run(args: AskArgs) -> anyhow::Result<ExitCode> {
    let client = match args.conn.client() {
        Ok(c) => c,
        Err(e) => return Ok(fail(&e)),
    };
    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the prompt from standard input")?;
        text
    } else {
        args.prompt.clone()
    };
    let mut params = MessageCreateParams::new(
        &args.model,
        args.max_tokens,
        vec![MessageParam::user(prompt)],
    );
    if let Some(system) = &args.system {
        params = params.system(system.as_str());
    }
    let mut out = std::io::stdout().lock();
    let outcome = if args.stream {
        stream(&client, &params, &mut out).await
    } else {
        create(&client, &params, &mut out).await
    };
    match outcome {
        Ok(stop) => {
            if let Some(note) = stop.and_then(stop_note) {
                eprintln!("rampart ask: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Failure::Api(e)) => {
            let _ = out.flush();
            Ok(fail(&e))
        }
        Err(Failure::Output(e)) => Err(e).context("cannot write the answer"),
    }
}

impl ClientArgs {
    /// A client for the Messages API: `--base-url` / `--api-key` when given, else
    /// `ANTHROPIC_BASE_URL` / `ANTHROPIC_API_KEY`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] without any key, or for a timeout that is not a positive number.
    pub fn client(&self) -> Result<Client, Error> {
        let env_key = std::env::var("ANTHROPIC_API_KEY").unwrap_or_default();
        if self.api_key.is_none() && env_key.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "no API key: set ANTHROPIC_API_KEY (or pass --api-key)".into(),
            ));
        }
        let mut b = Client::builder().from_env();
        if let Some(url) = &self.base_url {
            b = b.base_url(url);
        }
        if let Some(key) = &self.api_key {
            b = b.api_key(Secret::new(key.clone()));
        }
        if let Some(secs) = self.timeout_secs {
            let timeout = Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--timeout-secs {secs}: must be a positive number"
                    ))
                })?;
            b = b.timeout(timeout);
        }
        if let Some(n) = self.max_retries {
            b = b.max_retries(n);
        }
        b.build()
    }
}

enum Failure {
    Api(Error),
    Output(std::io::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Api(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e)
    }
}

async fn create(
    client: &Client,
    params: &MessageCreateParams,
    out: &mut impl Write,
) -> Result<Option<StopReason>, Failure> {
    let message = client.messages().create(params).await?;
    let text = message.text();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(message.stop_reason)
}

async fn stream(
    client: &Client,
    params: &MessageCreateParams,
    out: &mut impl Write,
) -> Result<Option<StopReason>, Failure> {
    let mut stream = client.messages().stream(params).await?;
    let mut last = b'\n';
    let mut stop = None;
    while let Some(event) = stream.next_event().await {
        match event {
            Ok(StreamEvent::ContentBlockDelta {
                delta: Delta::TextDelta { text },
                ..
            }) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
                last = text.as_bytes().last().copied().unwrap_or(last);
            }
            Ok(StreamEvent::MessageDelta { delta, .. }) => stop = delta.stop_reason,
            Ok(_) => {}
            Err(e) => {
                if last != b'\n' {
                    out.write_all(b"\n")?;
                }
                return Err(Failure::Api(e));
            }
        }
    }
    if last != b'\n' {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(stop)
}

/// A note for stop reasons the reader should know about (the answer is cut short or absent).
fn stop_note(stop: StopReason) -> Option<&'static str> {
    match stop {
        StopReason::MaxTokens => Some("stopped at --max-tokens; the answer is cut short"),
        StopReason::Refusal => Some("the model declined to answer"),
        StopReason::ModelContextWindowExceeded => Some("the context window is full"),
        StopReason::ToolUse => Some("the model asked to call a tool"),
        StopReason::PauseTurn => Some("the model paused its turn"),
        StopReason::EndTurn | StopReason::StopSequence => None,
    }
}

/// Prints the typed error (class, status, message, request id — never the key) and exits 1.
fn fail(e: &Error) -> ExitCode {
    eprintln!("rampart ask: {e}");
    ExitCode::FAILURE
}
