//! Prometheus metrics in the text exposition format, written by hand: a few
//! counters and histograms do not need a metrics crate.
//!
//! Clones by phase are read from the store's index at scrape time. Step
//! durations, retries and the event append latency come from watching the
//! events of the runs this daemon drives ([`Metrics::watch`]), each seen
//! once it is durable: the latency is from the event's timestamp (taken
//! just before the append) to its delivery after the fsync.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_engine::Event;
use ferry_store::{RunId, Store};
use tokio_util::sync::CancellationToken;

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

    /// Watches `run`'s events from `from_seq` until it ends or `stop` fires,
    /// feeding step durations, retries and append latency.
    pub fn watch(
        self: &std::sync::Arc<Self>,
        store: &Store,
        run: RunId,
        from_seq: u64,
        stop: CancellationToken,
    ) {
        let mut sub = store.subscribe(run, from_seq);
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut started: HashMap<String, u64> = HashMap::new();
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
                metrics.events_seen.fetch_add(1, Ordering::Relaxed);
                let now = unix_ms();
                metrics
                    .append_latency
                    .observe(now.saturating_sub(env.at_ms) as f64 / 1000.0);
                let Ok(event) = Event::decode(&env.event) else {
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
