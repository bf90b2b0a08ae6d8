//! The one retry loop every service uses: try, and on an error that says it is transient (an
//! outage) wait with [`Backoff`] and try again, until it succeeds, the error is permanent (the
//! input itself is refused), or shutdown comes. Callers say what to do on each failure
//! (readiness, metrics, a log line); the decision to retry is the error's own.

use crate::backoff::Backoff;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether retrying can help: an outage can pass, refused input cannot.
pub trait Transient {
    /// True for an outage (retry it), false for a refusal of the input (stop and hand it back).
    fn is_transient(&self) -> bool;
}

/// Every error of a start-up or housekeeping step is an outage to wait out.
impl Transient for anyhow::Error {
    fn is_transient(&self) -> bool {
        true
    }
}

/// An error retried whatever it says: for a step whose every failure is an outage by
/// construction (a producer that waits out the broker, a roll that waits out the store).
#[derive(Debug)]
pub struct Outage<E>(pub E);

impl<E> Transient for Outage<E> {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp<E> {
    /// Shutdown came first.
    #[error("shutdown came first")]
    Cancelled,
    /// The error says retrying cannot help.
    #[error(transparent)]
    Permanent(E),
}

/// Shutdown came before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutdown came first")]
pub struct Cancelled;

/// Runs `fut` unless `cancel` fires first (then `fut` is dropped where it stands).
pub async fn until_cancelled<F: Future>(
    cancel: &CancellationToken,
    fut: F,
) -> Result<F::Output, Cancelled> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Cancelled),
        out = fut => Ok(out),
    }
}

/// Runs `op` until it succeeds; a transient error is told to `on_retry` with the delay before
/// the next attempt, then waited out. A permanent error ends it, and so does `cancel` — during
/// a wait, never during an attempt: an attempt the other side is answering (a batch being
/// written at SIGTERM) is finished, and one attempt is made even if `cancel` came first. Where an
/// attempt itself may wait for good, wrap the whole call in [`until_cancelled`].
pub async fn retry<T, E, Fut>(
    cancel: &CancellationToken,
    mut backoff: Backoff,
    mut op: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, GaveUp<E>>
where
    Fut: Future<Output = Result<T, E>>,
    E: Transient,
{
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if !e.is_transient() => return Err(GaveUp::Permanent(e)),
            Err(e) => {
                let delay = backoff.next_delay();
                on_retry(&e, delay);
                if until_cancelled(cancel, tokio::time::sleep(delay))
                    .await
                    .is_err()
                {
                    return Err(GaveUp::Cancelled);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug, PartialEq)]
    enum Failure {
        Outage,
        Refused,
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            *self == Failure::Outage
        }
    }

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn outages_are_waited_out_with_backoff() {
        let calls = Cell::new(0);
        let mut delays = Vec::new();
        let out: Result<u32, GaveUp<Failure>> = retry(
            &CancellationToken::new(),
            backoff(),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 4 { Err(Failure::Outage) } else { Ok(n) } }
            },
            |e, d| {
                assert_eq!(*e, Failure::Outage);
                delays.push(d);
            },
        )
        .await;
        assert!(matches!(out, Ok(4)));
        assert_eq!(delays.len(), 3, "told of each failure before waiting");
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_handed_back_at_once() {
        let calls = Cell::new(0);
        let out: Result<(), GaveUp<Failure>> = retry(
            &CancellationToken::new(),
            backoff(),
            || {
                calls.set(calls.get() + 1);
                async { Err(Failure::Refused) }
            },
            |_, _| panic!("a refusal is not retried"),
        )
        .await;
        assert!(matches!(out, Err(GaveUp::Permanent(Failure::Refused))));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_and_the_attempt() {
        let cancel = CancellationToken::new();
        let stopper = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                cancel.cancel();
            })
        };
        // An outage that never ends: only shutdown stops it.
        let out: Result<(), GaveUp<Failure>> = retry(
            &cancel,
            backoff(),
            || async { Err(Failure::Outage) },
            |_, _| {},
        )
        .await;
        assert!(matches!(out, Err(GaveUp::Cancelled)));
        stopper.await.unwrap();
        // An attempt that hangs is dropped when shutdown comes, if the caller says so.
        let out = until_cancelled(&cancel, std::future::pending::<()>()).await;
        assert_eq!(out, Err(Cancelled));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_in_flight_is_finished_and_one_is_made_after_shutdown() {
        let cancel = CancellationToken::new();
        let stopper = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                cancel.cancel();
            })
        };
        // Shutdown comes one second into a three-second write: the write is finished.
        let out: Result<&str, GaveUp<Failure>> = retry(
            &cancel,
            backoff(),
            || async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok("written")
            },
            |_, _| {},
        )
        .await;
        assert!(matches!(out, Ok("written")));
        stopper.await.unwrap();
        // After shutdown, the final batch still gets its one attempt.
        let out: Result<&str, GaveUp<Failure>> =
            retry(&cancel, backoff(), || async { Ok("final") }, |_, _| {}).await;
        assert!(matches!(out, Ok("final")));
        // ...but no second one.
        let calls = Cell::new(0);
        let out: Result<(), GaveUp<Failure>> = retry(
            &cancel,
            backoff(),
            || {
                calls.set(calls.get() + 1);
                async { Err(Failure::Outage) }
            },
            |_, _| {},
        )
        .await;
        assert!(matches!(out, Err(GaveUp::Cancelled)));
        assert_eq!(calls.get(), 1);
    }
}
