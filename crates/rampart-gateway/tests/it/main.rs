//! Gateway tests against a real store (SQLite in a temp dir) and, where a response is needed, the
//! simulator on 127.0.0.1:0 as the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod batches;
mod denials;
mod harness;
mod keydir;
mod ledger;
mod limits;
mod local_batches;
mod resilience;
mod upstreams;
