//! Rampart's spend accounting.
//!
//! - [`pricing`]: the price table as data (built-in list prices, overridable in configuration)
//!   and the cost arithmetic in integer micro-dollars, used by the ledger and by budget
//!   enforcement.

pub mod pricing;
