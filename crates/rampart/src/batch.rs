//! `rampart batch submit|status|list|cancel|results`: Message Batches from the command line,
//! through rampart-client (base URL and key as `rampart ask` takes them).
//!
//! `submit` reads a JSONL file, one request a line (`{"custom_id": "...", "params": {...}}`), and
//! checks every line as the API would before sending anything: a file with any bad line is
//! refused whole, with every bad line named (number and reason). `--wait` then polls the batch
//! with backoff until it has ended, drawing a progress bar (counts by state, rate, ETA) when
//! standard error is a terminal and plain periodic lines when it is not. `results` copies the
//! results JSONL, line for line as the server sent it, to a file.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rampart_client::types::{BatchRequest, MessageBatch, MessageCreateParams, ProcessingStatus};
use rampart_client::{Client, Error, ListParams};
use serde_json::Value;
use tokio::time::Instant;

use crate::ask::ClientArgs;

/// The most requests one batch may hold (the API's limit).
pub const MAX_REQUESTS: usize = 100_000;
/// The largest batch body the API takes (256 MB).
pub const MAX_BODY_BYTES: usize = 256_000_000;
/// How many bad lines are printed before the rest are only counted.
const MAX_PRINTED_PROBLEMS: usize = 200;
/// First wait between two polls of `--wait`.
const FIRST_POLL: Duration = Duration::from_millis(500);
/// Plain progress lines (no terminal) at least this often, and whenever the counts change.
const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// `rampart batch …`
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Submit a JSONL file of requests (`{"custom_id": …, "params": {…}}` per line) as one
    /// batch; nothing is sent when any line is invalid. Prints the batch id.
    Submit {
        /// The JSONL file (`-` reads standard input).
        file: PathBuf,
        /// Wait until the batch has ended, with a progress bar, then print the final counts.
        #[arg(long)]
        wait: bool,
        /// Longest wait between two polls with --wait, in seconds.
        #[arg(long, default_value_t = 10.0)]
        max_poll_secs: f64,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Show a batch: status, counts by state, times.
    Status {
        /// The batch id (`msgbatch_…`).
        id: String,
        /// Print the API's batch object as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// List batches, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print the API's page as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Ask a batch to stop: it moves to `canceling`, then ends.
    Cancel {
        /// The batch id.
        id: String,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Write an ended batch's results (JSONL, one line per request, as the server sends them).
    Results {
        /// The batch id.
        id: String,
        /// The file to write (`-` or absent: standard output). Written under a temporary name
        /// and renamed when complete.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        conn: ClientArgs,
    },
}

/// Run a `batch` subcommand.
pub async fn run(cmd: BatchCommand) -> anyhow::Result<ExitCode> {
    let (verb, conn) = match &cmd {
        BatchCommand::Submit { conn, .. } => ("submit", conn),
        BatchCommand::Status { conn, .. } => ("status", conn),
        BatchCommand::List { conn, .. } => ("list", conn),
        BatchCommand::Cancel { conn, .. } => ("cancel", conn),
        BatchCommand::Results { conn, .. } => ("results", conn),
    };
    let fail = |e: &Error| {
        eprintln!("rampart batch {verb}: {e}");
        ExitCode::FAILURE
    };
    // A bad file is reported before anything else: it needs no key to be checked.
    let requests = match &cmd {
        BatchCommand::Submit { file, .. } => match read_requests(file)? {
            Ok(requests) => Some(requests),
            Err(problems) => return Ok(report_problems(file, &problems)),
        },
        _ => None,
    };
    let client = match conn.client() {
        Ok(c) => c,
        Err(e) => return Ok(fail(&e)),
    };
    let outcome = match cmd {
        BatchCommand::Submit {
            wait,
            max_poll_secs,
            ..
        } => {
            let max_poll = Duration::try_from_secs_f64(max_poll_secs)
                .ok()
                .filter(|d| *d >= FIRST_POLL)
                .context("--max-poll-secs must be at least 0.5")?;
            submit(&client, &requests.unwrap_or_default(), wait, max_poll).await
        }
        BatchCommand::Status { id, json, .. } => status(&client, &id, json).await,
        BatchCommand::List { limit, json, .. } => list(&client, limit, json).await,
        BatchCommand::Cancel { id, .. } => cancel(&client, &id).await,
        BatchCommand::Results { id, output, .. } => results(&client, &id, output.as_deref()).await,
    };
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure::Api(e)) => Ok(fail(&e)),
        Err(Failure::Local(e)) => Err(e),
    }
}

enum Failure {
    Api(Error),
    Local(anyhow::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Api(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Local(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Local(e.into())
    }
}

// --- validation ---------------------------------------------------------------------------------

/// One bad line of a requests file (`line` 0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number; 0 for a problem of the whole file.
    pub line: usize,
    /// What is wrong, naming the field.
    pub reason: String,
}

fn read_requests(
    file: &Path,
) -> anyhow::Result<Result<Vec<BatchRequest<MessageCreateParams>>, Vec<Problem>>> {
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .context("cannot read the requests from standard input")?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    Ok(parse_requests(&bytes))
}

fn report_problems(file: &Path, problems: &[Problem]) -> ExitCode {
    let name = file.display();
    match problems.iter().filter(|p| p.line > 0).count() {
        // Only problems of the file as a whole (empty, too many requests, too large).
        0 => eprintln!("rampart batch submit: {name}: nothing was submitted"),
        bad => {
            eprintln!("rampart batch submit: {name}: {bad} invalid line(s); nothing was submitted");
        }
    }
    for p in problems.iter().take(MAX_PRINTED_PROBLEMS) {
        if p.line == 0 {
            eprintln!("  {name}: {}", p.reason);
        } else {
            eprintln!("  {name}:{}: {}", p.line, p.reason);
        }
    }
    if problems.len() > MAX_PRINTED_PROBLEMS {
        eprintln!("  … and {} more", problems.len() - MAX_PRINTED_PROBLEMS);
    }
    ExitCode::FAILURE
}

/// Every request of a JSONL file, or every problem in it (blank lines are skipped). Checks what
/// the API refuses when a batch is created (`custom_id` pattern and uniqueness, the shape of
/// each line, the count and size of the batch) and what it would refuse in each request's
/// params (the wire types of `MessageCreateParams`, required fields, ranges, no streaming).
pub fn parse_requests(
    bytes: &[u8],
) -> Result<Vec<BatchRequest<MessageCreateParams>>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut requests = Vec::new();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(raw) {
            Ok(request) => {
                if let Some(first) = first_line_of.get(&request.custom_id) {
                    problems.push(Problem {
                        line,
                        reason: format!(
                            "custom_id {:?} is already used on line {first} (custom_id must be unique in a batch)",
                            request.custom_id
                        ),
                    });
                } else {
                    first_line_of.insert(request.custom_id.clone(), line);
                    requests.push(request);
                }
            }
            Err(reason) => problems.push(Problem { line, reason }),
        }
    }
    if problems.is_empty() {
        let whole = |reason: String| vec![Problem { line: 0, reason }];
        if requests.is_empty() {
            return Err(whole(
                "no requests: the file has no non-blank line".to_owned(),
            ));
        }
        if requests.len() > MAX_REQUESTS {
            return Err(whole(format!(
                "{} requests: a batch holds at most {MAX_REQUESTS}",
                requests.len()
            )));
        }
        let size = serde_json::to_vec(&serde_json::json!({ "requests": &requests }))
            .map_or(usize::MAX, |b| b.len());
        if size > MAX_BODY_BYTES {
            return Err(whole(format!(
                "the batch is {size} bytes: the API takes at most {MAX_BODY_BYTES}"
            )));
        }
        Ok(requests)
    } else {
        Err(problems)
    }
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_line(raw: &[u8]) -> Result<BatchRequest<MessageCreateParams>, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        let mut msg = e.to_string();
        if let Some(at) = msg.rfind(" at line ") {
            msg.truncate(at);
        }
        format!("not valid JSON: {msg} at column {}", e.column())
    })?;
    let Value::Object(mut obj) = value else {
        return Err("expected a JSON object {\"custom_id\": \"…\", \"params\": {…}}".to_owned());
    };
    if let Some(extra) = obj.keys().find(|k| *k != "custom_id" && *k != "params") {
        return Err(format!(
            "unknown field {extra:?}: a line holds only custom_id and params"
        ));
    }
    let custom_id = match obj.remove("custom_id") {
        None | Some(Value::Null) => return Err("custom_id: missing".to_owned()),
        Some(Value::String(s)) if valid_custom_id(&s) => s,
        Some(Value::String(s)) => {
            return Err(format!(
                "custom_id {s:?}: must be 1 to 64 characters of letters, digits, _ and - (^[a-zA-Z0-9_-]{{1,64}}$)"
            ));
        }
        Some(_) => return Err("custom_id: must be a string".to_owned()),
    };
    let ctx = |reason: String| format!("custom_id {custom_id:?}: {reason}");
    let mut params = match obj.remove("params") {
        None | Some(Value::Null) => return Err(ctx("params: missing".to_owned())),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(ctx(
                "params: must be an object (the Messages API parameters)".to_owned(),
            ));
        }
    };
    match params.remove("stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(ctx("params.stream: batch requests cannot stream".to_owned()));
        }
        Some(_) => return Err(ctx("params.stream: must be a boolean".to_owned())),
    }
    let typed: MessageCreateParams = serde_path_to_error::deserialize(Value::Object(params))
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            if path == "." {
                ctx(format!("params: {inner}"))
            } else {
                ctx(format!("params.{path}: {inner}"))
            }
        })?;
    check_params(&typed).map_err(ctx)?;
    Ok(BatchRequest {
        custom_id,
        params: typed,
    })
}

/// What the API refuses in params that deserialise: empty or out-of-range values.
fn check_params(p: &MessageCreateParams) -> Result<(), String> {
    if p.model.trim().is_empty() {
        return Err("params.model: must not be empty".to_owned());
    }
    if p.max_tokens == 0 {
        return Err("params.max_tokens: must be at least 1".to_owned());
    }
    if p.messages.is_empty() {
        return Err("params.messages: at least one message is required".to_owned());
    }
    let last = p.messages.len() - 1;
    for (i, m) in p.messages.iter().enumerate() {
        let empty = match &m.content {
            rampart_client::types::MessageContent::Text(t) => t.is_empty(),
            rampart_client::types::MessageContent::Blocks(b) => b.is_empty(),
        };
        let final_assistant = i == last && m.role == rampart_client::types::Role::Assistant;
        if empty && !final_assistant {
            return Err(format!(
                "params.messages.{i}.content: must not be empty (only a final assistant message may be)"
            ));
        }
    }
    for (name, v) in [("temperature", p.temperature), ("top_p", p.top_p)] {
        if let Some(x) = v
            && !(0.0..=1.0).contains(&x)
        {
            return Err(format!("params.{name}: must be between 0 and 1, not {x}"));
        }
    }
    if let Some(stops) = &p.stop_sequences
        && let Some(i) = stops.iter().position(|s| s.trim().is_empty())
    {
        return Err(format!(
            "params.stop_sequences.{i}: must contain non-whitespace"
        ));
    }
    Ok(())
}

// --- commands -----------------------------------------------------------------------------------

async fn submit(
    client: &Client,
    requests: &[BatchRequest<MessageCreateParams>],
    wait: bool,
    max_poll: Duration,
) -> Result<(), Failure> {
    let batch = client.batches().create(requests).await?;
    println!("{}", batch.id);
    std::io::stdout().flush()?;
    eprintln!(
        "rampart batch submit: {} submitted with {} request(s)",
        batch.id,
        requests.len()
    );
    if !wait {
        return Ok(());
    }
    let ended = wait_until_ended(client, (*batch).clone(), max_poll).await?;
    let c = ended.request_counts;
    println!(
        "{} ended: {} request(s): succeeded {}, errored {}, canceled {}, expired {}",
        ended.id,
        total(&ended),
        c.succeeded,
        c.errored,
        c.canceled,
        c.expired
    );
    eprintln!(
        "rampart batch submit: results: rampart batch results {} -o FILE",
        ended.id
    );
    Ok(())
}

/// Polls `batch` until it has ended: after 0.5 s, then 1.5 times longer each time the counts
/// have not moved, up to `max_poll` (back to 0.5 s when they move).
async fn wait_until_ended(
    client: &Client,
    mut batch: MessageBatch,
    max_poll: Duration,
) -> Result<MessageBatch, Failure> {
    let mut progress = Progress::new(&batch);
    let mut interval = FIRST_POLL;
    while batch.processing_status != ProcessingStatus::Ended {
        tokio::time::sleep(interval).await;
        let next = match client.batches().retrieve(&batch.id).await {
            Ok(b) => (*b).clone(),
            Err(e) => {
                progress.finish();
                return Err(e.into());
            }
        };
        interval = next_poll(
            interval,
            next.request_counts != batch.request_counts,
            max_poll,
        );
        batch = next;
        progress.update(&batch);
    }
    progress.finish();
    Ok(batch)
}

/// The wait before the next poll: back to 0.5 s when the counts moved, else 1.5 times the last
/// wait, at most `max`.
fn next_poll(last: Duration, moved: bool, max: Duration) -> Duration {
    if moved {
        FIRST_POLL.min(max)
    } else {
        max.min(last.mul_f64(1.5))
    }
}

fn total(b: &MessageBatch) -> u64 {
    let c = b.request_counts;
    c.processing + c.succeeded + c.errored + c.canceled + c.expired
}

/// The progress of `--wait`: a bar on a terminal, else a plain line when the counts change (and
/// every 30 s).
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    done_at_start: u64,
    last_line: Option<(Instant, rampart_client::types::RequestCounts)>,
}

impl Progress {
    fn new(batch: &MessageBatch) -> Self {
        let total = total(batch);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let done_at_start = total - batch.request_counts.processing;
        let mut p = Self {
            bar,
            started: Instant::now(),
            done_at_start,
            last_line: None,
        };
        p.update(batch);
        p
    }

    /// `processing 3 · succeeded 1 · … · 0.5/s · ETA 6s`.
    fn summary(&self, batch: &MessageBatch) -> String {
        let c = batch.request_counts;
        let done = total(batch) - c.processing;
        let secs = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let rate = if secs > 0.0 {
            done.saturating_sub(self.done_at_start) as f64 / secs
        } else {
            0.0
        };
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let eta = if batch.processing_status == ProcessingStatus::Ended || c.processing == 0 {
            "done".to_owned()
        } else if rate > 0.0 {
            format!("ETA {}", human_secs(c.processing as f64 / rate))
        } else {
            "ETA ?".to_owned()
        };
        format!(
            "{} · processing {} · succeeded {} · errored {} · canceled {} · expired {} · {rate:.1}/s · {eta}",
            status_name(batch.processing_status),
            c.processing,
            c.succeeded,
            c.errored,
            c.canceled,
            c.expired,
        )
    }

    fn update(&mut self, batch: &MessageBatch) {
        let done = total(batch) - batch.request_counts.processing;
        let summary = self.summary(batch);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(summary);
            return;
        }
        let now = Instant::now();
        let due = match self.last_line {
            None => true,
            Some((at, counts)) => {
                counts != batch.request_counts || now.duration_since(at) >= PLAIN_EVERY
            }
        };
        if due {
            eprintln!("{}: {done}/{} done · {summary}", batch.id, total(batch));
            self.last_line = Some((now, batch.request_counts));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn human_secs(secs: f64) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rounded, clamped"
    )]
    let s = secs.clamp(0.0, 1e9).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn status_name(s: ProcessingStatus) -> &'static str {
    match s {
        ProcessingStatus::InProgress => "in_progress",
        ProcessingStatus::Canceling => "canceling",
        ProcessingStatus::Ended => "ended",
    }
}

fn print_batch(b: &MessageBatch) {
    let c = b.request_counts;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    println!("id            {}", b.id);
    println!("status        {}", status_name(b.processing_status));
    println!(
        "requests      {} (processing {}, succeeded {}, errored {}, canceled {}, expired {})",
        total(b),
        c.processing,
        c.succeeded,
        c.errored,
        c.canceled,
        c.expired
    );
    println!("created_at    {}", b.created_at);
    println!("expires_at    {}", b.expires_at);
    println!("ended_at      {}", or_dash(&b.ended_at));
    println!("cancel_initiated_at {}", or_dash(&b.cancel_initiated_at));
    println!("results_url   {}", or_dash(&b.results_url));
}

async fn status(client: &Client, id: &str, json: bool) -> Result<(), Failure> {
    let batch = client.batches().retrieve(id).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&*batch).context("cannot print the batch")?
        );
    } else {
        print_batch(&batch);
    }
    Ok(())
}

async fn list(client: &Client, limit: u32, json: bool) -> Result<(), Failure> {
    let page = client.batches().list(&ListParams::limit(limit)).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&*page).context("cannot print the page")?
        );
        return Ok(());
    }
    println!(
        "{:<40} {:<12} {:<26} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8}",
        "ID",
        "STATUS",
        "CREATED",
        "REQUESTS",
        "PROCESSING",
        "SUCCEEDED",
        "ERRORED",
        "CANCELED",
        "EXPIRED"
    );
    for b in &page.data {
        let c = b.request_counts;
        println!(
            "{:<40} {:<12} {:<26} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8}",
            b.id,
            status_name(b.processing_status),
            b.created_at,
            total(b),
            c.processing,
            c.succeeded,
            c.errored,
            c.canceled,
            c.expired
        );
    }
    if page.has_more {
        eprintln!(
            "rampart batch list: more batches exist (showing {}; raise --limit)",
            page.data.len()
        );
    }
    Ok(())
}

async fn cancel(client: &Client, id: &str) -> Result<(), Failure> {
    let batch = client.batches().cancel(id).await?;
    print_batch(&batch);
    Ok(())
}

async fn results(client: &Client, id: &str, output: Option<&Path>) -> Result<(), Failure> {
    let mut results = client.batches().results(id).await?;
    let to_file = output.filter(|p| *p != Path::new("-"));
    let Some(path) = to_file else {
        let mut out = std::io::stdout().lock();
        let mut n = 0u64;
        while let Some(line) = results.next_raw_line().await {
            out.write_all(&line?)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        out.flush()?;
        eprintln!("rampart batch results: {n} result(s)");
        return Ok(());
    };
    let partial = partial_name(path);
    let written = async {
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let mut n = 0u64;
        while let Some(line) = results.next_raw_line().await {
            let line = line.map_err(Failure::Api)?;
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        let file = out
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {}", partial.display(), e.error()))?;
        file.sync_all()?;
        std::fs::rename(&partial, path).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), path.display())
        })?;
        Ok::<u64, Failure>(n)
    }
    .await;
    match written {
        Ok(n) => {
            eprintln!(
                "rampart batch results: wrote {n} result(s) to {}",
                path.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// `FILE.partial` beside `FILE`.
fn partial_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        match parse_requests(text.as_bytes()) {
            Ok(r) => panic!("expected problems, got {} requests", r.len()),
            Err(p) => p,
        }
    }

    const GOOD: &str = r#"{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}}"#;

    #[test]
    fn accepts_good_lines_and_skips_blank_ones() {
        let text = format!("{GOOD}\n\n{}\r\n", GOOD.replace("\"a\"", "\"b\""));
        let r = parse_requests(text.as_bytes()).unwrap_or_default();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].custom_id, "b");
        assert_eq!(r[0].params.max_tokens, 5);
    }

    #[test]
    fn reports_every_bad_line_with_its_number() {
        let text = [
            GOOD,
            "{not json",
            r#"{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}}"#,
            r#"{"custom_id":"has space","params":{}}"#,
            r#"{"custom_id":"c","params":{"model":"m","messages":[{"role":"user","content":"x"}]}}"#,
            r#"{"custom_id":"d","params":{"model":"m","max_tokens":"many","messages":[]}}"#,
            r#"{"custom_id":"e","params":{"model":"m","max_tokens":1,"messages":[{"role":"robot","content":"x"}]}}"#,
            r#"{"custom_id":"f","params":{"model":"m","max_tokens":1,"stream":true,"messages":[{"role":"user","content":"x"}]}}"#,
            r#"{"custom_id":"g","params":{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}}"#,
            r#"[1,2]"#,
            r#"{"custom_id":"h","params":"text"}"#,
            r#"{"custom_id":"i","params":{"model":"m","max_tokens":1,"messages":[]}}"#,
            r#"{"custom_id":"j","params":{"model":"m","max_tokens":1,"temperature":1.5,"messages":[{"role":"user","content":"x"}]}}"#,
            r#"{"custom_id":"k","extra":1,"params":{}}"#,
        ]
        .join("\n");
        let p = problems(&text);
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, (2..=14).collect::<Vec<_>>(), "{p:#?}");
        let reason = |line: usize| p[line - 2].reason.clone();
        assert!(reason(2).starts_with("not valid JSON"), "{}", reason(2));
        assert!(
            reason(3).contains("already used on line 1"),
            "{}",
            reason(3)
        );
        assert!(reason(4).contains("^[a-zA-Z0-9_-]{1,64}$"), "{}", reason(4));
        assert!(
            reason(5).contains("missing field `max_tokens`"),
            "{}",
            reason(5)
        );
        assert!(reason(6).contains("params.max_tokens"), "{}", reason(6));
        assert!(
            reason(7).contains("params.messages[0].role"),
            "{}",
            reason(7)
        );
        assert!(reason(8).contains("cannot stream"), "{}", reason(8));
        assert!(reason(9).contains("at least 1"), "{}", reason(9));
        assert!(
            reason(10).contains("expected a JSON object"),
            "{}",
            reason(10)
        );
        assert!(reason(11).contains("must be an object"), "{}", reason(11));
        assert!(
            reason(12).contains("at least one message"),
            "{}",
            reason(12)
        );
        assert!(reason(13).contains("between 0 and 1"), "{}", reason(13));
        assert!(
            reason(14).contains("unknown field \"extra\""),
            "{}",
            reason(14)
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert_eq!(problems("\n \n")[0].line, 0);
    }

    #[test]
    fn polling_backs_off_while_nothing_moves_and_resets_when_it_does() {
        let max = Duration::from_secs(10);
        let mut waits = vec![FIRST_POLL];
        for _ in 0..10 {
            waits.push(next_poll(*waits.last().unwrap_or(&FIRST_POLL), false, max));
        }
        assert_eq!(waits[1], Duration::from_millis(750));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(waits[10], max);
        assert_eq!(next_poll(max, true, max), FIRST_POLL);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_secs(5.4), "5s");
        assert_eq!(human_secs(125.0), "2m05s");
        assert_eq!(human_secs(7300.0), "2h01m");
    }
}
