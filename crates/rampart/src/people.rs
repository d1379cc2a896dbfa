//! `rampart users …` and `rampart teams …`: the admin API's people operations for operators with
//! shell access to the data directory or `RAMPART_DATABASE_URL`. Inputs pass the same checks as
//! the API ([`rampart_admin::validate`]); every change is audited in its own transaction, with the
//! actor `cli:<OS user>`. Passwords are read from standard input (or `RAMPART_NEW_PASSWORD`),
//! never from the command line, where other users could see them.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use rampart_admin::validate;
use rampart_crypto::Secret;
use rampart_store::{NewAuditEvent, NewUser, Role, Store, StoreError, Team, User, UserUpdate};

use crate::cli::{MigrateArgs, open_store};

/// Roles, as the CLI spells them.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Everything.
    Admin,
    /// Users and keys of their own team.
    TeamAdmin,
    /// Their own keys.
    Developer,
    /// Read-only view of their team.
    Viewer,
    /// Read-only audit log.
    Auditor,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::TeamAdmin => Role::TeamAdmin,
            RoleArg::Developer => Role::Developer,
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Auditor => Role::Auditor,
        }
    }
}

/// `rampart users …`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; the password is read from stdin (or RAMPART_NEW_PASSWORD).
    Create {
        /// E-mail address.
        #[arg(long)]
        email: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Team name (required for every role but admin and auditor).
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// List users.
    List {
        /// Only this team's.
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Change a user's role.
    SetRole {
        /// E-mail address or id.
        user: String,
        /// New role.
        #[arg(value_enum)]
        role: RoleArg,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Set a new password, read from stdin (or RAMPART_NEW_PASSWORD).
    SetPassword {
        /// E-mail address or id.
        user: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Disable a user (they can no longer sign in; open sessions stop at their next request).
    Disable {
        /// E-mail address or id.
        user: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Re-enable a user.
    Enable {
        /// E-mail address or id.
        user: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
}

/// `rampart teams …`
#[derive(Debug, Subcommand)]
pub enum TeamsCommand {
    /// Create a team.
    Create {
        /// Unique name.
        name: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// List teams.
    List(ListArgs),
    /// Rename a team.
    Rename {
        /// Current name or id.
        team: String,
        /// New name.
        new_name: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Disable a team: its keys stop working within a second.
    Disable {
        /// Name or id.
        team: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Re-enable a team.
    Enable {
        /// Name or id.
        team: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Show a team's limits, or replace them: the team's own (shared by all its keys) and its
    /// defaults for keys (`--key-…`); `--clear` removes both.
    Limits(Box<crate::team_limits::TeamLimitsArgs>),
    /// Show a team's caching policy (response cache, TTL, prompt-cache breakpoints), or change
    /// the fields given (`inherit` unsets one; `--clear` removes them all).
    CachePolicy(Box<crate::cache_policy::CachePolicyArgs>),
    /// A team's webhook on batch end: set (prints the signing secret once), show, remove, and
    /// its delivery attempts.
    Webhook {
        #[command(subcommand)]
        command: crate::webhooks::WebhookCommand,
    },
}

/// Store location only.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: MigrateArgs,
}

/// The audit actor of CLI changes.
pub fn actor() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control))
        .unwrap_or_else(|| "unknown".to_owned());
    format!("cli:{user}")
}

/// Open and migrate the configured store.
///
/// # Errors
/// When it cannot be opened or migrated.
pub async fn opened(args: &MigrateArgs) -> anyhow::Result<Store> {
    let store = open_store(args).await?;
    store.migrate().await.context("migration failed")?;
    Ok(store)
}

/// [`opened`] for a command that reads or changes what a store already holds (a report, a list,
/// a change to a key, user or team): a data directory without a database is a mistake (a typo,
/// the default `.rampart` in the wrong working directory), not an empty store to create and
/// answer from. Only the commands that create (`migrate`, `init`, `keys create`, `users create`,
/// `teams create`, `upstreams add`) start a store.
///
/// # Errors
/// When `--data-dir` holds no database, or as [`opened`].
pub async fn existing(args: &MigrateArgs) -> anyhow::Result<Store> {
    if args.database_url.is_none() {
        let db = args.data_dir.join(rampart_store::SQLITE_FILE_NAME);
        if !db.is_file() {
            bail!(
                "no database at {}: give the data directory of a Rampart store (--data-dir) or --database-url",
                db.display()
            );
        }
    }
    opened(args).await
}

fn password_from_stdin() -> anyhow::Result<Secret> {
    if let Ok(p) = std::env::var("RAMPART_NEW_PASSWORD")
        && !p.is_empty()
    {
        return Ok(Secret::new(p));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (input is shown; pipe it in to hide it): ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        bail!("no password given: pipe it on stdin or set RAMPART_NEW_PASSWORD");
    }
    Ok(Secret::new(pw))
}

pub(crate) async fn find_team(store: &Store, name_or_id: &str) -> anyhow::Result<Team> {
    lookup_team(store, name_or_id)
        .await?
        .ok_or_else(|| no_team(name_or_id))
}

/// The team `name_or_id` names: an id (what `rampart teams list` and the admin API show) when it
/// parses as one, else a name. `None` when there is none; only a store failure is an error, so a
/// caller may decide what a missing team means.
///
/// # Errors
/// A store failure.
pub(crate) async fn lookup_team(store: &Store, name_or_id: &str) -> anyhow::Result<Option<Team>> {
    if let Ok(id) = uuid::Uuid::parse_str(name_or_id) {
        return match store.get_team(id).await {
            Ok(t) => Ok(Some(t)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
    Ok(store
        .list_teams()
        .await?
        .into_iter()
        .find(|t| t.name == name_or_id))
}

/// The error for a team that [`lookup_team`] did not find.
pub(crate) fn no_team(name_or_id: &str) -> anyhow::Error {
    if uuid::Uuid::parse_str(name_or_id).is_ok() {
        anyhow::anyhow!("no team with id `{name_or_id}`")
    } else {
        anyhow::anyhow!("no team named `{name_or_id}`")
    }
}

async fn find_user(store: &Store, email_or_id: &str) -> anyhow::Result<User> {
    let found = match uuid::Uuid::parse_str(email_or_id) {
        Ok(id) => store.get_user(id).await,
        Err(_) => {
            store
                .get_user_by_email(&email_or_id.trim().to_ascii_lowercase())
                .await
        }
    };
    match found {
        Ok(u) => Ok(u),
        Err(StoreError::NotFound) => bail!("no such user"),
        Err(e) => Err(e.into()),
    }
}

fn hash_for(pw: &Secret, email: &str) -> anyhow::Result<String> {
    validate::new_password(pw, email).map_err(|e| anyhow::anyhow!("password refused: {e}"))
}

fn print_user(u: &User, teams: &[Team]) {
    let team = u
        .team_id
        .and_then(|t| teams.iter().find(|x| x.id == t))
        .map_or("-", |t| t.name.as_str());
    println!(
        "{}  {:<32}  {:<10}  team={:<16}  {}",
        u.id,
        u.email,
        u.role.as_str(),
        team,
        if u.disabled { "disabled" } else { "enabled" }
    );
}

/// Run a `users` subcommand.
///
/// # Errors
/// Invalid input or a store failure, with a message saying which.
pub async fn users(cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UsersCommand::Create {
            email,
            role,
            team,
            store,
        } => {
            let email = validate::email(&email).map_err(anyhow::Error::msg)?;
            let role = Role::from(role);
            let store = opened(&store).await?;
            let team = match team {
                Some(t) => Some(find_team(&store, &t).await?),
                None if matches!(role, Role::Admin | Role::Auditor) => None,
                None => bail!("--team is required for the {} role", role.as_str()),
            };
            let pw = password_from_stdin()?;
            let password_hash = hash_for(&pw, &email)?;
            let audit = NewAuditEvent::new(actor(), "user.create", format!("user:{email}"));
            let user = store
                .create_user(
                    &NewUser {
                        email,
                        password_hash,
                        role,
                        team_id: team.as_ref().map(|t| t.id),
                    },
                    Some(&audit),
                )
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => anyhow::anyhow!("that e-mail is already in use"),
                    other => other.into(),
                })?;
            println!(
                "created user {} ({}, {})",
                user.id,
                user.email,
                user.role.as_str()
            );
        }
        UsersCommand::List { team, store } => {
            let store = existing(&store).await?;
            let team_id = match team {
                Some(t) => Some(find_team(&store, &t).await?.id),
                None => None,
            };
            let teams = store.list_teams().await?;
            for u in store.list_users(team_id).await? {
                print_user(&u, &teams);
            }
        }
        UsersCommand::SetRole { user, role, store } => {
            let store = existing(&store).await?;
            let u = find_user(&store, &user).await?;
            let role = Role::from(role);
            let mut audit = NewAuditEvent::new(actor(), "user.update", format!("user:{}", u.id));
            audit.details = serde_json::json!({"role": role.as_str()});
            let update = UserUpdate {
                role: Some(role),
                ..UserUpdate::default()
            };
            store.update_user(u.id, &update, Some(&audit)).await?;
            println!("{} is now {}", u.email, role.as_str());
        }
        UsersCommand::SetPassword { user, store } => {
            let store = existing(&store).await?;
            let u = find_user(&store, &user).await?;
            let pw = password_from_stdin()?;
            let update = UserUpdate {
                password_hash: Some(hash_for(&pw, &u.email)?),
                ..UserUpdate::default()
            };
            let mut audit = NewAuditEvent::new(actor(), "user.update", format!("user:{}", u.id));
            audit.details = serde_json::json!({"password": true});
            store.update_user(u.id, &update, Some(&audit)).await?;
            println!("password changed for {}", u.email);
        }
        UsersCommand::Disable { user, store } => set_user_disabled(&user, &store, true).await?,
        UsersCommand::Enable { user, store } => set_user_disabled(&user, &store, false).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_user_disabled(user: &str, args: &MigrateArgs, disabled: bool) -> anyhow::Result<()> {
    let store = existing(args).await?;
    let u = find_user(&store, user).await?;
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    let audit = NewAuditEvent::new(actor(), action, format!("user:{}", u.id));
    store
        .set_user_disabled(u.id, disabled, Some(&audit))
        .await?;
    println!(
        "{} is {}",
        u.email,
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(())
}

/// Run a `teams` subcommand.
///
/// # Errors
/// Invalid input or a store failure, with a message saying which.
pub async fn teams(cmd: TeamsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TeamsCommand::Create { name, store } => {
            let name = validate::name("team name", &name).map_err(anyhow::Error::msg)?;
            let store = opened(&store).await?;
            let audit = NewAuditEvent::new(actor(), "team.create", format!("team:{name}"));
            let team = store
                .create_team(&name, Some(&audit))
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => anyhow::anyhow!("a team named `{name}` exists"),
                    other => other.into(),
                })?;
            println!("created team {} ({})", team.id, team.name);
        }
        TeamsCommand::List(args) => {
            let store = existing(&args.store).await?;
            for t in store.list_teams().await? {
                println!(
                    "{}  {:<24}  {}",
                    t.id,
                    t.name,
                    if t.disabled { "disabled" } else { "enabled" }
                );
            }
        }
        TeamsCommand::Rename {
            team,
            new_name,
            store,
        } => {
            let new_name = validate::name("team name", &new_name).map_err(anyhow::Error::msg)?;
            let store = existing(&store).await?;
            let t = find_team(&store, &team).await?;
            let mut audit = NewAuditEvent::new(actor(), "team.rename", format!("team:{}", t.id));
            audit.details = serde_json::json!({"name": new_name});
            store
                .rename_team(t.id, &new_name, Some(&audit))
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => {
                        anyhow::anyhow!("a team named `{new_name}` exists")
                    }
                    other => other.into(),
                })?;
            println!("renamed {} to {new_name}", t.name);
        }
        TeamsCommand::Disable { team, store } => set_team_disabled(&team, &store, true).await?,
        TeamsCommand::Enable { team, store } => set_team_disabled(&team, &store, false).await?,
        TeamsCommand::Limits(args) => crate::team_limits::run(&args).await?,
        TeamsCommand::CachePolicy(args) => crate::cache_policy::run_team(&args).await?,
        TeamsCommand::Webhook { command } => return crate::webhooks::run(command).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_team_disabled(team: &str, args: &MigrateArgs, disabled: bool) -> anyhow::Result<()> {
    let store = existing(args).await?;
    let t = find_team(&store, team).await?;
    let action = if disabled {
        "team.disable"
    } else {
        "team.enable"
    };
    let audit = NewAuditEvent::new(actor(), action, format!("team:{}", t.id));
    store
        .set_team_disabled(t.id, disabled, Some(&audit))
        .await?;
    println!(
        "team {} is {}",
        t.name,
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(())
}
