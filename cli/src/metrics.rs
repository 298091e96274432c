//! Prometheus metrics in the text exposition format, written by hand: a few
//! counters and histograms do not need a metrics crate.
//!
//! Clones by phase are read from the store's index at scrape time. Step
//! durations, retries, volume bytes and the event append latency come from
//! watching the events of the runs this daemon drives ([`Metrics::watch`]),
//! each seen once it is durable: the latency is from the event's timestamp
//! (taken just before the append) to its delivery after the fsync.
//!
//! Counters count from the daemon's start. A run resumed after a restart
//! is read from its first event, but only what is appended from then on
//! counts: the earlier events only tell how far each volume had got, so
//! bytes moved before the restart are not counted again after it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_engine::Event;
use ferry_store::{RunId, Store};
use tokio_util::sync::CancellationToken;

use crate::progress::{MOVER_KIND, Phase, Sample};

/// A histogram with fixed bucket bounds (seconds).
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: 0.into(),
            count: 0.into(),
        }
    }

    fn observe(&self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// How far each volume of one run has got, in tar stream bytes: the high
/// marks of its checkpoints and its success. A mark only rises, so a retry
/// that streams a volume again, or a log read again, adds nothing.
#[derive(Debug, Default)]
struct VolumeBytes {
    movers: HashSet<String>,
    /// Step → (stored in the bucket, written into the destination).
    marks: HashMap<String, (u64, u64)>,
}

impl VolumeBytes {
    /// Takes in one event; returns how far the marks rose (upload, download).
    fn observe(&mut self, event: &Event) -> (u64, u64) {
        let (step, up, down) = match event {
            Event::Planned { steps } | Event::PlanExtended { steps, .. } => {
                for d in steps.iter().filter(|d| d.kind == MOVER_KIND) {
                    self.movers.insert(d.id.0.clone());
                }
                return (0, 0);
            }
            Event::StepProgress { step, checkpoint } if self.movers.contains(&step.0) => {
                match Sample::from_checkpoint(0, &checkpoint.value()) {
                    Some(Sample {
                        phase: Phase::Upload,
                        done,
                        ..
                    }) => (step, done, 0),
                    // A download starts once the whole stream is stored.
                    Some(Sample {
                        phase: Phase::Download,
                        done,
                        total,
                        ..
                    }) => (step, total.unwrap_or(0), done),
                    None => return (0, 0),
                }
            }
            Event::StepSucceeded { step, output, .. } if self.movers.contains(&step.0) => {
                let bytes = output.value()["bytes"].as_u64().unwrap_or(0);
                (step, bytes, bytes)
            }
            _ => return (0, 0),
        };
        let mark = self.marks.entry(step.0.clone()).or_default();
        let rose = (up.saturating_sub(mark.0), down.saturating_sub(mark.1));
        mark.0 = mark.0.max(up);
        mark.1 = mark.1.max(down);
        rose
    }
}

const STEP_BOUNDS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
const APPEND_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    step_succeeded: Histogram,
    step_failed: Histogram,
    append_latency: Histogram,
    retries: AtomicU64,
    interrupted: AtomicU64,
    events_seen: AtomicU64,
    not_resumable: AtomicU64,
    volume_bytes_up: AtomicU64,
    volume_bytes_down: AtomicU64,
    /// Requests answered, by status code.
    requests: Mutex<BTreeMap<u16, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            step_succeeded: Histogram::new(STEP_BOUNDS),
            step_failed: Histogram::new(STEP_BOUNDS),
            append_latency: Histogram::new(APPEND_BOUNDS),
            retries: 0.into(),
            interrupted: 0.into(),
            events_seen: 0.into(),
            not_resumable: 0.into(),
            volume_bytes_up: 0.into(),
            volume_bytes_down: 0.into(),
            requests: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Counts an answered request.
    pub fn request(&self, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry(status)
            .or_default() += 1;
    }

    /// Sets how many unfinished runs this daemon cannot drive.
    pub fn set_not_resumable(&self, n: usize) {
        self.not_resumable.store(n as u64, Ordering::Relaxed);
    }

    /// Watches `run`'s events until it ends or `stop` fires, feeding step
    /// durations, retries, volume bytes and append latency with the events
    /// from `from_seq` on; the ones before only set where each volume stood.
    pub fn watch(
        self: &std::sync::Arc<Self>,
        store: &Store,
        run: RunId,
        from_seq: u64,
        stop: CancellationToken,
    ) {
        let mut sub = store.subscribe(run, 0);
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut started: HashMap<String, u64> = HashMap::new();
            let mut volumes = VolumeBytes::default();
            loop {
                let env = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = sub.next() => match next {
                        Ok(Some(env)) => env,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(run.id = %run, error = %e, "metrics stopped watching the run");
                            return;
                        }
                    },
                };
                let event = Event::decode(&env.event).ok();
                let (up, down) = event.as_ref().map_or((0, 0), |e| volumes.observe(e));
                if env.seq < from_seq {
                    // Before this daemon's start: counted by the one before.
                    continue;
                }
                metrics.volume_bytes_up.fetch_add(up, Ordering::Relaxed);
                metrics.volume_bytes_down.fetch_add(down, Ordering::Relaxed);
                metrics.events_seen.fetch_add(1, Ordering::Relaxed);
                let now = unix_ms();
                metrics
                    .append_latency
                    .observe(now.saturating_sub(env.at_ms) as f64 / 1000.0);
                let Some(event) = event else {
                    continue;
                };
                let took = |started: &mut HashMap<String, u64>, step: &str| {
                    started
                        .remove(step)
                        .map(|t| env.at_ms.saturating_sub(t) as f64 / 1000.0)
                };
                match &event {
                    Event::StepStarted { step, .. } => {
                        started.insert(step.0.clone(), env.at_ms);
                    }
                    Event::StepSucceeded { step, .. } => {
                        if let Some(s) = took(&mut started, &step.0) {
                            metrics.step_succeeded.observe(s);
                        }
                    }
                    Event::StepFailed {
                        step, retry_at_ms, ..
                    } => {
                        if let Some(s) = took(&mut started, &step.0) {
                            metrics.step_failed.observe(s);
                        }
                        if retry_at_ms.is_some() {
                            metrics.retries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Event::StepInterrupted { step, .. } => {
                        started.remove(&step.0);
                        metrics.interrupted.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::StepSuspended { step, .. } => {
                        started.remove(&step.0);
                    }
                    Event::RunSubmitted { .. }
                    | Event::Planned { .. }
                    | Event::PlanExtended { .. }
                    | Event::StepProgress { .. }
                    | Event::RunRefused { .. }
                    | Event::CancelRequested { .. }
                    | Event::CompensationStarted { .. }
                    | Event::StepCompensated { .. }
                    | Event::CompensationFailed { .. }
                    | Event::RunSucceeded
                    | Event::RunSucceededWithWarnings { .. }
                    | Event::RunRolledBack
                    | Event::RunFailed { .. } => {}
                }
            }
        });
    }

    /// The text exposition, with `phases` (phase → number of clones) from the index.
    pub fn render(&self, phases: &BTreeMap<String, u64>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP ferry_clones Clones on record, by phase.\n# TYPE ferry_clones gauge\n",
        );
        for phase in [
            "Running",
            "Compensating",
            "Succeeded",
            "SucceededWithWarnings",
            "Refused",
            "RolledBack",
            "Failed",
        ] {
            let _ = writeln!(
                out,
                "ferry_clones{{phase=\"{phase}\"}} {}",
                phases.get(phase).copied().unwrap_or(0)
            );
        }
        for (phase, n) in phases {
            if ![
                "Running",
                "Compensating",
                "Succeeded",
                "SucceededWithWarnings",
                "Refused",
                "RolledBack",
                "Failed",
            ]
            .contains(&phase.as_str())
            {
                let _ = writeln!(out, "ferry_clones{{phase=\"{}\"}} {n}", escape(phase));
            }
        }
        out.push_str("# HELP ferry_clones_not_resumable Unfinished clones this daemon cannot drive (unknown step kinds or unreadable logs).\n# TYPE ferry_clones_not_resumable gauge\n");
        let _ = writeln!(
            out,
            "ferry_clones_not_resumable {}",
            self.not_resumable.load(Ordering::Relaxed)
        );
        out.push_str("# HELP ferry_step_duration_seconds Duration of step attempts, from StepStarted to their outcome.\n# TYPE ferry_step_duration_seconds histogram\n");
        self.step_succeeded.write(
            &mut out,
            "ferry_step_duration_seconds",
            "outcome=\"succeeded\"",
        );
        self.step_failed.write(
            &mut out,
            "ferry_step_duration_seconds",
            "outcome=\"failed\"",
        );
        out.push_str("# HELP ferry_step_retries_total Step attempts that failed and were scheduled again.\n# TYPE ferry_step_retries_total counter\n");
        let _ = writeln!(
            out,
            "ferry_step_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        out.push_str("# HELP ferry_step_interruptions_total Step attempts found unfinished after a crash.\n# TYPE ferry_step_interruptions_total counter\n");
        let _ = writeln!(
            out,
            "ferry_step_interruptions_total {}",
            self.interrupted.load(Ordering::Relaxed)
        );
        out.push_str("# HELP ferry_volume_bytes_moved_total Volume data (tar stream bytes) the data mover carried: upload, from the source into the bucket; download, from the bucket into the destination. Each volume counted once, from its checkpoints and its success.\n# TYPE ferry_volume_bytes_moved_total counter\n");
        for (phase, n) in [
            ("upload", &self.volume_bytes_up),
            ("download", &self.volume_bytes_down),
        ] {
            let _ = writeln!(
                out,
                "ferry_volume_bytes_moved_total{{phase=\"{phase}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP ferry_events_total Events appended to the runs this daemon drives.\n# TYPE ferry_events_total counter\n");
        let _ = writeln!(
            out,
            "ferry_events_total {}",
            self.events_seen.load(Ordering::Relaxed)
        );
        out.push_str("# HELP ferry_event_append_latency_seconds From an event's timestamp to its being durable (fsynced) and delivered.\n# TYPE ferry_event_append_latency_seconds histogram\n");
        self.append_latency
            .write(&mut out, "ferry_event_append_latency_seconds", "");
        out.push_str("# HELP ferry_http_requests_total API requests answered, by status code.\n# TYPE ferry_http_requests_total counter\n");
        for (code, n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "ferry_http_requests_total{{code=\"{code}\"}} {n}");
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The wall clock in unix ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ferry_tests::{WorkInput, World, fast_options, submission, work};

    use super::*;

    #[tokio::test]
    async fn watching_a_run_counts_steps_retries_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let world = World::new(&dir.path().join("world"));
        let engine = ferry_tests::open(
            &dir.path().join("state"),
            &dir.path().join("keys"),
            &world,
            fast_options(),
        )
        .unwrap();
        let plan = vec![
            work(
                "a",
                WorkInput {
                    fail_times: 1,
                    ..Default::default()
                },
            ),
            work("b", WorkInput::default()).after(&["a"]),
        ];
        let run = engine.submit(submission("m", plan)).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        metrics.watch(engine.store(), run, 0, stop.clone());
        engine.wait(run).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // The watcher ends by itself once the run has ended and it saw every event.
        while metrics.events_seen.load(Ordering::Relaxed)
            < engine.store().summary(run).unwrap().unwrap().next_seq
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = metrics.render(&BTreeMap::new());
        assert!(
            text.contains("ferry_step_duration_seconds_count{outcome=\"succeeded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ferry_step_duration_seconds_count{outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("ferry_step_retries_total 1"), "{text}");
        stop.cancel();
        engine.shutdown().await;
    }

    /// A stand-in for the mover step: its kind and checkpoints' shape.
    struct FakeMover;

    impl ferry_engine::Step for FakeMover {
        type Input = serde_json::Value;
        type Output = serde_json::Value;

        fn kind(&self) -> &'static str {
            MOVER_KIND
        }

        async fn run(
            &self,
            ctx: &ferry_engine::StepCtx,
            _input: serde_json::Value,
        ) -> Result<serde_json::Value, ferry_engine::StepError> {
            use serde_json::json;
            for done in [0u64, 100, 250] {
                ctx.save_checkpoint(&json!({"bytes_done": done, "expected_bytes": 280}), true)
                    .await?;
            }
            ctx.save_checkpoint(
                &json!({"bytes_done": 300, "phase": "download", "bytes_downloaded": 120}),
                true,
            )
            .await?;
            Ok(json!({"bytes": 300}))
        }

        async fn compensate(
            &self,
            _ctx: &ferry_engine::CompensateCtx,
            _input: serde_json::Value,
            _output: Option<serde_json::Value>,
        ) -> Result<(), ferry_engine::StepError> {
            Ok(())
        }
    }

    /// Waits until `m` has seen `n` events.
    async fn caught_up(m: &Metrics, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while m.events_seen.load(Ordering::Relaxed) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn volume_bytes_count_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = ferry_store::Store::open(ferry_store::StoreOptions {
            dir: dir.path().join("state"),
            mac_key: ferry_store::Key32::load_or_create(&dir.path().join("audit.key")).unwrap(),
            blob_key: None,
        })
        .unwrap();
        let mut registry = ferry_engine::Registry::new();
        registry.register(FakeMover);
        let engine = ferry_engine::Engine::new(store, registry, fast_options());
        let mut decl = work("volume/db-copy/data", WorkInput::default());
        decl.kind = MOVER_KIND.into();
        decl.input = ferry_engine::Json::null();
        let run = engine.submit(submission("v", vec![decl])).await.unwrap();
        engine.wait(run).await.unwrap();
        let events = engine.store().read(run, 0).unwrap();
        let total = events.len() as u64;

        // A daemon that drove the whole run counts each volume's stream once
        // per leg, whatever its checkpoints said on the way.
        let whole = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        whole.watch(engine.store(), run, 0, stop.clone());
        caught_up(&whole, total).await;
        let text = whole.render(&BTreeMap::new());
        assert!(
            text.contains("ferry_volume_bytes_moved_total{phase=\"upload\"} 300"),
            "{text}"
        );
        assert!(
            text.contains("ferry_volume_bytes_moved_total{phase=\"download\"} 300"),
            "{text}"
        );

        // A daemon started after the 250-byte checkpoint was durable (a
        // restart) counts only what came after it.
        let after = events
            .iter()
            .position(|e| {
                matches!(Event::decode(&e.event), Ok(Event::StepProgress { checkpoint, .. })
                    if checkpoint.value()["bytes_done"] == 250)
            })
            .unwrap() as u64
            + 1;
        let resumed = Arc::new(Metrics::default());
        resumed.watch(engine.store(), run, after, stop.clone());
        caught_up(&resumed, total - after).await;
        let text = resumed.render(&BTreeMap::new());
        assert!(
            text.contains("ferry_volume_bytes_moved_total{phase=\"upload\"} 50"),
            "{text}"
        );
        assert!(
            text.contains("ferry_volume_bytes_moved_total{phase=\"download\"} 300"),
            "{text}"
        );
        assert_eq!(resumed.events_seen.load(Ordering::Relaxed), total - after);
        stop.cancel();
        engine.shutdown().await;
    }

    #[test]
    fn volume_marks_only_rise_and_only_for_mover_steps() {
        use ferry_engine::{Json, StepId};
        let mut v = VolumeBytes::default();
        let mut decl = work("volume/a/data", WorkInput::default());
        decl.kind = MOVER_KIND.into();
        let other = work("apply", WorkInput::default());
        assert_eq!(
            v.observe(&Event::Planned {
                steps: vec![decl, other]
            }),
            (0, 0)
        );
        let progress = |step: &str, cp: &str| Event::StepProgress {
            step: StepId(step.into()),
            checkpoint: Json(cp.into()),
        };
        assert_eq!(
            v.observe(&progress("volume/a/data", r#"{"bytes_done": 40}"#)),
            (40, 0)
        );
        // A retry re-reads the source from its start: nothing new until it passes the mark.
        assert_eq!(
            v.observe(&progress("volume/a/data", r#"{"bytes_done": 10}"#)),
            (0, 0)
        );
        assert_eq!(
            v.observe(&progress("volume/a/data", r#"{"bytes_done": 60}"#)),
            (20, 0)
        );
        assert_eq!(
            v.observe(&progress(
                "volume/a/data",
                r#"{"bytes_done": 70, "phase": "download", "bytes_downloaded": 30}"#
            )),
            (10, 30)
        );
        assert_eq!(
            v.observe(&progress("apply", r#"{"bytes_done": 99}"#)),
            (0, 0)
        );
        assert_eq!(
            v.observe(&Event::StepSucceeded {
                step: StepId("volume/a/data".into()),
                output: Json(r#"{"bytes": 70}"#.into()),
                warnings: vec![],
            }),
            (0, 40)
        );
    }

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.step_succeeded.observe(0.3);
        m.append_latency.observe(0.0002);
        m.request(200);
        let text = m.render(&BTreeMap::from([("Succeeded".into(), 2)]));
        assert!(text.contains("ferry_clones{phase=\"Succeeded\"} 2"));
        assert!(text.contains("ferry_clones{phase=\"Failed\"} 0"));
        assert!(
            text.contains("ferry_step_duration_seconds_bucket{outcome=\"succeeded\",le=\"0.5\"} 1")
        );
        assert!(
            text.contains("ferry_step_duration_seconds_bucket{outcome=\"succeeded\",le=\"0.1\"} 0")
        );
        assert!(text.contains("ferry_event_append_latency_seconds_count 1"));
        assert!(text.contains("ferry_http_requests_total{code=\"200\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        }
    }
}
