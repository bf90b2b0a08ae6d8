//! Where assigned partitions start: PostgreSQL's stored positions ([`crate::sink::offsets`]),
//! asked from inside librdkafka's assignment callback.
//!
//! The callback is synchronous and runs on whichever thread polls the consumer (a runtime
//! worker), so the question goes to a thread of its own, with its own small runtime and
//! connection, and the callback waits for the answer. A database that is down is waited out
//! there (the partitions are not ours to load until it answers); shutdown ends the wait.

use crate::consumer::StartPositions;
use crate::sink::offsets;
use anyhow::Context;
use etl_common::backoff::Backoff;
use etl_common::retry::{Outage, retry};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Answer = anyhow::Result<BTreeMap<i32, i64>>;

/// [`StartPositions`] from PostgreSQL, for one group and topic.
pub struct DatabasePositions {
    topic: String,
    requests: std::sync::Mutex<mpsc::Sender<mpsc::Sender<Answer>>>,
}

impl DatabasePositions {
    /// Starts the lookup thread for `group` on `topic`; it stops when `stop` is cancelled or
    /// this is dropped.
    pub fn start(
        url: &str,
        group: &str,
        topic: &str,
        backoff: (Duration, Duration),
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let (requests, incoming) = mpsc::channel::<mpsc::Sender<Answer>>();
        let (url, group, owned_topic) = (url.to_string(), group.to_string(), topic.to_string());
        std::thread::Builder::new()
            .name("offset-lookup".to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the offset lookup's runtime");
                        return;
                    }
                };
                runtime.block_on(serve(url, group, owned_topic, backoff, stop, incoming));
            })
            .context("cannot start the offset lookup thread")?;
        Ok(Self {
            topic: topic.to_string(),
            requests: std::sync::Mutex::new(requests),
        })
    }
}

async fn serve(
    url: String,
    group: String,
    topic: String,
    (base, max): (Duration, Duration),
    stop: CancellationToken,
    incoming: mpsc::Receiver<mpsc::Sender<Answer>>,
) {
    let pool = match crate::sink::lazy_pool(&url, 1) {
        Ok(pool) => pool,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot build the offset lookup's pool");
            return;
        }
    };
    // Blocking here is fine: nothing else runs on this thread.
    while let Ok(reply) = incoming.recv() {
        let load = || async {
            let mut conn = pool.acquire().await.map_err(Outage)?;
            offsets::load(&mut conn, &group, &topic)
                .await
                .map_err(Outage)
        };
        let answer = retry(&stop, Backoff::new(base, max), load, |Outage(e), retry_in| {
            tracing::warn!(error = %e, ?retry_in, "cannot read the stored positions from PostgreSQL; the assignment waits for it");
        })
        .await
        .map(|stored| stored.into_iter().map(|(p, s)| (p, s.next_offset)).collect())
        .map_err(|_| anyhow::anyhow!("shut down before PostgreSQL answered"));
        let _ = reply.send(answer);
    }
}

impl StartPositions for DatabasePositions {
    fn starts(&self, partitions: &[(String, i32)]) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .lock()
            .map_err(|_| anyhow::anyhow!("the offset lookup is poisoned"))?
            .send(reply)
            .context("the offset lookup thread is gone")?;
        let stored = answer
            .recv()
            .context("the offset lookup thread is gone")??;
        Ok(partitions
            .iter()
            .filter(|(t, _)| *t == self.topic)
            .filter_map(|(t, p)| stored.get(p).map(|o| ((t.clone(), *p), *o)))
            .collect())
    }
}
