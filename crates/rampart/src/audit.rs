//! `rampart audit verify|export`: check the hash chain of the audit log, and write it as JSON
//! lines for a SIEM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use rampart_admin::views::AuditView;
use rampart_store::AuditQuery;

use crate::cli::MigrateArgs;
use crate::people::existing;

/// `rampart audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain: exit 0 if every row links to the previous one and matches its hash,
    /// else exit 1 naming the first edited, deleted or reordered row.
    Verify {
        /// Also require the chain to reach this head (`SEQ:HASH` as printed by an earlier
        /// verify), which detects rows deleted from the end.
        #[arg(long)]
        expect_head: Option<String>,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Write events as JSON lines, oldest first.
    Export {
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after_seq: i64,
        #[command(flatten)]
        store: MigrateArgs,
    },
}

/// Run an `audit` subcommand.
///
/// # Errors
/// A store or I/O failure.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { expect_head, store } => verify(expect_head, &store).await,
        AuditCommand::Export {
            output,
            after_seq,
            store,
        } => export(output, after_seq, &store).await,
    }
}

async fn verify(expect_head: Option<String>, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = existing(args).await?;
    let head = store.audit_head().await?;
    if let Some(broken) = store.verify_audit_chain().await? {
        eprintln!("{broken}");
        return Ok(ExitCode::FAILURE);
    }
    let (seq, hash) = head.map_or((0, String::new()), |(s, h)| (s, hex::encode(h)));
    if let Some(expected) = expect_head {
        let Some((e_seq, e_hash)) = expected.split_once(':') else {
            bail!("--expect-head must be SEQ:HASH");
        };
        let e_seq: i64 = e_seq
            .parse()
            .context("--expect-head: SEQ must be a number")?;
        // The expected head must still be in the chain, unchanged.
        let row = store
            .list_audit(&AuditQuery {
                cursor: Some(e_seq - 1),
                limit: 1,
                ..AuditQuery::default()
            })
            .await?;
        match row.first() {
            Some(r) if r.seq == e_seq && hex::encode(&r.hash) == e_hash.to_ascii_lowercase() => {}
            _ => {
                eprintln!(
                    "audit chain broken: the expected head {e_seq} is missing or changed (rows deleted from the end?); the chain now ends at seq {seq}"
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    println!("audit chain OK: {seq} events; head {seq}:{hash}");
    Ok(ExitCode::SUCCESS)
}

async fn export(
    output: Option<PathBuf>,
    after_seq: i64,
    args: &MigrateArgs,
) -> anyhow::Result<ExitCode> {
    let store = existing(args).await?;
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut cursor = after_seq;
    let mut written = 0u64;
    loop {
        let page = store
            .list_audit(&AuditQuery {
                cursor: Some(cursor),
                limit: 1000,
                ..AuditQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        for event in page {
            serde_json::to_writer(&mut out, &AuditView::from(event))?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    if let Some(path) = output {
        eprintln!("wrote {written} events to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
