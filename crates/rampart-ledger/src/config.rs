//! `[ledger]` in the configuration: where the spool lives, how often it is drained and synced,
//! and how long raw records are kept.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// When spool writes reach the disk itself (not only the kernel's page cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// `fdatasync` after every record, before the response completes: nothing is lost even on
    /// power failure, at the price of a disk flush per request.
    Always,
    /// `fdatasync` of the open segments every `fsync_interval_ms` (default): a process crash
    /// loses nothing; a power failure can lose the records of the last interval.
    #[default]
    Interval,
    /// Never sync; the kernel writes back on its own (about 30 s on Linux).
    Never,
}

/// `[ledger]`: the durable usage ledger (with a store).
///
/// ```toml
/// [ledger]
/// enabled = true
/// spool_dir = "/var/lib/rampart/ledger-spool"   # default: <data dir>/ledger-spool
/// flush_interval_ms = 200
/// batch_max = 1000
/// fsync = "interval"                              # or "always", "never"
/// fsync_interval_ms = 1000
/// segment_bytes = 8388608
/// retention_days = 90                             # raw records; 0 keeps them forever; at most 36500
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Record usage at all (only with a store). Default true.
    pub enabled: bool,
    /// The spool directory (one process at a time). Default `<data dir>/ledger-spool`.
    pub spool_dir: Option<PathBuf>,
    /// How often the spool is drained into the database. Default 200 ms.
    pub flush_interval_ms: u64,
    /// Most records per database transaction. Default 1000.
    pub batch_max: usize,
    /// When spool writes are synced to disk. Default `interval`.
    pub fsync: FsyncPolicy,
    /// The sync period for `fsync = "interval"`. Default 1000 ms.
    pub fsync_interval_ms: u64,
    /// Size at which a spool segment is closed and a new one started. Default 8 MiB.
    pub segment_bytes: u64,
    /// Days raw records are kept (rollups are kept); 0 keeps them forever. Default 90.
    pub retention_days: u32,
    /// How often expired raw records are purged. Default 3600 s.
    pub purge_interval_secs: u64,
}

/// The longest raw-record retention accepted (100 years): any longer is forever in practice,
/// and far past the calendar's end a cut-off cannot be worked out (0 is forever).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            spool_dir: None,
            flush_interval_ms: 200,
            batch_max: 1000,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 1000,
            segment_bytes: 8 * 1024 * 1024,
            retention_days: 90,
            purge_interval_secs: 3600,
        }
    }
}

impl LedgerConfig {
    /// Every problem with the values, each naming its setting.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(10..=60_000).contains(&self.flush_interval_ms) {
            p.push("ledger.flush_interval_ms: must be between 10 and 60000".to_owned());
        }
        if !(1..=100_000).contains(&self.batch_max) {
            p.push("ledger.batch_max: must be between 1 and 100000".to_owned());
        }
        if !(10..=600_000).contains(&self.fsync_interval_ms) {
            p.push("ledger.fsync_interval_ms: must be between 10 and 600000".to_owned());
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.segment_bytes) {
            p.push("ledger.segment_bytes: must be between 65536 and 1073741824".to_owned());
        }
        if self.retention_days > MAX_RETENTION_DAYS {
            p.push(format!(
                "ledger.retention_days: must be at most {MAX_RETENTION_DAYS} (100 years); 0 keeps raw records forever"
            ));
        }
        if self.purge_interval_secs == 0 {
            p.push("ledger.purge_interval_secs: must be greater than 0".to_owned());
        }
        if self
            .spool_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            p.push("ledger.spool_dir: must not be empty".to_owned());
        }
        p
    }

    /// The drain period.
    #[must_use]
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// The sync period.
    #[must_use]
    pub fn fsync_interval(&self) -> Duration {
        Duration::from_millis(self.fsync_interval_ms)
    }

    /// The raw-record retention, `None` for forever.
    #[must_use]
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(LedgerConfig::default().problems().is_empty());
        let bad: LedgerConfig = toml::from_str(
            "flush_interval_ms = 0\nbatch_max = 0\nsegment_bytes = 1\nfsync = \"always\"\npurge_interval_secs = 0\nfsync_interval_ms = 1\nretention_days = 4294967295",
        )
        .unwrap();
        assert_eq!(bad.fsync, FsyncPolicy::Always);
        let problems = bad.problems().join("\n");
        for name in [
            "flush_interval_ms",
            "batch_max",
            "segment_bytes",
            "purge_interval_secs",
            "fsync_interval_ms",
            "retention_days",
        ] {
            assert!(problems.contains(name), "{name}: {problems}");
        }
        let longest: LedgerConfig = toml::from_str("retention_days = 36500").unwrap();
        assert!(longest.problems().is_empty());
        assert!(toml::from_str::<LedgerConfig>("fsync = \"sometimes\"").is_err());
        assert!(toml::from_str::<LedgerConfig>("unknown = 1").is_err());
    }
}
