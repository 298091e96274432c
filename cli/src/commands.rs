//! The client verbs: `get`, `describe`, `events`, `cancel`, `verify`,
//! `delete`, and how their answers are printed (`-o table|json|yaml`,
//! `-o jsonl` for events).
//!
//! Exit codes (scripts rely on them): 0 ok; 1 failed or rolled back, or the
//! daemon refused the request; 2 usage error or Refused; 3 daemon
//! unreachable. Output is plain text (no colour, no cursor movement), so
//! it reads the same in a terminal and in a pipe — except the live lines
//! `--follow` and `clone --wait` keep under the rows on a terminal (the
//! step under way, a bar per volume being moved; see `progress.rs`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use http_body_util::BodyExt;
use serde_json::Value;

use crate::client::{self, Client, ClientError};
use crate::progress::{Observed, Tracker};

/// How to print an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable columns.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
    /// The API's JSON as YAML.
    Yaml,
}

/// How to print events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsOutput {
    /// The audit log verbatim: one JSON envelope a line.
    Jsonl,
    /// One row per event.
    Table,
}

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Failed, rolled back, or the request was refused by the daemon.
    pub const FAILED: u8 = 1;
    /// Usage error, bad request, or the clone was Refused.
    pub const USAGE: u8 = 2;
    /// The daemon cannot be reached.
    pub const UNREACHABLE: u8 = 3;
}

/// The exit code for a failed request.
pub fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Unreachable(_) => exit::UNREACHABLE,
        ClientError::Setup(_) | ClientError::Api { status: 400, .. } => exit::USAGE,
        ClientError::Api { .. } | ClientError::Protocol(_) => exit::FAILED,
    }
}

/// The exit code for a clone that ended in `phase`.
pub fn exit_for_phase(phase: &str) -> u8 {
    match phase {
        "Succeeded" | "SucceededWithWarnings" => exit::OK,
        "Refused" => exit::USAGE,
        _ => exit::FAILED,
    }
}

fn print(
    value: &Value,
    output: Output,
    table: impl FnOnce(&Value) -> String,
) -> anyhow::Result<()> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_yaml::to_string(value)?,
        Output::Table => table(value),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `ferry get clones [NAME] [--phase P]`.
pub async fn get_clones(
    c: &Client,
    name: Option<&str>,
    phase: Option<&str>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(n) = name {
        q.append_pair("name", n);
    }
    if let Some(p) = phase {
        q.append_pair("phase", p);
    }
    let q = q.finish();
    let path = if q.is_empty() {
        "/v1/clones".to_owned()
    } else {
        format!("/v1/clones?{q}")
    };
    let list = c.json(http::Method::GET, &path, None).await?;
    print(&list, output, |v| {
        let now = crate::metrics::unix_ms();
        let rows: Vec<Vec<String>> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                vec![
                    s(&i["name"]),
                    s(&i["phase"]),
                    i["currentStep"].as_str().unwrap_or("-").to_owned(),
                    i["events"].to_string(),
                    age(now, i["createdMs"].as_u64().unwrap_or(now)),
                    i["error"]
                        .as_str()
                        .map(|e| format!("not resumable: {e}"))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "No clones found.\n".into();
        }
        table(&["NAME", "PHASE", "STEP", "EVENTS", "AGE", "MESSAGE"], rows)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry describe clone NAME`.
pub async fn describe_clone(c: &Client, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let v = c
        .json(
            http::Method::GET,
            &format!("/v1/clones/{}", client::segment(name)),
            None,
        )
        .await?;
    print(&v, output, describe_text)?;
    Ok(ExitCode::SUCCESS)
}

fn describe_text(v: &Value) -> String {
    let mut out = String::new();
    let mut field = |k: &str, val: String| out.push_str(&format!("{:<15}{val}\n", format!("{k}:")));
    field("Name", s(&v["name"]));
    field(
        "Run",
        format!("{} (short id {})", s(&v["run"]), s(&v["shortId"])),
    );
    if let Some(w) = v["workflow"].as_str() {
        field("Workflow", w.to_owned());
    }
    field("Phase", s(&v["phase"]));
    if let Some(step) = v["currentStep"].as_str() {
        field("Current step", step.to_owned());
    }
    let sources: Vec<String> = v["sourceNamespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    if !sources.is_empty() {
        field("Sources", sources.join(", "));
    }
    field("Created", timestamp(v["createdMs"].as_u64().unwrap_or(0)));
    field("Updated", timestamp(v["updatedMs"].as_u64().unwrap_or(0)));
    field("Events", v["events"].to_string());
    if let Some(r) = v["cancelRequested"].as_str() {
        field("Cancelled", r.to_owned());
    }
    if let Some(r) = v["compensationReason"].as_str() {
        field("Rolled back", r.to_owned());
    }
    let rows: Vec<Vec<String>> = v["plan"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|st| {
            vec![
                s(&st["id"]),
                s(&st["kind"]),
                s(&st["status"]),
                format!("{}/{}", st["attempts"], st["maxAttempts"]),
                st["startedMs"]
                    .as_u64()
                    .map(timestamp)
                    .unwrap_or_else(|| "-".into()),
                st["durationMs"]
                    .as_u64()
                    .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                st["lastError"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    out.push_str("Plan:\n");
    if rows.is_empty() {
        out.push_str("  (no steps)\n");
    } else {
        for line in table(
            &[
                "STEP",
                "KIND",
                "STATUS",
                "ATTEMPTS",
                "STARTED",
                "DURATION",
                "LAST ERROR",
            ],
            rows,
        )
        .lines()
        {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let list = |out: &mut String, title: &str, items: Vec<String>| {
        if !items.is_empty() {
            out.push_str(&format!("{title}:\n"));
            for i in items {
                out.push_str(&format!("  - {i}\n"));
            }
        }
    };
    list(
        &mut out,
        "Warnings",
        v["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect(),
    );
    list(
        &mut out,
        "Refusals",
        v["refusals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{}: {}; {}", s(&r["object"]), s(&r["rule"]), s(&r["fix"])))
            .collect(),
    );
    list(
        &mut out,
        "Errors",
        v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect(),
    );
    out
}

/// `ferry events NAME [-o jsonl|table] [--follow]`. With `--follow` the
/// exit code is the clone's outcome.
pub async fn events(
    c: &Client,
    name: &str,
    output: EventsOutput,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!(
        "/v1/clones/{}/events{}",
        client::segment(name),
        if follow { "?follow=true" } else { "" }
    );
    let reply = c.send(http::Method::GET, &path, None).await?;
    if !(200..300).contains(&reply.status) {
        return Err(client::error_of(reply).await.into());
    }
    let mut body = reply.body;
    let mut pending: Vec<u8> = Vec::new();
    // On a terminal, --follow keeps live lines under the rows: the current
    // step, and a bar per volume the mover carries (bytes, rate, ETA).
    // Elsewhere, plain rows; a volume's progress is in its StepProgress rows.
    let mut tracker = Tracker::new(name);
    let mut live = (follow && output == EventsOutput::Table && std::io::stdout().is_terminal())
        .then(|| Live::new(name));
    let mut out = std::io::stdout().lock();
    if output == EventsOutput::Table {
        writeln!(
            out,
            "{:<5}  {:<24}  {:<24}  {:<28}  DETAIL",
            "SEQ", "TIME", "EVENT", "STEP"
        )?;
    }
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ClientError::Protocol(format!("the event stream broke: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match output {
            EventsOutput::Jsonl => out.write_all(&data)?,
            EventsOutput::Table => {
                pending.extend_from_slice(&data);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        let seen = tracker.observe(&v);
                        let row = event_row(&v, &tracker);
                        match &mut live {
                            Some(l) => l.show(&row, &seen, &tracker),
                            None => writeln!(out, "{row}")?,
                        }
                    }
                }
            }
        }
        out.flush()?;
    }
    drop(out);
    if let Some(l) = live {
        l.clear();
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    // The stream ends when the clone does, or when the daemon stops.
    let v = c
        .json(
            http::Method::GET,
            &format!("/v1/clones/{}", client::segment(name)),
            None,
        )
        .await?;
    let phase = s(&v["phase"]);
    if v["terminal"].as_bool() == Some(true) {
        eprintln!("clone {name} ended {phase}");
        Ok(ExitCode::from(exit_for_phase(&phase)))
    } else {
        Err(ClientError::Unreachable(format!("the daemon closed the event stream while clone {name} is {phase} (is it shutting down?)")).into())
    }
}

/// The live lines on a terminal: a spinner with the step under way, and a
/// bar per volume being moved.
struct Live {
    multi: indicatif::MultiProgress,
    status: indicatif::ProgressBar,
    volumes: std::collections::HashMap<String, indicatif::ProgressBar>,
}

impl Live {
    fn new(name: &str) -> Self {
        let multi = indicatif::MultiProgress::new();
        let status = multi.add(indicatif::ProgressBar::new_spinner());
        status.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        status.enable_steady_tick(std::time::Duration::from_millis(120));
        status.set_message(format!("clone {name}: waiting for events"));
        Live {
            multi,
            status,
            volumes: Default::default(),
        }
    }

    fn show(&mut self, row: &str, seen: &Observed, tracker: &Tracker) {
        let _ = self.multi.println(row);
        if let Some(m) = &seen.status {
            self.status.set_message(m.clone());
        }
        let Some(step) = &seen.volume else { return };
        let Some(volume) = tracker.volume(step) else {
            return;
        };
        let bar = self.volumes.entry(step.clone()).or_insert_with(|| {
            let pb = self.multi.add(indicatif::ProgressBar::new(0));
            pb.set_prefix(step.clone());
            pb
        });
        // Our own text carries rate and ETA from the log's timestamps:
        // indicatif's would measure when lines arrive, not when bytes moved.
        let (style, position) = match volume.sample().and_then(|s| s.total.map(|t| (s.done, t))) {
            Some((done, total)) => {
                bar.set_length(total.max(1));
                ("  {prefix} [{bar:24}] {msg}", done.min(total))
            }
            None => ("  {prefix} {msg}", 0),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(style)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_position(position);
        bar.set_message(volume.text());
    }

    fn clear(self) {
        for bar in self.volumes.values() {
            bar.finish_and_clear();
        }
        self.status.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// One row of `ferry events -o table`; a volume's checkpoint shows its
/// bytes, rate and ETA as `tracker` (which has seen this line) knows them.
fn event_row(v: &Value, tracker: &Tracker) -> String {
    let (kind, fields) = match &v["event"] {
        Value::String(k) => (k.clone(), Value::Null),
        Value::Object(m) if m.len() == 1 => {
            let (k, f) = m.iter().next().expect("one entry");
            (k.clone(), f.clone())
        }
        other => ("?".into(), other.clone()),
    };
    let step = fields["step"]
        .as_str()
        .or(fields["by"].as_str())
        .unwrap_or("")
        .to_owned();
    let detail = match kind.as_str() {
        "RunSubmitted" => format!(
            "name {} workflow {}",
            s(&fields["name"]),
            s(&fields["workflow"])
        ),
        "Planned" | "PlanExtended" => {
            format!("{} steps", fields["steps"].as_array().map_or(0, Vec::len))
        }
        "StepStarted" | "StepInterrupted" | "StepSuspended" => {
            format!("attempt {}", fields["attempt"])
        }
        "StepFailed" => format!(
            "attempt {}: {}{}",
            fields["attempt"],
            s(&fields["error"]),
            if fields["retry_at_ms"].is_u64() {
                " (will retry)"
            } else {
                ""
            }
        ),
        "RunRefused" => fields["refusals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| s(&r["rule"]))
            .collect::<Vec<_>>()
            .join("; "),
        "CancelRequested" | "CompensationStarted" | "RunFailed" => s(&fields["reason"]),
        "CompensationFailed" => s(&fields["error"]),
        "StepProgress" | "StepSucceeded" => tracker
            .volume(&step)
            .map(|vol| vol.text())
            .unwrap_or_default(),
        "RunSucceededWithWarnings" => fields["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    format!(
        "{:<5}  {:<24}  {:<24}  {:<28}  {detail}",
        v["seq"].to_string(),
        timestamp(v["at_ms"].as_u64().unwrap_or(0)),
        kind,
        step
    )
}

/// `ferry cancel NAME`.
pub async fn cancel(c: &Client, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let v = c
        .json(
            http::Method::POST,
            &format!("/v1/clones/{}/cancel", client::segment(name)),
            None,
        )
        .await?;
    print(&v, output, |_| {
        format!(
            "clone {name}: cancel requested; its steps stop and everything it made is rolled back (`ferry events {name} --follow` shows it)\n"
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry verify NAME`: exit 0 when the chain and MAC are intact, 1 otherwise.
pub async fn verify(c: &Client, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let v = c
        .json(
            http::Method::GET,
            &format!("/v1/clones/{}/verify", client::segment(name)),
            None,
        )
        .await?;
    let ok = v["ok"].as_bool() == Some(true);
    print(&v, output, |v| {
        if ok {
            format!(
                "clone {name}: verified — {} events, hash chain and head MAC intact\n",
                v["events"]
            )
        } else {
            format!(
                "clone {name}: NOT intact — {}{}; restore the state dir from a backup\n",
                s(&v["problem"]),
                v["firstBadSeq"]
                    .as_u64()
                    .map(|n| format!(" (first untrusted seq {n})"))
                    .unwrap_or_default()
            )
        }
    })?;
    Ok(ExitCode::from(if ok { exit::OK } else { exit::FAILED }))
}

/// `ferry delete clone NAME`.
pub async fn delete_clone(c: &Client, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let v = c
        .json(
            http::Method::DELETE,
            &format!("/v1/clones/{}", client::segment(name)),
            None,
        )
        .await?;
    print(&v, output, |_| {
        format!("clone {name} deleted (its record; its destination namespaces stay)\n")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Columns separated by three spaces, as kubectl prints them.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(&mut out, r);
    }
    out
}

/// A short age, as kubectl shows it: `42s`, `5m`, `3h`, `2d`.
fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Unix ms as RFC 3339 UTC (`2026-11-23T21:40:05.123Z`).
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// `ferry gc`: the daemon collects unreferenced chunks in a bucket.
pub async fn gc(c: &Client, params: &str, output: Output) -> anyhow::Result<ExitCode> {
    let path = if params.is_empty() {
        "/v1/gc".to_owned()
    } else {
        format!("/v1/gc?{params}")
    };
    let v = c.json(http::Method::POST, &path, None).await?;
    print(&v, output, |v| {
        format!(
            "bucket {}: {} chunks seen, {} referenced, {} spared (younger than the grace period), {} deleted ({} bytes){}{}\n",
            s(&v["bucket"]),
            v["chunksSeen"],
            v["chunksReferenced"],
            v["chunksSparedYoung"],
            v["chunksDeleted"],
            v["bytesDeleted"],
            if v["dryRun"].as_bool() == Some(true) {
                " — dry run, nothing deleted"
            } else {
                ""
            },
            if v["completed"].as_bool() == Some(false) {
                "; stopped early: an upload is running, run gc again later"
            } else {
                ""
            },
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry clone …`: submits the spec (or, with `dry_run`, asks for the
/// plan); with `wait`, follows the clone to its end and exits with its
/// outcome (0 Healthy, 1 rolled back or failed, 2 Refused).
pub async fn clone(
    c: &Client,
    spec: &Value,
    dry_run: bool,
    wait: bool,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let name = spec["name"].as_str().unwrap_or_default().to_owned();
    if dry_run {
        let v = c
            .json(http::Method::POST, "/v1/clones?dryRun=true", Some(spec))
            .await?;
        print(&v, output, |v| s(&v["text"]))?;
        return Ok(ExitCode::from(if v["refused"].as_bool() == Some(true) {
            exit::USAGE
        } else {
            exit::OK
        }));
    }
    let v = c.json(http::Method::POST, "/v1/clones", Some(spec)).await?;
    if !wait {
        print(&v, output, |v| format!("{}\n", s(&v["message"])))?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "clone {name} started (run {}); following its log:",
        s(&v["run"])
    );
    events(c, &name, EventsOutput::Table, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(1_795_470_005_123), "2026-11-23T21:40:05.123Z");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A     BB\nxxx   y\n");
    }

    #[test]
    fn phases_map_to_exit_codes() {
        assert_eq!(exit_for_phase("Succeeded"), 0);
        assert_eq!(exit_for_phase("RolledBack"), 1);
        assert_eq!(exit_for_phase("Failed"), 1);
        assert_eq!(exit_for_phase("Refused"), 2);
    }
}
