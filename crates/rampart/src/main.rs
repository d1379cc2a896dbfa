//! `rampart`: the command line. Each subcommand is a few lines that call into the library crates.

#![allow(clippy::print_stdout)]

mod admin;
mod ask;
mod audit;
mod batch;
mod bootstrap;
mod cache_policy;
mod cli;
mod demo;
mod dlq;
mod keys;
mod master_key;
mod people;
mod secret_file;
mod secrets;
mod team_limits;
mod upstreams;
mod usage;
mod webhooks;

use clap::Parser;

/// mimalloc: fewer cycles per allocation than glibc malloc on the many small, short-lived
/// allocations of the proxy path (measured with bench/run.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rampart: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
