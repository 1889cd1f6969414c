//! The transfer pool: threads of their own for the transfers a client paces (AddToStore's NAR,
//! ImportPaths, ExportPath), apart from tokio's blocking pool, which serves handshakes and
//! store-wide queries.
//!
//! A transfer runs blocking code over the bridged socket ([`crate::bridge`]) and holds its
//! thread for as long as the client takes. Before this pool, a few hundred stalled uploads
//! took every thread of tokio's blocking pool and new clients could not even finish their
//! handshake. Now:
//!
//! * at most [`TRANSFER_THREADS`] (128) transfers run at once, each on a thread of its own;
//!   the next one waits for a slot at most [`TRANSFER_QUEUE_WAIT`] (30 s), then the client gets
//!   "too many transfers in progress …" (and its connection is closed: an inline NAR is left
//!   unread);
//! * a transfer's reads and writes of the socket wait at most the idle limit (default
//!   [`DEFAULT_IDLE`], 5 minutes, as the substituter's downloads; `GUIX_DAEMON_RS_TRANSFER_IDLE`
//!   in socket-front's environment sets it in seconds): a client silent that long in the middle
//!   of a NAR is dropped, and its scratch item removed;
//! * transfer threads run at nice [`TRANSFER_NICE`], as the scratch remover does;
//! * tokio's blocking pool is kept small ([`crate::BLOCKING_THREADS`]), since transfers no
//!   longer use it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Failure;

/// Transfers running at once.
pub const TRANSFER_THREADS: usize = 128;
/// The niceness of transfer threads: the runtime thread, which answers every connection, wins
/// the CPU over unpacking or removing files when both cores are busy.
pub const TRANSFER_NICE: i32 = 10;
/// How long a transfer waits for a free slot.
pub const TRANSFER_QUEUE_WAIT: Duration = Duration::from_secs(30);
/// How long a transfer waits for the client to send (or take) a byte.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// The environment variable that sets the idle limit, in seconds (fractions allowed).
pub const IDLE_ENV: &str = "GUIX_DAEMON_RS_TRANSFER_IDLE";

pub struct TransferPool {
    slots: Arc<Semaphore>,
    size: usize,
    queue_wait: Duration,
    idle: Duration,
}

impl Default for TransferPool {
    fn default() -> Self {
        TransferPool::new(TRANSFER_THREADS, TRANSFER_QUEUE_WAIT, DEFAULT_IDLE)
    }
}

impl TransferPool {
    pub fn new(size: usize, queue_wait: Duration, idle: Duration) -> TransferPool {
        TransferPool { slots: Arc::new(Semaphore::new(size.max(1))), size: size.max(1), queue_wait, idle }
    }

    /// The default pool, with the idle limit from [`IDLE_ENV`] when it is set (a value that is
    /// not a positive number of seconds is reported and ignored).
    pub fn from_env() -> TransferPool {
        let mut pool = TransferPool::default();
        if let Some(v) = std::env::var_os(IDLE_ENV) {
            match v.to_str().and_then(|s| s.trim().parse::<f64>().ok()).filter(|s| *s > 0.0 && s.is_finite()) {
                Some(secs) => pool.idle = Duration::from_secs_f64(secs),
                None => eprintln!("guix-socket-front: ignoring {IDLE_ENV}={v:?}: not a positive number of seconds"),
            }
        }
        pool
    }

    /// How long a transfer waits for its client.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Waits for a free slot ([`TRANSFER_QUEUE_WAIT`] at most).
    pub async fn slot(&self) -> Result<Slot, Failure> {
        match tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { permit, idle: self.idle }),
            _ => Err(Failure::Fatal(format!(
                "too many transfers in progress ({} at once, none finished in {} s); try again later",
                self.size,
                self.queue_wait.as_secs()
            ))),
        }
    }
}

/// A reserved place in the pool: [`Slot::run`] starts the transfer's thread.
pub struct Slot {
    permit: OwnedSemaphorePermit,
    idle: Duration,
}

impl Slot {
    /// Runs `f` on a thread of its own, under the pool's idle limit for bridged I/O
    /// ([`crate::bridge::under_idle_limit`]). Returns what `f` returned and whether the client
    /// was silent past the limit.
    pub async fn run<T, F>(self, f: F) -> Result<(T, bool), Failure>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let Slot { permit, idle } = self;
        std::thread::Builder::new()
            .name("transfer".into())
            .spawn(move || {
                // Queries first: a transfer is paced by its client and may wait for the CPU.
                let _ = guix_store::sched::set_thread_nice(TRANSFER_NICE);
                let out = crate::bridge::under_idle_limit(idle, f);
                drop(permit);
                let _ = tx.send(out);
            })
            .map_err(|e| Failure::Fatal(format!("cannot start a transfer thread: {e}")))?;
        rx.await.map_err(|_| Failure::Gone("transfer thread failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_and_refusing_after_the_wait() {
        let pool = TransferPool::new(1, Duration::from_millis(50), Duration::from_secs(1));
        let first = pool.slot().await.unwrap();
        let err = pool.slot().await.err().expect("no second slot");
        assert!(matches!(&err, Failure::Fatal(m) if m.starts_with("too many transfers in progress")), "{err}");
        let (v, idled) = first.run(|| std::thread::current().name().map(str::to_owned)).await.unwrap();
        assert_eq!(v.as_deref(), Some("transfer"));
        assert!(!idled);
        // The slot is free again once the thread is done.
        assert!(pool.slot().await.is_ok());
    }
}
