//! Live progress of a clone read from its event log (`ferry clone --wait`,
//! `ferry events --follow`): the step under way and, for each volume the
//! data mover carries (`volume-mover` steps), bytes done, rate and ETA.
//!
//! Rates come from the events' own timestamps (`at_ms`) and the mover's
//! checkpoints (`StepProgress`), never from when a line reaches the client,
//! so a log read after the fact shows the rates the clone had. A mover
//! checkpoint is the step's JSON (`steps/src/workflow/mover.rs`,
//! `MoverCheckpoint`): `bytes_done` (tar stream stored in the bucket),
//! optionally `expected_bytes` (the volume's size, measured alongside `tar`),
//! `phase` (`upload` or `download`, absent in older logs: upload) and
//! `bytes_downloaded`. It is read field by field, so older and newer
//! checkpoints both display.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

/// The step kind whose checkpoints are volume transfers.
pub const MOVER_KIND: &str = "volume-mover";

/// Which half of a volume's transfer a checkpoint is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `tar -c` on the source into the bucket.
    Upload,
    /// Chunks from the bucket into `tar -x` on the destination.
    Download,
}

/// One point of a volume's transfer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When the checkpoint was recorded (the event's `at_ms`).
    pub at_ms: u64,
    /// Upload or download.
    pub phase: Phase,
    /// Stream bytes done in this phase.
    pub done: u64,
    /// What this phase will reach: about the volume's measured size for an
    /// upload (the tar stream differs a little), exactly the stored
    /// stream's length for a download. `None` when unknown.
    pub total: Option<u64>,
}

impl Sample {
    /// The sample in a mover checkpoint recorded at `at_ms`; `None` when
    /// `checkpoint` is not one.
    pub fn from_checkpoint(at_ms: u64, checkpoint: &Value) -> Option<Sample> {
        let stored = checkpoint.get("bytes_done")?.as_u64()?;
        let expected = checkpoint.get("expected_bytes").and_then(Value::as_u64);
        Some(match checkpoint.get("phase").and_then(Value::as_str) {
            Some("download") => Sample {
                at_ms,
                phase: Phase::Download,
                done: checkpoint
                    .get("bytes_downloaded")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                total: Some(stored),
            },
            _ => Sample {
                at_ms,
                phase: Phase::Upload,
                done: stored,
                total: expected,
            },
        })
    }
}

/// Bytes per second from `prev` to `now`; `None` when they cannot be
/// compared (another phase, no time between them, or the count went back:
/// a new attempt).
pub fn rate(prev: &Sample, now: &Sample) -> Option<f64> {
    if prev.phase != now.phase || now.at_ms <= prev.at_ms || now.done < prev.done {
        return None;
    }
    Some((now.done - prev.done) as f64 * 1000.0 / (now.at_ms - prev.at_ms) as f64)
}

/// Time left at `rate`, when the total is known and the rate is not zero.
pub fn eta(now: &Sample, rate: f64) -> Option<Duration> {
    let total = now.total?;
    if rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    Some(Duration::from_secs_f64(
        total.saturating_sub(now.done) as f64 / rate,
    ))
}

/// A byte count as people read it: `512 B`, `1.5 KiB`, `3.2 MiB`, `1.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration as people read it: `7s`, `4m05s`, `2h03m`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The line for a volume at `now`, with the rate since the sample before:
/// `upload 3.0 MiB of ~6.0 MiB (50%) at 1.2 MiB/s, ETA 3s`. Without a
/// known total: bytes and rate, no ETA.
pub fn volume_text(now: &Sample, rate: Option<f64>) -> String {
    let mut s = match now.phase {
        Phase::Upload => format!("upload {}", bytes(now.done)),
        Phase::Download => format!("download {}", bytes(now.done)),
    };
    if let Some(total) = now.total {
        // An upload's total is the volume's measured size, which the tar
        // stream only approaches: say so, and never show more than 100%.
        let approx = if now.phase == Phase::Upload { "~" } else { "" };
        let pct = now
            .done
            .saturating_mul(100)
            .checked_div(total)
            .map_or(100, |p| p.min(100));
        s.push_str(&format!(" of {approx}{} ({pct}%)", bytes(total)));
    }
    if let Some(r) = rate {
        s.push_str(&format!(" at {}/s", bytes(r as u64)));
        if let Some(left) = eta(now, r) {
            s.push_str(&format!(", ETA {}", duration(left)));
        }
    }
    s
}

/// A volume's transfer as the log shows it so far.
#[derive(Clone, Debug, Default)]
pub struct Volume {
    last: Option<Sample>,
    rate: Option<f64>,
    /// Set once the step has succeeded: the bytes moved.
    finished: Option<u64>,
}

impl Volume {
    /// The latest sample, if any.
    pub fn sample(&self) -> Option<&Sample> {
        self.last.as_ref()
    }

    /// The volume's line: its progress, or `moved N` once done.
    pub fn text(&self) -> String {
        match (self.finished, &self.last) {
            (Some(n), _) => format!("done, {} moved", bytes(n)),
            (None, Some(s)) => volume_text(s, self.rate),
            (None, None) => "starting".to_owned(),
        }
    }

    fn observe(&mut self, now: Sample) {
        self.rate = self.last.as_ref().and_then(|prev| rate(prev, &now));
        self.last = Some(now);
    }
}

/// What one event changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The live line for the step under way, when it changed.
    pub status: Option<String>,
    /// The volume step whose transfer changed.
    pub volume: Option<String>,
}

/// Follows a clone's log line by line (the JSON Lines of `GET
/// /v1/clones/{name}/events`).
#[derive(Debug)]
pub struct Tracker {
    name: String,
    kinds: HashMap<String, String>,
    volumes: BTreeMap<String, Volume>,
}

impl Tracker {
    /// A tracker for clone `name`.
    pub fn new(name: &str) -> Self {
        Tracker {
            name: name.to_owned(),
            kinds: HashMap::new(),
            volumes: BTreeMap::new(),
        }
    }

    /// The volume step `step`, once the log has shown it moving.
    pub fn volume(&self, step: &str) -> Option<&Volume> {
        self.volumes.get(step)
    }

    fn is_mover(&self, step: &str) -> bool {
        match self.kinds.get(step) {
            Some(kind) => kind == MOVER_KIND,
            // A log read from its middle: the mover's steps are named `volume/…`.
            None => step.starts_with("volume/"),
        }
    }

    /// Takes in one line of the log.
    pub fn observe(&mut self, line: &Value) -> Observed {
        let (kind, fields) = match &line["event"] {
            Value::Object(m) => match m.iter().next() {
                Some((k, v)) => (k.as_str(), v),
                None => return Observed::default(),
            },
            Value::String(k) => (k.as_str(), &Value::Null),
            _ => return Observed::default(),
        };
        let at_ms = line["at_ms"].as_u64().unwrap_or(0);
        let step = fields["step"].as_str().unwrap_or_default().to_owned();
        let name = &self.name;
        let mut out = Observed::default();
        match kind {
            "Planned" | "PlanExtended" => {
                for d in fields["steps"].as_array().into_iter().flatten() {
                    if let (Some(id), Some(k)) = (d["id"].as_str(), d["kind"].as_str()) {
                        self.kinds.insert(id.to_owned(), k.to_owned());
                    }
                }
            }
            "StepStarted" => {
                out.status = Some(format!(
                    "clone {name}: {step} (attempt {})",
                    fields["attempt"]
                ));
                if self.is_mover(&step) {
                    // A new attempt: rates start again from its own checkpoints.
                    let v = self.volumes.entry(step.clone()).or_default();
                    v.rate = None;
                    v.last = None;
                    out.volume = Some(step);
                }
            }
            "StepProgress" => {
                if self.is_mover(&step)
                    && let Some(sample) = Sample::from_checkpoint(at_ms, &fields["checkpoint"])
                {
                    self.volumes
                        .entry(step.clone())
                        .or_default()
                        .observe(sample);
                    out.volume = Some(step);
                }
            }
            "StepSucceeded" => {
                out.status = Some(format!("clone {name}: {step} done"));
                if self.is_mover(&step) {
                    let v = self.volumes.entry(step.clone()).or_default();
                    v.finished = Some(
                        fields["output"]["bytes"]
                            .as_u64()
                            .or(v.last.map(|s| s.done))
                            .unwrap_or(0),
                    );
                    out.volume = Some(step);
                }
            }
            "StepFailed" => {
                out.status = Some(format!(
                    "clone {name}: {step} failed{}",
                    if fields["retry_at_ms"].is_u64() {
                        ", will retry"
                    } else {
                        ""
                    }
                ));
            }
            "CompensationStarted" => out.status = Some(format!("clone {name}: rolling back")),
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn upload(at_ms: u64, done: u64, expected: Option<u64>) -> Value {
        let mut cp = json!({"version": 1, "run": "r", "volume": "db-data", "bytes_done": done, "chunks_done": 1,
            "stats": {"bytes_read": done, "chunks": 1, "chunks_uploaded": 1, "chunks_skipped": 0, "bytes_uploaded": 10, "raw_bytes_uploaded": 10}});
        if let Some(e) = expected {
            cp["expected_bytes"] = json!(e);
        }
        json!({"seq": 9, "at_ms": at_ms, "event": {"StepProgress": {"step": "volume/db-copy/data", "checkpoint": cp}}})
    }

    #[test]
    fn rate_and_eta_from_two_checkpoints() {
        let a = Sample::from_checkpoint(
            10_000,
            &upload(0, 100 * MIB, Some(400 * MIB))["event"]["StepProgress"]["checkpoint"],
        )
        .unwrap();
        let b = Sample::from_checkpoint(
            15_000,
            &upload(0, 150 * MIB, Some(400 * MIB))["event"]["StepProgress"]["checkpoint"],
        )
        .unwrap();
        let r = rate(&a, &b).unwrap();
        assert_eq!(r, 10.0 * MIB as f64, "50 MiB in 5 s");
        assert_eq!(
            eta(&b, r),
            Some(Duration::from_secs(25)),
            "250 MiB left at 10 MiB/s"
        );
        assert_eq!(
            volume_text(&b, Some(r)),
            "upload 150.0 MiB of ~400.0 MiB (37%) at 10.0 MiB/s, ETA 25s"
        );
        // Not comparable: the count went back (a new attempt), or no time passed.
        assert_eq!(rate(&b, &a), None);
        assert_eq!(rate(&b, &Sample { at_ms: 15_000, ..b }), None);
    }

    #[test]
    fn without_a_measured_size_bytes_and_rate_but_no_eta() {
        let cp = |at, done| {
            Sample::from_checkpoint(
                at,
                &upload(0, done, None)["event"]["StepProgress"]["checkpoint"],
            )
            .unwrap()
        };
        let (a, b) = (cp(0, 0), cp(2_000, 3 * MIB));
        let r = rate(&a, &b);
        assert_eq!(eta(&b, r.unwrap()), None);
        assert_eq!(volume_text(&b, r), "upload 3.0 MiB at 1.5 MiB/s");
        assert_eq!(volume_text(&a, None), "upload 0 B");
    }

    #[test]
    fn downloads_count_against_the_stored_stream() {
        let cp = |at, down| {
            Sample::from_checkpoint(
                at,
                &json!({"bytes_done": 8 * MIB, "chunks_done": 8, "expected_bytes": 7 * MIB, "phase": "download", "bytes_downloaded": down}),
            )
            .unwrap()
        };
        let (a, b) = (cp(1_000, 2 * MIB), cp(2_000, 4 * MIB));
        assert_eq!(b.total, Some(8 * MIB), "the stream's exact length");
        let r = rate(&a, &b);
        assert_eq!(
            volume_text(&b, r),
            "download 4.0 MiB of 8.0 MiB (50%) at 2.0 MiB/s, ETA 2s"
        );
        // An upload's rate does not carry over into the download.
        let up = Sample::from_checkpoint(500, &json!({"bytes_done": 8 * MIB})).unwrap();
        assert_eq!(rate(&up, &a), None);
        // More stream than the measured size: capped at 100%, no negative ETA.
        let over = Sample::from_checkpoint(
            9_000,
            &json!({"bytes_done": 9 * MIB, "expected_bytes": 8 * MIB}),
        )
        .unwrap();
        assert_eq!(
            volume_text(&over, Some(MIB as f64)),
            "upload 9.0 MiB of ~8.0 MiB (100%) at 1.0 MiB/s, ETA 0s"
        );
        assert_eq!(
            Sample::from_checkpoint(0, &json!({"n": 3})),
            None,
            "not a mover checkpoint"
        );
    }

    #[test]
    fn the_tracker_follows_volumes_through_the_log() {
        let mut t = Tracker::new("shop");
        t.observe(&json!({"seq": 5, "at_ms": 1, "event": {"PlanExtended": {"by": "preflight", "steps": [
            {"id": "volume/db-copy/data", "kind": "volume-mover"}, {"id": "apply", "kind": "apply"}], "add_deps": []}}}));
        let o = t.observe(&json!({"seq": 6, "at_ms": 2, "event": {"StepStarted": {"step": "volume/db-copy/data", "attempt": 1, "deadline_ms": null}}}));
        assert_eq!(
            o.status.as_deref(),
            Some("clone shop: volume/db-copy/data (attempt 1)")
        );
        assert_eq!(t.volume("volume/db-copy/data").unwrap().text(), "starting");
        t.observe(&upload(10_000, 10 * MIB, Some(40 * MIB)));
        let o = t.observe(&upload(12_000, 20 * MIB, Some(40 * MIB)));
        assert_eq!(o.volume.as_deref(), Some("volume/db-copy/data"));
        assert_eq!(
            t.volume("volume/db-copy/data").unwrap().text(),
            "upload 20.0 MiB of ~40.0 MiB (50%) at 5.0 MiB/s, ETA 4s"
        );
        // A retry starts its rate afresh.
        t.observe(&json!({"seq": 12, "at_ms": 20_000, "event": {"StepStarted": {"step": "volume/db-copy/data", "attempt": 2, "deadline_ms": null}}}));
        t.observe(&upload(21_000, 20 * MIB, Some(40 * MIB)));
        assert_eq!(
            t.volume("volume/db-copy/data").unwrap().text(),
            "upload 20.0 MiB of ~40.0 MiB (50%)"
        );
        // Progress of other steps is not a volume's.
        let o = t.observe(&json!({"seq": 14, "at_ms": 3, "event": {"StepProgress": {"step": "apply", "checkpoint": {"bytes_done": 1}}}}));
        assert_eq!(o.volume, None);
        t.observe(&json!({"seq": 15, "at_ms": 30_000, "event": {"StepSucceeded": {"step": "volume/db-copy/data", "output": {"bytes": 41 * MIB}, "warnings": []}}}));
        assert_eq!(
            t.volume("volume/db-copy/data").unwrap().text(),
            "done, 41.0 MiB moved"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(Duration::from_secs(7)), "7s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(7380)), "2h03m");
    }
}
