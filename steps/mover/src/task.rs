//! A spawned task that is aborted when its handle is dropped, so that a
//! dropped upload or download stops its chunk tasks too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Spawns `fut` on the runtime: it makes progress while the caller awaits
/// something else (a write into the sink), unlike a future merely buffered.
pub(crate) fn spawn<T: Send + 'static>(
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> Scoped<T> {
    Scoped(tokio::spawn(fut))
}

/// The handle of [`spawn`].
pub(crate) struct Scoped<T>(JoinHandle<Result<T>>);

impl<T> Future for Scoped<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(Error::Task).and_then(|r| r))
    }
}

impl<T> Drop for Scoped<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A process-wide pool of `available_parallelism` threads for CPU work
/// (BLAKE3, zstd). Measured against `spawn_blocking`: the same speed, but
/// tokio's blocking pool grows a thread per concurrent call, and glibc gives
/// each thread its own malloc arena; chunk-sized buffers freed across many
/// arenas made peak RSS grow with the volume (84 → 123 MiB from 256 MiB to
/// 1 GiB). A fixed set of threads keeps it flat.
struct Pool {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

fn pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 16);
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("ferry-mover-cpu-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let Ok(rx) = rx.lock() else { return };
                            match rx.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        job();
                    }
                })
                .expect("spawning a mover CPU thread");
        }
        Pool {
            jobs: std::sync::Mutex::new(tx),
        }
    })
}

/// Runs CPU-heavy `f` on the mover's pool, off the async threads.
pub(crate) async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    pool()
        .jobs
        .lock()
        .map_err(|_| pool_gone())?
        .send(job)
        .map_err(|_| pool_gone())?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Error::Internal(
            "a hashing or compression job panicked".into(),
        )),
        Err(_) => Err(pool_gone()),
    }
}

fn pool_gone() -> Error {
    Error::Internal("the mover's CPU pool is gone".into())
}
