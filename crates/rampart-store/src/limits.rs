//! Limits and budgets as configured: per key, per team, and a team's defaults for its keys.
//! [`LimitsRepository`] reads and writes them; the gateway's key directory reads them all at
//! once ([`LimitsRepository::all_limits`]) and polls [`LimitsRepository::directory_version`],
//! which every write to keys, teams or limits moves (database triggers, migration 0003), to
//! reload within a fraction of a second of any change, made by any process.

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::model::{ApiKey, NewApiKey, NewAuditEvent};

/// The largest per-minute rate accepted.
pub const MAX_RATE: u64 = 1_000_000_000;
/// The largest concurrency limit accepted.
pub const MAX_CONCURRENCY: u64 = 1_000_000;
/// The largest budget accepted, in micro-dollars (one billion dollars).
pub const MAX_BUDGET_MICROS: u64 = 1_000_000_000_000_000;

/// A budget's period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// A calendar day.
    Day,
    /// A calendar month.
    Month,
}

impl BudgetPeriod {
    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }
}

impl std::str::FromStr for BudgetPeriod {
    type Err = StoreError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "day" => Ok(BudgetPeriod::Day),
            "month" => Ok(BudgetPeriod::Month),
            _ => Err(StoreError::Invalid(
                "budget period must be day or month".to_owned(),
            )),
        }
    }
}

/// A spending limit per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct BudgetSetting {
    /// Micro-dollars per period (1 USD = 1 000 000).
    pub micros: u64,
    /// Day or month (UTC).
    pub period: BudgetPeriod,
}

/// One scope's limits; `None` is "not limited here".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct LimitSettings {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute.
    pub itpm: Option<u64>,
    /// Output tokens per minute.
    pub otpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
    /// Spending limit.
    pub budget: Option<BudgetSetting>,
}

impl LimitSettings {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == LimitSettings::default()
    }

    /// The first value outside its range (each must be at least 1 and at most [`MAX_RATE`],
    /// [`MAX_CONCURRENCY`] or [`MAX_BUDGET_MICROS`]): which limit, and its largest accepted
    /// value. Each surface words the answer in its own units ([`LimitSettings::validate`] for the
    /// stored fields, the command line in its flags).
    pub fn out_of_range(&self) -> Option<(LimitField, u64)> {
        let checks = [
            (LimitField::Rpm, self.rpm, MAX_RATE),
            (LimitField::Itpm, self.itpm, MAX_RATE),
            (LimitField::Otpm, self.otpm, MAX_RATE),
            (LimitField::Concurrency, self.concurrency, MAX_CONCURRENCY),
            (
                LimitField::Budget,
                self.budget.map(|b| b.micros),
                MAX_BUDGET_MICROS,
            ),
        ];
        checks.into_iter().find_map(|(field, value, max)| {
            value.filter(|v| *v == 0 || *v > max).map(|_| (field, max))
        })
    }

    /// Each value must be positive and at most [`MAX_RATE`], [`MAX_CONCURRENCY`] or
    /// [`MAX_BUDGET_MICROS`]. The message names the field as stored and as the admin API
    /// spells it (`budget_micros`), under `what` when it is not empty (e.g. `team.rpm`).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the first bad field.
    pub fn validate(&self, what: &str) -> Result<()> {
        match self.out_of_range() {
            None => Ok(()),
            Some((field, max)) => {
                let unit = match field {
                    LimitField::Budget => " (micro-dollars: 1 US dollar is 1000000)",
                    _ => "",
                };
                Err(StoreError::Invalid(format!(
                    "{} must be between 1 and {max}{unit}",
                    field_path(what, field.name())
                )))
            }
        }
    }

    /// These settings, each unset one taken from `defaults`.
    pub fn or(self, defaults: LimitSettings) -> LimitSettings {
        LimitSettings {
            rpm: self.rpm.or(defaults.rpm),
            itpm: self.itpm.or(defaults.itpm),
            otpm: self.otpm.or(defaults.otpm),
            concurrency: self.concurrency.or(defaults.concurrency),
            budget: self.budget.or(defaults.budget),
        }
    }
}

/// `what.field`, or `field` alone when `what` is empty.
pub fn field_path(what: &str, field: &str) -> String {
    if what.is_empty() {
        field.to_owned()
    } else {
        format!("{what}.{field}")
    }
}

/// One of the limits of [`LimitSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitField {
    /// Requests per minute.
    Rpm,
    /// Input tokens per minute.
    Itpm,
    /// Output tokens per minute.
    Otpm,
    /// Requests in flight at once.
    Concurrency,
    /// The spending limit (micro-dollars).
    Budget,
}

impl LimitField {
    /// The field's name as stored and in the admin API: `rpm`, `itpm`, `otpm`, `concurrency`,
    /// `budget_micros`.
    pub fn name(self) -> &'static str {
        match self {
            LimitField::Rpm => "rpm",
            LimitField::Itpm => "itpm",
            LimitField::Otpm => "otpm",
            LimitField::Concurrency => "concurrency",
            LimitField::Budget => "budget_micros",
        }
    }
}

/// A team's limits: on the team as a whole, and the defaults for each of its keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct TeamLimitSettings {
    /// Shared by all the team's keys together.
    pub team: LimitSettings,
    /// For each key of the team that does not set its own.
    pub key_defaults: LimitSettings,
}

/// Every configured limit, for the key directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllLimits {
    /// Keys with limits of their own.
    pub keys: Vec<(Uuid, LimitSettings)>,
    /// Teams with limits or key defaults.
    pub teams: Vec<(Uuid, TeamLimitSettings)>,
}

/// Reading and writing limits. Writes take an audit event like every admin write.
#[async_trait]
pub trait LimitsRepository: Send + Sync {
    /// A key's own limits (empty when none are set).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the key does not exist.
    async fn key_limits(&self, key_id: Uuid) -> Result<LimitSettings>;
    /// Replace a key's own limits (empty settings remove them).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Invalid`] for a bad value.
    async fn set_key_limits(
        &self,
        key_id: Uuid,
        limits: &LimitSettings,
        audit: Option<&NewAuditEvent>,
    ) -> Result<LimitSettings>;
    /// A team's limits and key defaults (empty when none are set).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the team does not exist.
    async fn team_limits(&self, team_id: Uuid) -> Result<TeamLimitSettings>;
    /// Replace a team's limits and key defaults.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Invalid`] for a bad value.
    async fn set_team_limits(
        &self,
        team_id: Uuid,
        limits: &TeamLimitSettings,
        audit: Option<&NewAuditEvent>,
    ) -> Result<TeamLimitSettings>;
    /// Every key's and team's limits.
    async fn all_limits(&self) -> Result<AllLimits>;
    /// A number that changes whenever a key, a team or a limit is written (not when a key's
    /// `last_used_at` is recorded).
    async fn directory_version(&self) -> Result<i64>;
    /// Create a key with its limits, in one transaction.
    ///
    /// # Errors
    /// As [`crate::Repository::create_api_key`], and [`StoreError::Invalid`] for bad limits.
    async fn create_api_key_with_limits(
        &self,
        key: &NewApiKey,
        limits: &LimitSettings,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey>;
}
