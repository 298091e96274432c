//! Crash points for the crash tests.
//!
//! `FERRY_FAILPOINT=name` (or `name@N` for the N-th hit) makes the process,
//! on reaching that point, print `FAILPOINT name` on stderr and freeze the
//! calling thread, so the test that started it can kill it with SIGKILL at
//! exactly that place. Unset (always, outside tests), a failpoint costs one
//! atomic load. A comma separates several points.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("FERRY_FAILPOINT")
            .ok()
            .map(|spec| {
                spec.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let (name, nth) = match s.split_once('@') {
                            Some((n, k)) => (n, k.parse().unwrap_or(1)),
                            None => (s, 1),
                        };
                        Armed {
                            name: name.to_owned(),
                            nth,
                            hits: AtomicU64::new(0),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Marks a crash point named `name`.
pub fn failpoint(name: &str) {
    for point in armed() {
        if point.name == name && point.hits.fetch_add(1, Ordering::SeqCst) + 1 == point.nth {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "FAILPOINT {name}");
            let _ = err.flush();
            drop(err);
            // Freeze here until the parent kills the process.
            loop {
                std::thread::park();
            }
        }
    }
}
