//! `rampart demo`: the simulator and the gateway in one process, on embedded defaults.
//!
//! Keys live in the data directory (mode 0600) so a client configured once keeps working across
//! restarts; a fresh directory gets fresh random keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use rampart_gateway::auth::{AnyOf, Authenticator};
use rampart_gateway::config::{self, Sources};
use rampart_gateway::keydir::KeyDirectory;
use rampart_gateway::store_plane::{StorePlane, StorePlaneOptions};
use rampart_gateway::{Gateway, Secret};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{self, SimArgs};
use crate::secret_file::stored_key;
use rampart_gateway::logging;

/// Demo options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway listen address; port 0 picks a free port. The simulator binds the same host.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the demo keeps its keys (and, in later versions, its database).
    #[arg(long, default_value = ".rampart-demo")]
    data_dir: PathBuf,
    /// Simulator delay before response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    sim_latency_ms: u64,
    /// Simulator SSE pacing in output tokens per second; 0 streams as fast as possible.
    #[arg(long, default_value_t = 80.0)]
    sim_tokens_per_sec: f64,
    /// Simulated processing time of a message batch, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    sim_batch_processing_ms: u64,
    /// A configuration file merged under the demo's own listen address and simulator URL (e.g.
    /// `[upstream.retry]`, `[upstream.breaker]`, `[routing]`); its `[routing]` replaces the
    /// demo's aliases and `auto` model.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The demo's model routing, when no configuration file is given: three aliases, an Opus model
/// falling back to Sonnet, and the `auto` model.
const DEMO_ROUTING: &str = r#"
[routing.aliases]
fast = "claude-haiku-4-5"
smart = "claude-sonnet-4-6"
best = "claude-opus-4-6"
[routing.fallbacks]
"claude-opus-4-6" = ["claude-sonnet-4-6"]
[routing.auto]
"#;

/// The demo's admin account.
const DEMO_ADMIN: &str = "admin@rampart.demo";

/// Run the demo until SIGTERM / Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let _log = logging::init("info", true);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let client_key = stored_key(&args.data_dir.join("demo-api-key"), "rk_demo_")?;
    // The demo admin: a fresh random password per data dir, kept beside the database (0600).
    let admin_password = stored_key(&args.data_dir.join("demo-admin-password"), "demo-")?;
    let store = rampart_store::Store::open(&rampart_store::sqlite_url(&args.data_dir))
        .await
        .context("cannot open the demo database")?;
    store
        .migrate()
        .await
        .context("demo database migration failed")?;
    let admin_secret = Secret::new(admin_password.clone());
    let outcome = crate::bootstrap::first_admin(&store, DEMO_ADMIN, &admin_secret, "demo")
        .await
        .context("cannot create the demo admin")?;
    if outcome == crate::bootstrap::Outcome::AlreadyInitialised {
        let matches = store
            .get_user_by_email(DEMO_ADMIN)
            .await
            .is_ok_and(|u| rampart_crypto::password::verify(&admin_secret, &u.password_hash));
        if !matches {
            eprintln!(
                "rampart demo: the data dir's users were not created by this demo (or its password file changed); \
                 the printed admin password may not work — use a fresh --data-dir"
            );
        }
    }
    let upstream_key = stored_key(&args.data_dir.join("sim-upstream-key"), "sk-ant-sim-")?;

    let sim_listener = TcpListener::bind(SocketAddr::new(args.listen.ip(), 0))
        .await
        .context("cannot bind the simulator")?;
    let sim_addr = sim_listener.local_addr()?;
    let gw_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let gw_addr = gw_listener.local_addr()?;

    let routing = if args.config.is_some() {
        ""
    } else {
        DEMO_ROUTING
    };
    let settings = config::load(&Sources {
        file: args.config.clone(),
        inline_toml: Some(format!(
            "[server]\nlisten = \"{gw_addr}\"\n[upstream]\nbase_url = \"http://{sim_addr}\"\n{routing}"
        )),
        upstream_api_key: Some(Secret::new(upstream_key)),
        client_keys: vec![Secret::new(client_key.clone())],
        ..Sources::default()
    })
    .map_err(|e| anyhow::anyhow!("demo configuration invalid:\n{e}"))?;
    // The store's keys and the admin plane, with the demo's own signing and master keys (random
    // per data dir, mode 0600; `rampart serve` takes them from the environment instead).
    let hasher = crate::keys::key_hasher(&args.data_dir)?;
    let directory = Arc::new(KeyDirectory::new(hasher.clone()));
    let jwt_spec = Secret::new(stored_key(&args.data_dir.join("jwt-secret"), "")?);
    let master_spec = Secret::new(stored_key(&args.data_dir.join("master-key"), "")?);
    let jwt = crate::admin::jwt_keys_from(&settings, &jwt_spec)?;
    let master = rampart_crypto::envelope::MasterKeys::from_spec(&master_spec, "demo master key")
        .map_err(anyhow::Error::msg)?;
    let admin = crate::admin::state(
        &settings,
        store.clone(),
        directory.clone(),
        hasher,
        jwt,
        Arc::new(master),
    );
    let upkeep = admin.spawn_upkeep();
    // Webhooks on batch end, as `rampart serve` sends them.
    let webhooks = crate::webhooks::spawn_dispatcher(
        &settings.webhooks,
        &store,
        admin.master_keys(),
        format!("http://{gw_addr}"),
    );
    // Key reloads, last-use flushes and denial audit rows, as `rampart serve` runs them.
    let (mut plane, mut parts) = StorePlane::start(
        store.clone(),
        directory.clone(),
        None,
        StorePlaneOptions::default(),
    )
    .await?;
    let (ledger, writer) = rampart_ledger::Ledger::open(
        &settings.ledger,
        &args.data_dir.join("ledger-spool"),
        Gateway::worker_count(),
    )
    .context("cannot open the usage ledger's spool")?;
    parts.ledger = Some(ledger);
    // What a crash left in the spool counts in the budgets seeded below.
    let mut writer = writer;
    writer
        .catch_up(&store, rampart_ledger::ledger::CATCH_UP_LIMIT)
        .await;
    plane.run_ledger(store.clone(), writer);
    let (limits, _) = rampart_gateway::admission::Limits::start(
        &rampart_limits::LimiterConfig::default(),
        settings.prices.clone(),
        &directory,
        &store,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    parts.batches = Some(rampart_gateway::batches::Batches::new(
        store.clone(),
        settings.batches.clone(),
        Some(limits.clone()),
        Some(directory.clone()),
    ));
    parts.limits = Some(limits);
    let auth: Vec<Arc<dyn Authenticator>> = vec![Arc::new(settings.keys.clone()), directory];
    let gateway = Gateway::with_parts(settings, Arc::new(AnyOf(auth)), parts)
        .map_err(anyhow::Error::msg)?
        .with_router(rampart_admin::router(admin));

    let sim_cfg = cli::sim_config(&SimArgs {
        listen: sim_addr,
        latency_ms: args.sim_latency_ms,
        tokens_per_sec: args.sim_tokens_per_sec,
        batch_processing_ms: args.sim_batch_processing_ms,
        api_key: None,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let sim_task = tokio::spawn(rampart_sim::serve(
        sim_listener,
        sim_cfg,
        stopped(stop_rx.clone()),
    ));
    let (stop_batches, batches_stopped) = watch::channel(false);
    let batch_workers = gateway.spawn_batch_workers(&batches_stopped);
    let gw_task = tokio::spawn(gateway.serve(gw_listener, stopped(stop_rx)));

    let shutdown = cli::shutdown_signal();
    println!("simulator listening on http://{sim_addr}");
    println!("listening on http://{gw_addr}");
    println!();
    println!("ANTHROPIC_BASE_URL=http://{gw_addr}");
    println!("ANTHROPIC_API_KEY={client_key}");
    println!("RAMPART_SIM_URL=http://{sim_addr}");
    println!("RAMPART_ADMIN_EMAIL={DEMO_ADMIN}");
    println!("RAMPART_ADMIN_PASSWORD={admin_password}");
    println!("RAMPART_ADMIN_URL=http://{gw_addr}/admin/v1");
    println!();
    println!("admin API docs: http://{gw_addr}/admin/docs/");
    println!(
        "curl -s http://{gw_addr}/v1/messages -H \"x-api-key: {client_key}\" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d '{{\"model\":\"claude-sonnet-4-6\",\"max_tokens\":256,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello, Claude\"}}]}}'"
    );
    tracing::info!(gateway = %gw_addr, simulator = %sim_addr, "demo running");

    shutdown.await;
    let _ = stop_tx.send(true);
    // The gateway drains first (its streams still need the simulator), then the simulator.
    gw_task.await.context("gateway task")??;
    let _ = stop_batches.send(true);
    for task in batch_workers {
        let _ = task.await;
    }
    sim_task.await.context("simulator task")??;
    if let Some(w) = webhooks {
        w.stop().await;
    }
    plane.stop().await;
    upkeep.abort();
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
