//! The `ferry` binary: daemon, CLI and tools.
//!
//! # Layout
//! - `main.rs`: the command line (clap) and dispatch.
//! - `engine_demo.rs`: `ferry engine-demo`, a tour of the durable engine
//!   (crash, resume, rollback, verify) on a workflow that copies files.

use clap::{Parser, Subcommand};

mod engine_demo;

/// ferry clones and migrates Kubernetes applications.
#[derive(Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a small workflow through the durable engine: a crash mid-step and
    /// its resume, a rollback, and the verified audit log.
    EngineDemo {
        /// Keep the demo's state dir here instead of a temp dir.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::EngineDemo { dir } => engine_demo::run(dir).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
