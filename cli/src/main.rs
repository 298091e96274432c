//! The `ferry` binary: daemon, CLI and tools.
//!
//! # Layout
//! - `main.rs`: the command line (clap) and dispatch; exit codes.
//! - `daemon.rs`: `ferry daemon` — config, keys, store, engine, recovery,
//!   listeners, graceful shutdown; the step `registry`.
//! - `config.rs`: the TOML config, strict and validated.
//! - `tokens.rs`: hashed bearer tokens, roles, member namespace rules.
//! - `admission.rs`: a submitted clone's source namespaces checked against
//!   the token (labels read from the source cluster) and recorded with it.
//! - `api.rs`: the HTTP API (router, handlers, auth, OpenAPI document).
//! - `server.rs`: the Unix socket and TLS accept loops.
//! - `metrics.rs`: Prometheus text; `redact.rs`: Secret data removal.
//! - `client.rs`: HTTP/1.1 to the daemon; `commands.rs`: the client verbs
//!   and their output; `progress.rs`: live progress (step, volume bytes,
//!   rate, ETA) read from a clone's log.
//! - `demo.rs`: `ferry demo`, a clone between two simulated clusters.
//! - `engine_demo.rs`: `ferry engine-demo`, a tour of the durable engine
//!   (crash, resume, rollback, verify) on a workflow that copies files.
//!
//! - `workflow.rs`: the clone workflow as the daemon runs it (kubeconfig
//!   contexts; the config turned into preflight settings).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

mod admission;
mod api;
mod client;
mod commands;
mod config;
mod daemon;
mod demo;
mod engine_demo;
mod metrics;
mod progress;
mod redact;
mod server;
mod tokens;
mod workflow;

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
    /// Clones an application: namespaces, resources and volume data.
    Clone(Box<CloneArgs>),
    /// Deletes bucket chunks that no clone's manifest references.
    Gc {
        /// The bucket (default: the config's default bucket).
        #[arg(long)]
        bucket: Option<String>,
        /// Count only; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Spare chunks younger than this: 90s, 10m, 24h (default 24h).
        #[arg(long)]
        grace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Everything on simulated clusters: two clusters, an app, its clone.
    Demo {
        /// Keep the state dir, kubeconfigs and bucket here instead of a temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Serves one simulated Kubernetes cluster until killed (tests and demo).
    Sim(ferry_sim::ServeArgs),
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

/// `ferry clone NAME --from CTX --to CTX --namespace SRC[:DST]...`
#[derive(Args)]
struct CloneArgs {
    /// The clone's unique name.
    name: String,
    /// Source kubeconfig context.
    #[arg(long)]
    from: String,
    /// Destination kubeconfig context (the same as --from for an in-cluster clone).
    #[arg(long)]
    to: String,
    /// Namespace to clone, SRC or SRC:DST (repeat for several).
    #[arg(long = "namespace", short = 'n', required = true)]
    namespaces: Vec<String>,
    /// Storage class mapping SRC=DST (repeat); unmapped classes are kept.
    #[arg(long = "storage-class")]
    storage_classes: Vec<String>,
    /// The bucket for volume data (default: the config's default bucket).
    #[arg(long)]
    bucket: Option<String>,
    /// Only objects matching: kind=KIND, group=GROUP or selector=LABEL-SELECTOR (repeat).
    #[arg(long)]
    include: Vec<String>,
    /// Leave out objects matching: kind=KIND, group=GROUP or selector=LABEL-SELECTOR (repeat).
    #[arg(long)]
    exclude: Vec<String>,
    /// Allow a live copy of ReadWriteOnce volumes whose driver cannot snapshot.
    #[arg(long)]
    allow_live_copy: bool,
    /// Suspend the cloned CronJobs so they do not fire in both copies.
    #[arg(long)]
    suspend_cronjobs: bool,
    /// Rewrite <svc>.<src-ns>.svc references to the destination namespace.
    #[arg(long)]
    rewrite_service_dns: bool,
    /// Execution hooks: a YAML or JSON list (see the spec's `hooks`).
    #[arg(long)]
    hooks: Option<PathBuf>,
    /// User transforms: a YAML or JSON list (see the spec's `transforms`).
    #[arg(long)]
    transforms: Option<PathBuf>,
    /// How long the destination has to become healthy: 90s, 10m, 1h.
    #[arg(long)]
    health_timeout: Option<String>,
    /// Show the plan, warnings and refusals; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Follow the clone to its end; the exit code is its outcome.
    #[arg(long)]
    wait: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl CloneArgs {
    /// The spec JSON these flags describe (validated by the daemon).
    fn spec(&self) -> anyhow::Result<serde_json::Value> {
        use serde_json::json;
        let namespaces: Vec<_> = self
            .namespaces
            .iter()
            .map(|n| match n.split_once(':') {
                Some((s, d)) => json!({"source": s, "destination": d}),
                None => json!({"source": n}),
            })
            .collect();
        let mut classes = Vec::new();
        for m in &self.storage_classes {
            let (s, d) = m
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--storage-class {m:?}: write SRC=DST"))?;
            classes.push(json!({"source": s, "destination": d}));
        }
        let filter = |f: &String| -> anyhow::Result<serde_json::Value> {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("filter {f:?}: write kind=KIND, group=GROUP or selector=SELECTOR")
            })?;
            Ok(match k {
                "kind" => json!({"kind": v}),
                "group" => json!({"group": v}),
                "selector" | "labels" => json!({"labelSelector": v}),
                other => anyhow::bail!(
                    "filter {f:?}: unknown key {other:?}; use kind, group or selector"
                ),
            })
        };
        let read_list = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
            let text =
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        let mut spec = json!({
            "name": self.name,
            "sourceContext": self.from,
            "destinationContext": self.to,
            "namespaces": namespaces,
            "storageClasses": classes,
            "include": self.include.iter().map(filter).collect::<anyhow::Result<Vec<_>>>()?,
            "exclude": self.exclude.iter().map(filter).collect::<anyhow::Result<Vec<_>>>()?,
            "allowLiveCopy": self.allow_live_copy,
            "suspendCronjobs": self.suspend_cronjobs,
            "rewriteServiceDns": self.rewrite_service_dns,
        });
        if let Some(b) = &self.bucket {
            spec["bucket"] = json!(b);
        }
        if let Some(h) = &self.hooks {
            spec["hooks"] = read_list(h)?;
        }
        if let Some(t) = &self.transforms {
            spec["transforms"] = read_list(t)?;
        }
        if let Some(d) = &self.health_timeout {
            spec["healthDeadlineSeconds"] = json!(parse_duration_secs(d)?);
        }
        Ok(spec)
    }
}

/// Seconds in `90s`, `10m`, `1h` or a bare number of seconds.
fn parse_duration_secs(d: &str) -> anyhow::Result<u64> {
    let d = d.trim();
    let (num, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("duration {d:?}: write 90s, 10m or 1h"))?;
    Ok(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("duration {d:?}: write 90s, 10m or 1h"),
    })
}

#[derive(Args)]
struct DaemonArgs {
    /// Kubeconfig file(s) naming the clusters' contexts (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Vec<PathBuf>,
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
                kubeconfig: a.kubeconfig,
            })
            .await
        }
        Command::Clone(a) => match a.spec() {
            Ok(spec) => commands::clone(&client(&conn)?, &spec, a.dry_run, a.wait, a.output).await,
            Err(e) => {
                eprintln!("error: {e:#}");
                Ok(ExitCode::from(commands::exit::USAGE))
            }
        },
        Command::Demo { dir } => demo::run(dir).await,
        Command::Gc {
            bucket,
            dry_run,
            grace,
            output,
        } => {
            let mut params = Vec::new();
            if let Some(b) = bucket {
                params.push(format!("bucket={}", client::segment(&b)));
            }
            if dry_run {
                params.push("dryRun=true".to_owned());
            }
            if let Some(g) = grace {
                match parse_duration_secs(&g) {
                    Ok(s) => params.push(format!("graceSeconds={s}")),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return Ok(ExitCode::from(commands::exit::USAGE));
                    }
                }
            }
            commands::gc(&client(&conn)?, &params.join("&"), output).await
        }
        Command::Sim(args) => {
            ferry_sim::serve_until_killed(args).await?;
            Ok(ExitCode::SUCCESS)
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
