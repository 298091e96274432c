//! Fault injection with a seeded RNG: error replies by verb and resource,
//! added latency, writes that commit and still answer 500, and watch streams
//! dropped after N events.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::status::ApiError;

/// One error rule. A request matches when verb and resource match (an absent
/// field matches anything); it then fails with probability `rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; `None` = any.
    pub verb: Option<String>,
    /// Plural resource name (`configmaps`); `None` = any.
    pub resource: Option<String>,
    /// Probability in 0..=1 that a matching request fails.
    pub rate: f64,
    /// 429, 500, 503 or 504 (other codes answer 500).
    pub code: u16,
    /// Seconds for `Retry-After` (429 defaults to 1).
    pub retry_after: Option<u64>,
    /// For writes: perform the write, then answer 500 anyway.
    pub commit: bool,
    /// Fire at most this many times (`None` = unlimited).
    pub max: Option<u64>,
}

/// The whole fault configuration, settable through the library or `PUT /sim/v1/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultConfig {
    /// RNG seed; the same seed and request sequence fail the same requests.
    pub seed: u64,
    /// Error rules, first match wins.
    pub rules: Vec<FaultRule>,
    /// Latency added to every API request, in milliseconds.
    pub latency_ms: u64,
    /// End every watch stream abruptly after this many events.
    pub drop_watch_after: Option<u64>,
    /// Cut every pod exec stream abruptly (no status, no close frame) once
    /// this many output bytes were sent.
    pub drop_exec_after: Option<u64>,
}

/// What a matching rule decided for one request.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The error to answer with.
    pub error: ApiError,
    /// Commit the write before answering with the error.
    pub commit: bool,
}

#[derive(Debug)]
struct Inner {
    config: FaultConfig,
    rng: StdRng,
    fired: Vec<u64>,
    injected: u64,
}

/// Live fault state.
#[derive(Debug)]
pub struct Faults {
    inner: Mutex<Inner>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new(FaultConfig::default())
    }
}

impl Faults {
    /// Faults from a configuration.
    pub fn new(config: FaultConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        let fired = vec![0; config.rules.len()];
        Faults {
            inner: Mutex::new(Inner {
                config,
                rng,
                fired,
                injected: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the configuration (re-seeding the RNG).
    pub fn set(&self, config: FaultConfig) {
        let mut g = self.lock();
        g.rng = StdRng::seed_from_u64(config.seed);
        g.fired = vec![0; config.rules.len()];
        g.config = config;
    }

    /// The current configuration.
    pub fn get(&self) -> FaultConfig {
        self.lock().config.clone()
    }

    /// How many errors were injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Added latency for every request.
    pub fn latency(&self) -> Option<Duration> {
        let ms = self.lock().config.latency_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Events after which a watch is dropped.
    pub fn drop_watch_after(&self) -> Option<u64> {
        self.lock().config.drop_watch_after
    }

    /// Count one injected fault (a cut exec stream).
    pub fn count_injected(&self) {
        self.lock().injected += 1;
    }

    /// The exec stream cut-off, if any.
    pub fn drop_exec_after(&self) -> Option<u64> {
        self.lock().config.drop_exec_after
    }

    /// Decide whether this request fails.
    pub fn decide(&self, verb: &str, resource: &str) -> Option<Injected> {
        let mut g = self.lock();
        let Inner {
            config,
            rng,
            fired,
            injected,
        } = &mut *g;
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.verb.as_deref().is_some_and(|v| v != verb)
                || rule.resource.as_deref().is_some_and(|r| r != resource)
            {
                continue;
            }
            if rule.max.is_some_and(|m| fired[i] >= m) {
                continue;
            }
            if rng.random::<f64>() >= rule.rate {
                return None;
            }
            fired[i] += 1;
            *injected += 1;
            let error = match rule.code {
                429 => ApiError::too_many_requests(rule.retry_after.unwrap_or(1)),
                503 => {
                    let mut e = ApiError::unavailable(
                        "the server is currently unable to handle the request (injected)",
                    );
                    e.retry_after = rule.retry_after;
                    e
                }
                504 => {
                    let mut e = ApiError::internal("injected");
                    e.code = 504;
                    e.reason = "Timeout".into();
                    e.message =
                        "Timeout: request did not complete within the allowed duration (injected)"
                            .into();
                    e.details = Some(
                        serde_json::json!({"retryAfterSeconds": rule.retry_after.unwrap_or(1)}),
                    );
                    e
                }
                _ => ApiError::internal("injected fault"),
            };
            return Some(Injected {
                error,
                commit: rule.commit,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_bounded() {
        let cfg = FaultConfig {
            seed: 7,
            rules: vec![FaultRule {
                verb: Some("create".into()),
                rate: 0.5,
                code: 503,
                max: Some(3),
                ..Default::default()
            }],
            ..Default::default()
        };
        let a = Faults::new(cfg.clone());
        let b = Faults::new(cfg);
        let run = |f: &Faults| {
            (0..50)
                .map(|_| f.decide("create", "configmaps").is_some())
                .collect::<Vec<_>>()
        };
        let ra = run(&a);
        assert_eq!(ra, run(&b));
        assert_eq!(ra.iter().filter(|x| **x).count(), 3);
        assert!(a.decide("get", "configmaps").is_none());
    }
}
