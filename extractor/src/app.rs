//! The extractor's run loop: fetch on a schedule, retry refused answers with backoff, publish
//! with a bounded number of payloads awaiting acknowledgement, and shut down without losing
//! what was fetched.
//!
//! Backpressure is the no-loss mechanism: a fetch starts only once the backlog has room, so a
//! broker outage stops fetching instead of piling up (or dropping) payloads.

use crate::breaker::{self, CircuitBreaker};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::publish::{Publisher, RawMessage};
use crate::source::{Fetched, Source};
use etl_common::backoff::Backoff;
use etl_common::config::redact_url;
use etl_common::retry::until_cancelled;
use etl_common::status::{self, Liveness, Readiness};
use etl_common::topic::{self, TopicAdmin, Wanted};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a run did, for the exit log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Accepted fetches.
    pub fetched: u64,
    /// Refused answers (each retried).
    pub refused: u64,
    /// Messages the broker acknowledged.
    pub published: u64,
    /// Users in acknowledged messages.
    pub users_published: u64,
}

type StatusFuture = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A built extractor: config checked, clients created, status endpoint bound.
pub struct Application {
    config: Config,
    source: Source,
    publisher: Publisher,
    admin: TopicAdmin,
    metrics: Metrics,
    readiness: Readiness,
    liveness: Liveness,
    status_addr: SocketAddr,
    status_server: StatusFuture,
    status_stop: CancellationToken,
}

/// The fetch ids of payloads fetched but not yet acknowledged, with their user counts.
type Pending = Arc<Mutex<HashMap<Uuid, usize>>>;

impl Application {
    /// Validates the config, creates the clients and binds the status endpoint.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = Metrics::new()?;
        metrics
            .backlog_capacity
            .set(i64::from(config.max_in_flight));
        let readiness = Readiness::default();
        readiness.register("kafka");
        readiness.register("topic");
        let source = Source::new(
            &config.url,
            config.results,
            config.connect_timeout,
            config.request_timeout,
        )?;
        let publisher = Publisher::new(&config.kafka, &config.topic)?;
        let admin = TopicAdmin::new(&config.kafka)?;
        let liveness = Liveness::new(config.health.stall_timeout);
        let status_stop = CancellationToken::new();
        let (status_addr, server) = status::serve(
            config.metrics_addr,
            metrics.registry.clone(),
            readiness.clone(),
            liveness.clone(),
            status_stop.clone(),
        )
        .await?;
        tracing::info!(
            url = %redact_url(source.url().as_str()),
            topic = %config.topic,
            brokers = %config.kafka.brokers,
            interval = ?config.interval,
            results = config.results,
            status = %status_addr,
            "extractor starting"
        );
        Ok(Self {
            config,
            source,
            publisher,
            admin,
            metrics,
            readiness,
            liveness,
            status_addr,
            status_server: Box::pin(server),
            status_stop,
        })
    }

    /// Where `/metrics`, `/health` and `/ready` are served (the bound port when 0 was asked).
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// The service's metrics, shared with the running service (tests read counters directly).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Checks the topic (waiting out a broker outage; refusing one that cannot hold a response
    /// before anything is fetched), then runs until `shutdown` is cancelled or
    /// `EXTRACT_MAX_FETCHES` is reached, and flushes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
        let Application {
            config,
            source,
            publisher,
            admin,
            metrics,
            readiness,
            liveness,
            status_server,
            status_stop,
            ..
        } = self;
        let status_task = tokio::spawn(status_server);
        let probe = tokio::spawn(probe_broker(
            publisher.clone(),
            readiness.clone(),
            status_stop.clone(),
        ));
        let checked = check_topic(&config, &admin, &readiness, &liveness, &shutdown).await;
        drop(admin);
        let limit = match checked {
            Ok(Some(checked)) => checked.limit,
            stopped => {
                status_stop.cancel();
                probe.abort();
                let _ = status_task.await;
                return stopped.map(|_| RunSummary::default());
            }
        };
        let source_url = redact_url(source.url().as_str());

        let backlog = Arc::new(Semaphore::new(config.max_in_flight as usize));
        let pending: Pending = Arc::default();
        let fates: Arc<Mutex<HashMap<Uuid, crate::publish::Purged>>> = Arc::default();
        let (fatal_tx, mut fatal_rx) = mpsc::channel::<anyhow::Error>(1);
        let mut publishes: JoinSet<Option<usize>> = JoinSet::new();
        let mut summary = RunSummary::default();
        let mut pacing = Pacing {
            backoff: Backoff::new(config.backoff_base, config.backoff_max),
            breaker: CircuitBreaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
                config.backoff_max.max(config.breaker_cooldown),
            ),
        };
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fatal: Option<anyhow::Error> = None;
        // One bound for everything after SIGTERM: an in-flight fetch and the acknowledgements
        // share EXTRACT_SHUTDOWN_GRACE, so the process is done before the orchestrator's own
        // grace period (compose `stop_grace_period`, `terminationGracePeriodSeconds`) runs out.
        let grace = config.shutdown_grace;
        let grace_over = CancellationToken::new();
        let grace_timer = {
            let (shutdown, grace_over) = (shutdown.clone(), grace_over.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                grace_over.cancel();
            })
        };

        // The loop beats while it waits (for its schedule, for room in the backlog during a broker
        // outage, for the API); `/health` fails only if it stops turning altogether.
        loop {
            liveness.beat();
            if config.max_fetches.is_some_and(|max| summary.fetched >= max) {
                tracing::info!(fetches = summary.fetched, "EXTRACT_MAX_FETCHES reached");
                break;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(e) = fatal_rx.recv() => { fatal = Some(e); break; }
                _ = liveness.waiting(ticker.tick()) => {}
            }
            // Room in the backlog first: never fetch what we could not hold.
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(e) = fatal_rx.recv() => { fatal = Some(e); break; }
                p = liveness.waiting(backlog.clone().acquire_owned()) => p?,
            };
            let Some(fetched) = liveness
                .waiting(fetch_until_accepted(
                    &source,
                    &metrics,
                    &mut pacing,
                    &mut summary,
                    &shutdown,
                    &grace_over,
                ))
                .await
            else {
                break;
            };
            summary.fetched += 1;
            let msg = RawMessage {
                fetch_id: Uuid::now_v7(),
                fetched,
                source_url: source_url.clone(),
            };
            tracing::info!(fetch_id = %msg.fetch_id, users = msg.fetched.users, bytes = msg.fetched.body.len(), "fetched");
            lock(&pending).insert(msg.fetch_id, msg.fetched.users);
            metrics.in_flight.inc();
            let fates = fates.clone();
            let (publisher, metrics, pending, fatal_tx) = (
                publisher.clone(),
                metrics.clone(),
                pending.clone(),
                fatal_tx.clone(),
            );
            let results = config.results;
            publishes.spawn(async move {
                let _permit = permit;
                let result = publisher.send(&msg).await;
                metrics.in_flight.dec();
                match result {
                    Ok(landed) => {
                        lock(&pending).remove(&msg.fetch_id);
                        metrics.records_produced.inc();
                        metrics.last_publish.set(chrono::Utc::now().timestamp());
                        tracing::debug!(fetch_id = %msg.fetch_id, partition = landed.partition, offset = landed.offset, "published");
                        Some(msg.fetched.users)
                    }
                    Err(e) => {
                        if let Some(fate) = crate::publish::purged(&e) {
                            // Purged after the grace: reported with the payload at the end.
                            lock(&fates).insert(msg.fetch_id, fate);
                        } else {
                            metrics.produce_errors.inc();
                            let mut why = format!(
                                "Kafka refused fetch {} for good ({} users, {} bytes)",
                                msg.fetch_id, msg.fetched.users, msg.fetched.body.len()
                            );
                            if crate::publish::is_too_large(&e) {
                                why += &too_large(publisher.topic(), limit, results);
                            }
                            let _ = fatal_tx.try_send(anyhow::Error::new(e).context(why));
                        }
                        None
                    }
                }
            });
            // Reap finished publishes so the summary stays current.
            while let Some(done) = publishes.try_join_next() {
                count(&mut summary, done);
            }
        }

        // Drain: wait for every payload to be acknowledged; after SIGTERM, only for what is
        // left of the grace period.
        loop {
            tokio::select! {
                done = publishes.join_next() => match done {
                    Some(d) => count(&mut summary, d),
                    None => break,
                },
                _ = grace_over.cancelled() => break,
            }
        }
        grace_timer.abort();
        let _ = publisher.flush(Duration::from_millis(100));
        status_stop.cancel();
        probe.abort();
        let _ = status_task.await;

        if let Some(e) = fatal.or_else(|| fatal_rx.try_recv().ok()) {
            return Err(e);
        }
        let unsent: Vec<(Uuid, usize)> = lock(&pending).iter().map(|(k, v)| (*k, *v)).collect();
        if !unsent.is_empty() {
            // Purging completes every outstanding send at once, saying which never left this
            // process (not sent) and which were on the wire (the broker may have written them:
            // unknown).
            publisher.abandon();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while publishes.join_next().await.is_some() {}
            })
            .await;
            let fates = lock(&fates).clone();
            let mut not_sent = Vec::new();
            let mut unknown = Vec::new();
            for (id, _) in &unsent {
                match fates.get(id) {
                    Some(crate::publish::Purged::Queued) => not_sent.push(id.to_string()),
                    _ => unknown.push(id.to_string()),
                }
            }
            let users: usize = unsent.iter().map(|(_, n)| n).sum();
            tracing::error!(
                payloads = unsent.len(),
                users,
                not_sent = ?not_sent,
                unknown = ?unknown,
                "shutdown grace expired: these fetched payloads were not acknowledged by Kafka; `not_sent` never reached the broker, `unknown` may have landed"
            );
            anyhow::bail!(
                "{} fetched payloads ({users} users) were not acknowledged within EXTRACT_SHUTDOWN_GRACE={grace:?}: {} not sent, {} unknown (may have landed)",
                unsent.len(),
                not_sent.len(),
                unknown.len()
            );
        }
        tracing::info!(?summary, "all fetched payloads acknowledged by Kafka");
        Ok(summary)
    }
}

fn count(summary: &mut RunSummary, done: Result<Option<usize>, tokio::task::JoinError>) {
    if let Ok(Some(users)) = done {
        summary.published += 1;
        summary.users_published += users as u64;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fetches until an answer is accepted, backing off (and honouring Retry-After) between
/// refusals. `None` when shutdown came first. Not [`etl_common::retry::retry`]: the circuit
/// breaker and the server's Retry-After pace these retries, not the backoff alone.
async fn fetch_until_accepted(
    source: &Source,
    metrics: &Metrics,
    pacing: &mut Pacing,
    summary: &mut RunSummary,
    shutdown: &CancellationToken,
    grace_over: &CancellationToken,
) -> Option<Fetched> {
    loop {
        let wait = pacing.breaker.wait_before_request(Instant::now());
        metrics.circuit_state.set(pacing.breaker.state().code());
        if !wait.is_zero() {
            until_cancelled(shutdown, tokio::time::sleep(wait))
                .await
                .ok()?;
            continue;
        }
        if pacing.breaker.state() == breaker::State::HalfOpen {
            tracing::info!("circuit half-open: probing the API");
        }
        let timer = metrics.fetch_seconds.start_timer();
        // An in-flight request is finished, not cancelled, on shutdown (its answer may already
        // have counted against the API's quota, and it is published like any other), but
        // only within EXTRACT_SHUTDOWN_GRACE: past it the answer is abandoned, unpublished.
        let result = tokio::select! {
            r = source.fetch() => r,
            _ = grace_over.cancelled() => {
                tracing::warn!("EXTRACT_SHUTDOWN_GRACE ran out during a fetch; its answer is abandoned, nothing of it was published");
                return None;
            }
        };
        timer.observe_duration();
        match result {
            Ok(f) => {
                metrics.fetches.with_label_values(&["ok"]).inc();
                metrics.users_fetched.inc_by(f.users as u64);
                if pacing.breaker.state() != breaker::State::Closed {
                    tracing::info!("API answered; circuit closed");
                }
                pacing.breaker.on_success();
                metrics.circuit_state.set(pacing.breaker.state().code());
                pacing.backoff.reset();
                return Some(f);
            }
            Err(e) => {
                summary.refused += 1;
                metrics.fetches.with_label_values(&["error"]).inc();
                metrics.fetch_errors.with_label_values(&[e.kind()]).inc();
                let now = Instant::now();
                let opened = pacing.breaker.on_failure(now);
                let own_delay = if opened {
                    metrics.circuit_opened.inc();
                    metrics.circuit_state.set(pacing.breaker.state().code());
                    pacing.breaker.wait_before_request(now)
                } else {
                    pacing.backoff.next_delay()
                };
                // The server's Retry-After wins when it asks for longer.
                let delay = own_delay.max(e.retry_after().unwrap_or_default());
                if opened {
                    tracing::warn!(kind = e.kind(), error = %e, cooldown = ?delay, "API answer refused; circuit open");
                } else {
                    tracing::warn!(kind = e.kind(), error = %e, retry_in = ?delay, attempt = pacing.backoff.attempts(), "API answer refused; retrying");
                }
                until_cancelled(shutdown, tokio::time::sleep(delay))
                    .await
                    .ok()?;
            }
        }
    }
}

/// How refused answers pace the next request: backoff between failures, and the breaker.
struct Pacing {
    backoff: Backoff,
    breaker: CircuitBreaker,
}

/// The start-up check of `KAFKA_TOPIC` ([`etl_common::topic`]): `Ok(None)` when shutdown came
/// first, an error when the topic cannot take the extractor's records. An outage is waited out
/// (the `topic` readiness check failing meanwhile), the loop beating.
async fn check_topic(
    config: &Config,
    admin: &TopicAdmin,
    readiness: &Readiness,
    liveness: &Liveness,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<topic::Checked>> {
    let wanted = Wanted {
        topic: config.topic.clone(),
        topic_variable: "KAFKA_TOPIC",
        partitions: config.partitions,
        create: config.topic_create.clone(),
        sizing: crate::topic::sizing(config.results),
    };
    let checked = topic::check(
        admin,
        &wanted,
        shutdown,
        Backoff::new(config.backoff_base, config.backoff_max),
        liveness,
        |e, delay| {
            readiness.set_failed("topic", format!("{e:#}"));
            tracing::warn!(topic = %config.topic, error = format!("{e:#}"), retry_in = ?delay, "cannot check the topic yet; retrying");
        },
    )
    .await?;
    if checked.is_some() {
        readiness.set_ok("topic");
    }
    Ok(checked)
}

/// What a `MessageSizeTooLarge` at publish means: the topic's limit (when the start-up check
/// could read it) against what `EXTRACT_RESULTS` makes, and what to change.
fn too_large(topic: &str, limit: Option<usize>, results: u32) -> String {
    let limit = limit.map_or_else(
        || "not known: the client may not describe the topic's configuration".to_string(),
        |l| format!("{l} bytes"),
    );
    let need = crate::topic::largest_record_bytes(u64::from(results));
    format!(
        ": the record is larger than topic {topic} takes (its max.message.bytes is {limit}; \
         with EXTRACT_RESULTS={results} a record can be up to {need} bytes): raise the topic's \
         max.message.bytes to at least {need} or lower EXTRACT_RESULTS"
    )
}

/// Keeps the `kafka` readiness check current.
async fn probe_broker(publisher: Publisher, readiness: Readiness, stop: CancellationToken) {
    loop {
        match publisher.broker_reachable(Duration::from_secs(3)).await {
            Ok(()) => readiness.set_ok("kafka"),
            Err(e) => readiness.set_failed("kafka", format!("broker unreachable: {e}")),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
