//! `herald-loadgen`: drives a Herald gateway from other processes and prints figures.
//!
//! # Layout
//! - `idle`: the idle-memory benchmark. Starts (or attaches to) a gateway, opens connections in
//!   child processes (`hold`), and reports the gateway's RSS and heap per connection at each step.
//! - `hold`: a child process that holds up to ~19k subscribed, idle connections (the open-files
//!   limit is 20000 per process), bound to its own source address.
//! - `procfs`: reading another process's memory.
//! - `gateway`: starting a gateway process and talking to its admin listener.

mod gateway;
mod hold;
mod idle;
mod procfs;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "herald-loadgen",
    version,
    about = "Herald load generator and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Idle-connection memory benchmark: RSS and heap per connection at several counts.
    Idle(idle::IdleArgs),
    /// (internal) Hold idle connections; used by `idle` as a child process.
    Hold(hold::HoldArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Idle(args) => idle::run(&args),
        Command::Hold(args) => hold::run(&args),
    }
}
