//! `randomuser-stub`: serve real captured randomuser.me users on a local port, optionally failing.

use clap::Parser;
use randomuser_stub::{Fault, FaultPlan, Stub};
use std::net::SocketAddr;

/// A local randomuser.me for offline runs and fault tests.
#[derive(Debug, Parser)]
#[command(name = "randomuser-stub", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(
        long = "addr",
        env = "STUB_ADDR",
        value_name = "STUB_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    addr: SocketAddr,
    /// Probability (0..=1) that a request fails.
    #[arg(
        long = "fail-ratio",
        env = "STUB_FAIL_RATIO",
        value_name = "STUB_FAIL_RATIO",
        default_value_t = 0.0
    )]
    fail_ratio: f64,
    /// Comma-separated faults to draw from: 429,500,502-html,truncated,not-json,error-body,empty-results,legacy.
    #[arg(
        long = "faults",
        env = "STUB_FAULTS",
        value_name = "STUB_FAULTS",
        value_delimiter = ','
    )]
    faults: Vec<String>,
    /// Retry-After seconds on 429.
    #[arg(
        long = "retry-after",
        env = "STUB_RETRY_AFTER",
        value_name = "STUB_RETRY_AFTER",
        default_value_t = 1
    )]
    retry_after: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.fail_ratio) {
        anyhow::bail!("STUB_FAIL_RATIO={} must be within 0..=1", args.fail_ratio);
    }
    let mut random_faults = Vec::new();
    for name in &args.faults {
        random_faults.push(
            Fault::parse(name)
                .ok_or_else(|| anyhow::anyhow!("STUB_FAULTS: unknown fault {name:?}"))?,
        );
    }
    let stub = Stub::start(
        args.addr,
        FaultPlan {
            script: Vec::new(),
            fail_ratio: args.fail_ratio,
            random_faults,
            retry_after_secs: args.retry_after,
        },
    )
    .await?;
    tracing::info!(url = %stub.url(), "randomuser stub serving real captured users");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    stub.stop().await;
    Ok(())
}
