//! Time for the engine: unix milliseconds for the log, tokio instants for
//! sleeping, so tests can pause tokio's clock and still see deadlines pass.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Maps tokio's (pausable) monotonic clock onto unix milliseconds, anchored
/// to the wall clock once at creation.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    /// A clock anchored at the current wall-clock time.
    pub fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            base_ms,
            base: Instant::now(),
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }

    /// The tokio instant at unix milliseconds `ms` (now, if already past).
    pub fn instant_at(&self, ms: u64) -> Instant {
        let now_ms = self.now_ms();
        Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
