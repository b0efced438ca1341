//! `herald-chaos`: the chaos soak of issue #16 (see `herald_e2e::chaos`). Starts the loopback
//! fleet (3-node NATS cluster with the journal at R3, 2 relays, 2 gateways with ws, wss and QUIC
//! listeners), runs a steady publish load and managed clients over ws / wss / QUIC / long-poll,
//! injects random faults from a seeded schedule, checks every client, prints the table and exits
//! non-zero if any change was missed or a client saw an unexpected RESET / DENIED.
//!
//! Run it through `ops/chaos.sh`, which builds the binaries first. Every process it starts is
//! stopped by pid at the end, on Ctrl-C / SIGTERM, and when the hard time bound expires.

use clap::Parser;
use herald_e2e::chaos::{ChaosConfig, Fault, run};
use std::process::ExitCode;
use std::time::Duration;

/// The chaos soak: the whole Herald fleet on loopback under faults, checked continuously.
#[derive(Parser, Debug)]
#[command(name = "herald-chaos", version)]
struct Args {
    /// Minutes of publish load and faults (fractions allowed; set-up and the end check add
    /// about a minute).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seed of the fault schedule, the publisher and the clients (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Managed clients, spread round-robin over ws, wss, QUIC and long-poll.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Journal publishes a second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Inject only these fault kinds (comma-separated): nats-kill, nats-restart, nats-hang,
    /// relay-kill, relay-hang, gateway-kill, gateway-hang, link-cut. Default: every kind.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// No long-poll clients (ws / wss / QUIC only).
    #[arg(long)]
    no_long_poll: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut only = Vec::new();
    for name in &args.only {
        match Fault::from_flag(name) {
            Some(f) => only.push(f),
            None => {
                eprintln!("herald-chaos: unknown fault kind {name:?}");
                return ExitCode::from(2);
            }
        }
    }
    let duration = Duration::from_secs_f64(args.minutes.max(0.1) * 60.0);
    let config = ChaosConfig {
        duration,
        seed: args.seed.unwrap_or_else(rand::random),
        clients: args.clients.max(4),
        rate: args.rate.max(1),
        only,
        long_poll: !args.no_long_poll,
    };
    // The hard bound: the load, plus set-up, recovery of the last fault and the end check.
    let bound = duration + Duration::from_secs(240);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald-chaos: cannot watch SIGTERM: {e}");
            return ExitCode::from(2);
        }
    };
    // Dropping the run future (signal, bound) drops the fleet: every process killed by pid.
    let outcome = tokio::select! {
        r = tokio::time::timeout(bound, run(config)) => r.map_err(|_| format!("did not finish within {bound:?}")),
        _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C)".to_owned()),
        _ = term.recv() => Err("terminated (SIGTERM)".to_owned()),
    };
    match outcome {
        Ok(Ok(summary)) => {
            println!("\n{summary}");
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("herald-chaos: {e}");
            ExitCode::from(2)
        }
    }
}
