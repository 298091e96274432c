//! The `ferry` binary: daemon, CLI and tools.
//!
//! # Layout
//! - `main.rs`: the command line (clap) and dispatch; exit codes.
//! - `daemon.rs`: `ferry daemon` — config, keys, store, engine, recovery,
//!   listeners, graceful shutdown; the step `registry`.
//! - `config.rs`: the TOML config, strict and validated.
//! - `tokens.rs`: hashed bearer tokens, roles, member namespace rules.
//! - `api.rs`: the HTTP API (router, handlers, auth, OpenAPI document).
//! - `server.rs`: the Unix socket and TLS accept loops.
//! - `metrics.rs`: Prometheus text; `redact.rs`: Secret data removal.
//! - `client.rs`: HTTP/1.1 to the daemon; `commands.rs`: the client verbs
//!   and their output.
//! - `engine_demo.rs`: `ferry engine-demo`, a tour of the durable engine
//!   (crash, resume, rollback, verify) on a workflow that copies files.
//!
//! Submitting clones plugs in at three marked places: a `Clone` variant of
//! [`Command`], the `/v1/clones` route in `api::router`, and its path item
//! in `api::openapi`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

mod api;
mod client;
mod commands;
mod config;
mod daemon;
mod engine_demo;
mod metrics;
mod redact;
mod server;
mod tokens;

use commands::{EventsOutput, Output};

/// The CLI's socket when neither --socket nor FERRY_SOCKET is given: the
/// systemd unit's state dir.
const DEFAULT_SOCKET: &str = "/var/lib/ferry/ferry.sock";

/// ferry clones and migrates Kubernetes applications.
#[derive(Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the daemon.
#[derive(Args)]
struct Conn {
    /// The daemon's Unix socket (for `ferry daemon`: where to create it;
    /// default STATE_DIR/ferry.sock). Client default: /var/lib/ferry/ferry.sock.
    #[arg(long, global = true, env = "FERRY_SOCKET")]
    socket: Option<PathBuf>,
    /// Talk to a daemon's TLS listener instead: https://HOST:PORT.
    #[arg(long, global = true, env = "FERRY_SERVER")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate(s) to trust for --server (default: the system's roots).
    #[arg(long, global = true, env = "FERRY_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon: resumes unfinished clones and serves the API.
    Daemon(DaemonArgs),
    // `Clone(CloneArgs)` — `ferry clone NAME --from … --to … [--dry-run] [--wait]`
    // — plugs in here, posting to /v1/clones.
    /// Lists resources.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Shows one resource in detail.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Prints a clone's audit log (Secret data redacted).
    Events {
        /// The clone.
        name: String,
        /// jsonl: the log verbatim, one envelope a line; table: one row per event.
        #[arg(short, long, value_enum, default_value = "jsonl")]
        output: EventsOutput,
        /// Keep printing new events until the clone ends; the exit code is then its outcome.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancels a running clone: it stops and rolls back.
    Cancel {
        /// The clone.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Checks a clone's hash chain and head MAC (exit 1 if altered).
    Verify {
        /// The clone.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Deletes a resource.
    Delete {
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// Prints a shell completion script: `source <(ferry completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Bearer tokens for the TCP listener.
    Token {
        #[command(subcommand)]
        what: TokenCmd,
    },
    /// Runs a small workflow through the durable engine: a crash mid-step and
    /// its resume, a rollback, and the verified audit log.
    EngineDemo {
        /// Keep the demo's state dir here instead of a temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct DaemonArgs {
    /// The state dir: the event store, blobs and (by default) the socket.
    #[arg(long, env = "FERRY_STATE_DIR")]
    state_dir: PathBuf,
    /// The TOML config file (see cli/ferry.example.toml).
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Also serve the API over TLS on this address (bearer tokens required).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    listen: Option<SocketAddr>,
    /// PEM certificate chain for --listen.
    #[arg(long, requires = "listen")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --listen.
    #[arg(long, requires = "listen")]
    tls_key: Option<PathBuf>,
    /// Log format on stderr; filter with RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Subcommand)]
enum GetWhat {
    /// Lists clones: name, phase, current step, events, age.
    #[command(alias = "clone")]
    Clones {
        /// Only clones whose name contains this.
        name: Option<String>,
        /// Only clones in this phase (Running, Succeeded, RolledBack …).
        #[arg(long)]
        phase: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum DescribeWhat {
    /// A clone's phase, plan, steps with attempts and timings, warnings, errors.
    #[command(alias = "clones")]
    Clone {
        /// The clone.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum DeleteWhat {
    /// Deletes a finished clone's record; its destination namespaces stay.
    #[command(alias = "clones")]
    Clone {
        /// The clone.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Prints the hash of a token for the tokens file (reads the token from
    /// stdin when not given, so it stays out of the shell history).
    Hash {
        /// The token.
        token: Option<String>,
    },
    /// Prints a new random token (and its hash on stderr).
    Generate,
}

fn init_logs(default: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Daemon(a) => init_logs("info", a.log_format),
        _ => init_logs("error", LogFormat::Text),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(commands::exit::FAILED);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<client::ClientError>()
                .map(commands::exit_code)
                .unwrap_or(commands::exit::FAILED);
            ExitCode::from(code)
        }
    }
}

fn client(conn: &Conn) -> anyhow::Result<client::Client> {
    match &conn.server {
        Some(url) => Ok(client::Client::tls(
            url,
            conn.token.clone(),
            conn.ca_file.as_deref(),
        )?),
        None => Ok(client::Client::unix(
            conn.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into()),
        )),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let conn = cli.conn;
    match cli.command {
        Command::Daemon(a) => {
            daemon::run(daemon::Options {
                state_dir: a.state_dir,
                config: a.config,
                socket: conn.socket,
                listen: a.listen,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
            })
            .await
        }
        Command::Get {
            what:
                GetWhat::Clones {
                    name,
                    phase,
                    output,
                },
        } => commands::get_clones(&client(&conn)?, name.as_deref(), phase.as_deref(), output).await,
        Command::Describe {
            what: DescribeWhat::Clone { name, output },
        } => commands::describe_clone(&client(&conn)?, &name, output).await,
        Command::Events {
            name,
            output,
            follow,
        } => commands::events(&client(&conn)?, &name, output, follow).await,
        Command::Cancel { name, output } => commands::cancel(&client(&conn)?, &name, output).await,
        Command::Verify { name, output } => commands::verify(&client(&conn)?, &name, output).await,
        Command::Delete {
            what: DeleteWhat::Clone { name, output },
        } => commands::delete_clone(&client(&conn)?, &name, output).await,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            what: TokenCmd::Hash { token },
        } => {
            let token = match token {
                Some(t) => t,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            if token.trim().is_empty() {
                anyhow::bail!("no token given: pass it as an argument or on stdin");
            }
            println!("blake3:{}", tokens::hash_token(&token));
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            what: TokenCmd::Generate,
        } => {
            let token = tokens::generate_token();
            println!("{token}");
            eprintln!(
                "hash for the tokens file: hash = \"blake3:{}\"",
                tokens::hash_token(&token)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::EngineDemo { dir } => engine_demo::run(dir).await,
    }
}
