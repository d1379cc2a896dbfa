//! Subcommands: `serve`, `sim`, `demo`, `migrate`, `config check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rampart_gateway::Gateway;
use rampart_gateway::config::{self, LogFormat, Sources};
use tokio::net::TcpListener;

use crate::demo;
use rampart_gateway::logging;

/// Rampart: a self-hosted gateway for Anthropic's Claude API.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run the Anthropic-compatible simulator.
    Sim(SimArgs),
    /// Run the simulator and the gateway together on embedded defaults, and print what a client needs.
    Demo(demo::DemoArgs),
    /// Apply pending database migrations (SQLite in the data dir, or RAMPART_DATABASE_URL).
    Migrate(MigrateArgs),
    /// Create the first admin from RAMPART_ADMIN_EMAIL and RAMPART_ADMIN_PASSWORD (once).
    Init(MigrateArgs),
    /// Virtual API keys in the store.
    Keys {
        #[command(subcommand)]
        command: crate::keys::KeysCommand,
    },
    /// People: create, list, change role or password, disable and enable users.
    Users {
        #[command(subcommand)]
        command: crate::people::UsersCommand,
    },
    /// Teams (tenants): create, list, rename, disable and enable.
    Teams {
        #[command(subcommand)]
        command: crate::people::TeamsCommand,
    },
    /// The tamper-evident audit log: verify the chain, export JSON lines.
    Audit {
        #[command(subcommand)]
        command: crate::audit::AuditCommand,
    },
    /// Upstream (Anthropic) API keys stored encrypted under RAMPART_MASTER_KEY.
    Upstreams {
        #[command(subcommand)]
        command: crate::upstreams::UpstreamsCommand,
    },
    /// Dead letters of the local batch queue: list, show, replay.
    Dlq {
        #[command(subcommand)]
        command: crate::dlq::DlqCommand,
    },
    /// Re-encrypt stored upstream keys under the current (first) RAMPART_MASTER_KEY entry.
    RotateMasterKey(MigrateArgs),
    /// Print a fresh random key for RAMPART_MASTER_KEY or RAMPART_JWT_SECRET (32 bytes, base64).
    Keygen,
    /// Usage and cost from the ledger (by key, team, model, day; a table, or --json).
    Usage(crate::usage::UsageArgs),
    /// Ask Claude one question through the Messages API (ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY).
    Ask(crate::ask::AskArgs),
    /// Message batches: submit a JSONL file (checked line by line first), wait with a progress
    /// bar, status, list, cancel, results (ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY).
    Batch {
        #[command(subcommand)]
        command: crate::batch::BatchCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file + RAMPART_* environment) and report every problem.
    Check {
        /// TOML configuration file.
        #[arg(long, short, env = "RAMPART_CONFIG")]
        config: Option<PathBuf>,
        /// Check as `rampart serve --data-dir DIR` would run (store, admin plane and its keys).
        #[arg(long, env = "RAMPART_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Check as `rampart serve --database-url URL` would run.
        #[arg(long, env = "RAMPART_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "RAMPART_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides server.listen); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// Serve virtual keys from the SQLite store in this directory (see `rampart keys`).
    #[arg(long, env = "RAMPART_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Serve virtual keys from this database (`postgres://…` or `sqlite://…`).
    #[arg(long, env = "RAMPART_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// `rampart migrate` / `rampart init` options.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Data directory of the embedded SQLite database (`rampart.db`), used without a URL.
    #[arg(long, env = "RAMPART_DATA_DIR", default_value = ".rampart")]
    pub data_dir: PathBuf,
    /// `sqlite://PATH?mode=rwc` or `postgres://...`; takes precedence over --data-dir.
    #[arg(long, env = "RAMPART_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Simulator options.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub listen: SocketAddr,
    /// Delay before response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// SSE pacing in output tokens per second; 0 streams as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_sec: f64,
    /// Simulated processing time of a message batch, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub batch_processing_ms: u64,
    /// Accept only this API key (default: any non-empty key).
    #[arg(long, env = "RAMPART_SIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Run the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Sim(args) => sim(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Init(args) => init(args).await,
        Command::Keys { command } => crate::keys::run(command).await,
        Command::Upstreams { command } => crate::upstreams::run(command).await,
        Command::Dlq { command } => crate::dlq::run(command).await,
        Command::RotateMasterKey(args) => crate::master_key::rotate(&args).await,
        Command::Users { command } => crate::people::users(command).await,
        Command::Teams { command } => crate::people::teams(command).await,
        Command::Audit { command } => crate::audit::run(command).await,
        Command::Usage(args) => crate::usage::run(args).await,
        Command::Ask(args) => crate::ask::run(args).await,
        Command::Batch { command } => crate::batch::run(command).await,
        Command::Keygen => {
            println!("{}", rampart_crypto::keyspec::generate().expose());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command:
                ConfigCommand::Check {
                    config,
                    data_dir,
                    database_url,
                },
        } => Ok(config_check(
            config,
            data_dir.is_some() || database_url.is_some(),
        )),
    }
}

/// Validate the configuration and, with a store, what `rampart serve` would also refuse (the
/// admin plane's exposure and keys); report every problem at once.
fn config_check(file: Option<PathBuf>, with_store: bool) -> ExitCode {
    let sources = Sources {
        file,
        use_env: true,
        store_keys: with_store,
        store_credentials: with_store,
        ..Sources::default()
    };
    let mut problems = Vec::new();
    let settings = match config::load(&sources) {
        Ok(s) => Some(s),
        Err(errors) => {
            problems.extend(errors.0);
            None
        }
    };
    if let Some(s) = settings.as_ref().filter(|s| with_store && s.admin.enabled) {
        let checks = [
            crate::admin::check_exposure(s),
            crate::admin::jwt_keys(s).map(drop),
            crate::secrets::master_keys().map(drop),
        ];
        problems.extend(
            checks
                .into_iter()
                .filter_map(Result::err)
                .map(|e| format!("{e:#}")),
        );
    }
    match settings {
        Some(s) if problems.is_empty() => {
            println!(
                "configuration OK: listen {}, upstream {}://{}{}, {} client key(s){}",
                s.listen,
                s.upstream.scheme,
                s.upstream.authority,
                s.upstream.path_prefix,
                s.keys.len(),
                if with_store && s.admin.enabled {
                    ", store and admin plane ready"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("configuration has {} problem(s):", problems.len());
            for p in &problems {
                eprintln!("  - {p}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Apply the embedded migrations and print every version with whether this run applied it.
/// Idempotent: a second run applies nothing.
/// Open the configured database (PostgreSQL URL, else SQLite in the data dir).
pub async fn open_store(args: &MigrateArgs) -> anyhow::Result<rampart_store::Store> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
            rampart_store::sqlite_url(&args.data_dir)
        }
    };
    rampart_store::Store::open(&url)
        .await
        .context("cannot open the database")
}

async fn init(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let (Ok(email), Ok(password)) = (
        std::env::var("RAMPART_ADMIN_EMAIL"),
        std::env::var("RAMPART_ADMIN_PASSWORD"),
    ) else {
        eprintln!(
            "rampart init: set RAMPART_ADMIN_EMAIL and RAMPART_ADMIN_PASSWORD (at least {} characters, not a common password)",
            rampart_crypto::password::MIN_LEN
        );
        return Ok(ExitCode::FAILURE);
    };
    let store = open_store(&args).await?;
    store.migrate().await.context("migration failed")?;
    let outcome = crate::bootstrap::first_admin(
        &store,
        &email,
        &rampart_crypto::Secret::new(password),
        &crate::people::actor(),
    )
    .await;
    store.close().await;
    match outcome? {
        crate::bootstrap::Outcome::Created => println!("created the first admin: {}", email.trim()),
        crate::bootstrap::Outcome::AlreadyInitialised => {
            println!("already initialised: users exist; nothing changed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args).await?;
    let report = store.migrate().await.context("migration failed")?;
    store.close().await;
    println!("{} database:", store.engine());
    for (version, name) in &report.already_applied {
        println!("  {version:04} {name}: already applied");
    }
    for (version, name) in &report.applied_now {
        println!("  {version:04} {name}: applied now");
    }
    println!(
        "{} migration(s) applied now, {} already applied; schema is up to date",
        report.applied_now.len(),
        report.already_applied.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut sources = Sources {
        file: args.config,
        use_env: true,
        ..Sources::default()
    };
    if let Some(listen) = args.listen {
        sources.overrides.push(("server.listen".to_owned(), listen));
    }
    let store_args =
        (args.data_dir.is_some() || args.database_url.is_some()).then(|| MigrateArgs {
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".rampart")),
            database_url: args.database_url.clone(),
        });
    sources.store_keys = store_args.is_some();
    sources.store_credentials = store_args.is_some();
    let settings = match config::load(&sources) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("configuration has {} problem(s):", errors.0.len());
            for p in &errors.0 {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let _log = logging::init(&settings.log.level, settings.log.format == LogFormat::Json);
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let mut auth: Vec<Arc<dyn rampart_gateway::auth::Authenticator>> =
        vec![Arc::new(settings.keys.clone())];
    let mut store_plane = None;
    let mut proxy_parts = rampart_gateway::proxy::ProxyParts::default();
    let mut limits_health = None;
    let mut admin_plane = None;
    if let Some(store_args) = &store_args {
        // Refuse an unsafe start before touching anything, naming the setting to fix.
        let admin_keys = if settings.admin.enabled {
            let checked = crate::admin::check_exposure(&settings)
                .and_then(|()| crate::admin::jwt_keys(&settings))
                .and_then(|jwt| Ok((jwt, Arc::new(crate::secrets::master_keys()?))));
            match checked {
                Ok(keys) => Some(keys),
                Err(e) => {
                    eprintln!("rampart serve: refusing to start: {e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        } else {
            None
        };
        let hasher = crate::keys::key_hasher(&store_args.data_dir)?;
        let store = open_store(store_args).await?;
        let limits_store = store.clone();
        store.migrate().await.context("migration failed")?;
        let directory = Arc::new(rampart_gateway::keydir::KeyDirectory::new(hasher.clone()));
        let master = admin_keys.as_ref().map(|(_, master)| master.clone());
        let targets = crate::upstreams::stored_targets(&settings, master.clone())?;
        let upstream = crate::upstreams::stored_upstream(&settings, master)?;
        if let Some((jwt, master)) = admin_keys {
            crate::admin::record_config(&store, &settings, &jwt.kids(), &master.ids())
                .await
                .context("cannot record the configuration in the audit log")?;
            let state = crate::admin::state(
                &settings,
                store.clone(),
                directory.clone(),
                hasher,
                jwt,
                master,
            );
            admin_plane = Some((state, store.clone()));
        }
        let options = rampart_gateway::store_plane::StorePlaneOptions {
            last_used_flush_every: settings.last_used_flush,
            ..Default::default()
        };
        let ledger_store = store.clone();
        let (mut plane, mut parts) = rampart_gateway::store_plane::StorePlane::start_with_targets(
            store,
            directory.clone(),
            upstream,
            targets,
            options,
        )
        .await?;
        // The usage ledger, spooled in the data dir (or `ledger.spool_dir`).
        if settings.ledger.enabled {
            let (ledger, writer) = rampart_ledger::Ledger::open(
                &settings.ledger,
                &store_args.data_dir.join("ledger-spool"),
                Gateway::worker_count(),
            )
            .context("cannot open the usage ledger's spool")?;
            parts.ledger = Some(ledger);
            // What a crash left in the spool counts in the budgets seeded below.
            let mut writer = writer;
            writer
                .catch_up(&ledger_store, rampart_ledger::ledger::CATCH_UP_LIMIT)
                .await;
            plane.run_ledger(ledger_store, writer);
        }
        (store_plane, proxy_parts) = (Some(plane), parts);
        auth.push(directory.clone());
        // Rate limits and budgets of store keys: in process, or shared through Redis.
        let (limits, health) = rampart_gateway::admission::Limits::start(
            &settings.limits,
            settings.prices.clone(),
            &directory,
            &limits_store,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        limits_health = Some((health, limits.clone()));
        // Message batches from the store: scoped, upstream or local mode, the durable queue.
        proxy_parts.batches = Some(rampart_gateway::batches::Batches::new(
            limits_store.clone(),
            settings.batches.clone(),
            Some(limits.clone()),
            Some(directory.clone()),
        ));
        proxy_parts.limits = Some(limits);
    }
    let auth = Arc::new(rampart_gateway::auth::AnyOf(auth));
    let mut gateway =
        Gateway::with_parts(settings, auth, proxy_parts).map_err(anyhow::Error::msg)?;
    let addr = listener.local_addr()?;
    let mut upkeep = None;
    let mut webhooks = None;
    if let Some((state, store)) = admin_plane {
        gateway = gateway.with_router(rampart_admin::router(state.clone()));
        upkeep = Some(state.spawn_upkeep());
        let base = gateway
            .settings()
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        crate::admin::bootstrap(&store, &state, &base).await?;
        webhooks = crate::webhooks::spawn_dispatcher(
            &gateway.settings().webhooks,
            &store,
            state.master_keys(),
            base,
        );
    }
    let shutdown = shutdown_signal();
    let (stop_batches, batches_stopped) = tokio::sync::watch::channel(false);
    let batch_workers = gateway.spawn_batch_workers(&batches_stopped);
    println!("listening on http://{addr}");
    tracing::info!(%addr, "gateway listening");
    gateway.serve(listener, shutdown).await?;
    // The batch workers settle the items in flight before the ledger and the store stop.
    let _ = stop_batches.send(true);
    for task in batch_workers {
        let _ = task.await;
    }
    if let Some(u) = upkeep {
        u.abort();
    }
    if let Some(w) = webhooks {
        w.stop().await;
    }
    if let Some(plane) = store_plane {
        plane.stop().await;
    }
    if let Some((task, limits)) = limits_health {
        // The batch items settled above went out on this runtime: sent before it stops.
        limits.flush().await;
        task.abort();
    }
    Ok(ExitCode::SUCCESS)
}

/// The simulator configuration for these options.
pub fn sim_config(args: &SimArgs) -> rampart_sim::SimConfig {
    rampart_sim::SimConfig {
        latency_ms: args.latency_ms,
        tokens_per_sec: args.tokens_per_sec,
        batch_processing_ms: args.batch_processing_ms,
        api_key: args.api_key.clone(),
        ..rampart_sim::SimConfig::default()
    }
}

async fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    let _log = logging::init("info", true);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal();
    println!("listening on http://{addr}");
    tracing::info!(%addr, "simulator listening");
    rampart_sim::serve(listener, sim_config(&args), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C. The SIGTERM handler is installed when this is called (not when
/// the future is first polled), so a SIGTERM right after "listening on" is never lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = term => {},
        }
        tracing::info!("shutdown signal received");
    }
}
