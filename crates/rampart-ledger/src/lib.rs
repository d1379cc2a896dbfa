//! Rampart's spend accounting.
//!
//! - [`pricing`]: the price table as data (built-in list prices, overridable in configuration)
//!   and the cost arithmetic in integer micro-dollars, used by the ledger and by budget
//!   enforcement;
//! - [`ledger`]: one usage record per proxied request, appended to a crash-proof local
//!   [`spool`] on the request path and drained into the database in batches, with rollups;
//! - [`record`]: a usage record prepared before its response ends;
//! - [`config`]: the `[ledger]` settings;
//! - [`toml_text`]: errors about a TOML file told without quoting it (for the pricing file and
//!   the configuration file itself).

pub mod config;
pub mod ledger;
mod line;
mod log_limit;
pub mod pricing;
pub mod record;
pub mod spool;
pub mod toml_text;

pub use config::{FsyncPolicy, LedgerConfig};
pub use ledger::{Commit, Ledger, LedgerWriter, Staged};
pub use record::Prepared;
