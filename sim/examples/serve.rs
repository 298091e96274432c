//! Serve one simulated cluster until killed: `cargo run -p ferry-sim --example serve -- --name NAME --data-dir DIR --kubeconfig FILE`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ferry_sim::ServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_sim::serve_until_killed(Cli::parse().args).await
}
