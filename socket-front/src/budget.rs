//! Memory budgets: what one request, one connection and all connections together may make
//! socket-front hold, whatever clients send.
//!
//! * **Per request**: the decoder counts every string of a request as it arrives (its length
//!   plus `STRING_OVERHEAD`, before allocating it) and refuses a request past
//!   `Limits::max_request_bytes` (32 MiB: an AddTextToStore of the largest text, 16 MiB, with
//!   thousands of references fits) with "request too large: …" (`guix_formats::worker::budget`).
//! * **All connections**: beyond the first [`FREE_PER_REQUEST`] bytes, which every request gets
//!   without asking (a point query is a few hundred), a request's bytes are drawn from one
//!   [`MemoryPool`] of [`POOL_BYTES`] (128 MiB, four requests of the largest size) shared by every
//!   connection, in units of [`GRANT_UNIT`], and given back when the request has been answered.
//!   A request that cannot get its bytes within [`POOL_WAIT`] gets "daemon busy: …" instead of
//!   waiting longer.
//! * **Per connection**: requests are not pipelined, so a connection holds one request's bytes
//!   at a time; what it keeps across requests is bounded separately: its settings
//!   ([`crate::settings::MAX_SETTINGS_BYTES`]).
//!
//! All refusals are the C++-style `STDERR_ERROR` to that client; the request was not read to
//! its end, so the connection is then closed (`Failure::Fatal`).
//!
//! What this bounds: decoded requests take at most `POOL_BYTES` plus `FREE_PER_REQUEST` per
//! connection (each connection also has its 4 KiB read buffer and its task). The end-to-end test
//! `tests/tests/hostile.rs` holds socket-front's peak RSS under 384 MiB while hostile clients send
//! the largest requests the protocol allows.

use std::sync::Arc;
use std::time::Duration;

use guix_formats::worker::budget::{Budget, Wait};
use guix_formats::worker::ProtoError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of every request that need no grant from the pool.
pub const FREE_PER_REQUEST: u64 = 16 << 10;
/// The pool shared by all connections.
pub const POOL_BYTES: u64 = 128 << 20;
/// Bytes are taken from the pool in units this large (fewer semaphore operations).
pub const GRANT_UNIT: u64 = 256 << 10;
/// How long a request waits for its bytes before "daemon busy".
pub const POOL_WAIT: Duration = Duration::from_secs(2);

/// The bytes all connections' requests share.
pub struct MemoryPool {
    sem: Arc<Semaphore>,
    total: u64,
    wait: Duration,
}

impl Default for MemoryPool {
    fn default() -> Self {
        MemoryPool::new(POOL_BYTES, POOL_WAIT)
    }
}

impl MemoryPool {
    pub fn new(total: u64, wait: Duration) -> MemoryPool {
        let permits = usize::try_from(total).unwrap_or(Semaphore::MAX_PERMITS).min(Semaphore::MAX_PERMITS);
        MemoryPool { sem: Arc::new(Semaphore::new(permits)), total, wait }
    }

    /// The budget of one request; its bytes go back to the pool when it is dropped.
    pub fn request(&self) -> RequestGrant {
        RequestGrant { sem: self.sem.clone(), total: self.total, wait: self.wait, held: 0, permits: None }
    }

    /// Bytes not granted to any request now.
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64
    }
}

/// What one request holds of the [`MemoryPool`].
pub struct RequestGrant {
    sem: Arc<Semaphore>,
    total: u64,
    wait: Duration,
    held: u64,
    permits: Option<OwnedSemaphorePermit>,
}

impl RequestGrant {
    fn keep(&mut self, p: OwnedSemaphorePermit, n: u64) {
        self.held += n;
        match &mut self.permits {
            Some(held) => held.merge(p),
            None => self.permits = Some(p),
        }
    }
}

fn busy(total: u64) -> ProtoError {
    ProtoError::Budget(format!(
        "daemon busy: the {} MiB socket-front keeps for requests are taken by other requests; try again later",
        total >> 20
    ))
}

impl Budget for RequestGrant {
    fn admit(&mut self, total: u64) -> Option<Wait<'_>> {
        let need = total.saturating_sub(FREE_PER_REQUEST);
        if need <= self.held {
            return None;
        }
        let more = (need - self.held).div_ceil(GRANT_UNIT).saturating_mul(GRANT_UNIT);
        let n = match u32::try_from(more) {
            Ok(n) if self.held.saturating_add(more) <= self.total => n,
            // More than the whole pool: waiting cannot help.
            _ => return Some(Box::pin(async move { Err(busy(self.total)) })),
        };
        if let Ok(p) = self.sem.clone().try_acquire_many_owned(n) {
            self.keep(p, more);
            return None;
        }
        Some(Box::pin(async move {
            match tokio::time::timeout(self.wait, self.sem.clone().acquire_many_owned(n)).await {
                Ok(Ok(p)) => {
                    self.keep(p, more);
                    Ok(())
                }
                _ => Err(busy(self.total)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_share_the_pool_and_give_it_back() {
        let pool = MemoryPool::new(4 * GRANT_UNIT, Duration::from_millis(50));
        let mut a = pool.request();
        // Small requests never touch the pool.
        assert!(a.admit(FREE_PER_REQUEST).is_none());
        assert_eq!(pool.available(), 4 * GRANT_UNIT);
        assert!(a.admit(FREE_PER_REQUEST + 1).is_none());
        assert_eq!(pool.available(), 3 * GRANT_UNIT);
        assert!(a.admit(FREE_PER_REQUEST + 3 * GRANT_UNIT + 1).is_none());
        assert_eq!(pool.available(), 0);
        // Another request waits, then is refused with a clear message.
        let mut b = pool.request();
        let err = b.admit(FREE_PER_REQUEST + 1).expect("must wait").await.unwrap_err();
        assert!(err.to_string().starts_with("daemon busy:"), "{err}");
        // Once `a` is answered, its bytes serve `b`, even one that was waiting.
        let mut c = pool.request();
        let waiting = tokio::spawn(async move {
            let r = match c.admit(FREE_PER_REQUEST + 1) {
                Some(w) => w.await,
                None => Ok(()),
            };
            (r, c.held)
        });
        tokio::task::yield_now().await;
        drop(a);
        let (r, held) = waiting.await.unwrap();
        assert!(r.is_ok());
        assert_eq!(held, GRANT_UNIT);
        // More than the pool holds is refused at once.
        let mut d = MemoryPool::new(GRANT_UNIT, Duration::from_secs(60)).request();
        assert!(d.admit(u64::MAX).expect("refused").await.is_err());
    }
}
