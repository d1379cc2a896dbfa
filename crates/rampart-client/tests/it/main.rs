//! rampart-client against real components: the simulator on 127.0.0.1:0 (its `/_sim/` fault
//! injection and counters assert how many calls arrived) and the gateway in front of it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod batches;
mod gateway;
mod harness;
mod messages;
mod models;
mod retries;
mod streaming;
