//! `modelrelay-simulated-backend`: the test kit's simulated model server as a process,
//! for tests that start real binaries.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use modelrelay_testkit::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};

/// An OpenAI- and Anthropic-compatible model server that streams canned text.
/// Prints `listening on ADDR` once it accepts connections.
#[derive(Debug, Parser)]
#[command(name = "modelrelay-simulated-backend", version, about)]
struct Args {
    /// Address to listen on (port 0: the OS picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,

    /// Models it serves and lists (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "m")]
    models: Vec<String>,

    /// Tokens in each reply unless a request's `mock` says otherwise.
    #[arg(long, default_value_t = 12)]
    tokens: usize,

    /// Milliseconds between tokens unless a request's `mock` says otherwise.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = SimulatedBackend::new(SimulatedBackendConfig {
        models: args.models,
        tokens: args.tokens,
        token_delay: Duration::from_millis(args.token_delay_ms),
    });
    SimulatedBackend::serve_announced(backend.router(), &args.listen)
        .await
        .with_context(|| format!("serving on {}", args.listen))
}
