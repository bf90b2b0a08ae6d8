//! The extractor's Prometheus series, all prefixed `etl_extractor_`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every series the extractor exports, registered on its own registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Fetch attempts by outcome (`ok` or `error`).
    pub fetches: IntCounterVec,
    /// Rejected fetches by kind (`rate_limited`, `server_error`, `not_json`, ...).
    pub fetch_errors: IntCounterVec,
    /// Seconds per API request, whatever its outcome.
    pub fetch_seconds: Histogram,
    /// Users in accepted responses.
    pub users_fetched: IntCounter,
    /// Messages acknowledged by the broker.
    pub records_produced: IntCounter,
    /// Messages the broker refused for good.
    pub produce_errors: IntCounter,
    /// Fetched payloads not yet acknowledged (the backlog).
    pub in_flight: IntGauge,
    /// `EXTRACT_MAX_IN_FLIGHT`: `in_flight` at this value means fetching has paused (an alert).
    pub backlog_capacity: IntGauge,
    /// Unix time of the last acknowledged publish.
    pub last_publish: IntGauge,
    /// Circuit breaker: 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGauge,
    /// Times the breaker opened.
    pub circuit_opened: IntCounter,
}

impl Metrics {
    /// Creates and registers every series.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let fetches = IntCounterVec::new(
            Opts::new(
                "etl_extractor_fetches_total",
                "API fetch attempts by outcome",
            ),
            &["outcome"],
        )?;
        let fetch_errors = IntCounterVec::new(
            Opts::new(
                "etl_extractor_fetch_errors_total",
                "Rejected API answers by kind",
            ),
            &["kind"],
        )?;
        let fetch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "etl_extractor_fetch_duration_seconds",
                "API request latency",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let users_fetched = IntCounter::new(
            "etl_extractor_users_fetched_total",
            "Users in accepted API answers",
        )?;
        let records_produced = IntCounter::new(
            "etl_extractor_records_produced_total",
            "Raw messages acknowledged by Kafka",
        )?;
        let produce_errors = IntCounter::new(
            "etl_extractor_produce_errors_total",
            "Raw messages Kafka refused for good",
        )?;
        let in_flight = IntGauge::new(
            "etl_extractor_in_flight",
            "Fetched payloads awaiting broker acknowledgement",
        )?;
        let backlog_capacity = IntGauge::new(
            "etl_extractor_backlog_capacity",
            "Payloads the backlog holds before fetching pauses (EXTRACT_MAX_IN_FLIGHT)",
        )?;
        let last_publish = IntGauge::new(
            "etl_extractor_last_publish_timestamp_seconds",
            "Unix time of the last acknowledged publish",
        )?;
        let circuit_state = IntGauge::new(
            "etl_extractor_circuit_state",
            "API circuit breaker: 0 closed, 1 open, 2 half-open",
        )?;
        let circuit_opened = IntCounter::new(
            "etl_extractor_circuit_opened_total",
            "Times the API circuit breaker opened",
        )?;
        registry.register(Box::new(circuit_state.clone()))?;
        registry.register(Box::new(circuit_opened.clone()))?;
        registry.register(Box::new(fetches.clone()))?;
        registry.register(Box::new(fetch_errors.clone()))?;
        registry.register(Box::new(fetch_seconds.clone()))?;
        registry.register(Box::new(users_fetched.clone()))?;
        registry.register(Box::new(records_produced.clone()))?;
        registry.register(Box::new(produce_errors.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(backlog_capacity.clone()))?;
        registry.register(Box::new(last_publish.clone()))?;
        Ok(Self {
            registry,
            fetches,
            fetch_errors,
            fetch_seconds,
            users_fetched,
            records_produced,
            produce_errors,
            in_flight,
            backlog_capacity,
            last_publish,
            circuit_state,
            circuit_opened,
        })
    }
}
