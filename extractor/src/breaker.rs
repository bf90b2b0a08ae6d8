//! A circuit breaker for the API: after `threshold` refused answers in a row it opens and no
//! request is made for `cooldown`; then one probe is let through (half-open). A good answer
//! closes it; a bad one opens it again for twice as long, up to `max_cooldown`. This keeps a
//! struggling (or rate-limiting) API from being hammered by our retries.

use std::time::Duration;
use tokio::time::Instant;

/// The breaker's state, as exported by `etl_extractor_circuit_state` (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow.
    Closed,
    /// No request until the instant.
    Open {
        /// When the next probe may go.
        until: Instant,
    },
    /// One probe is in flight.
    HalfOpen,
}

impl State {
    /// The gauge value.
    pub fn code(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen => 2,
        }
    }
}

/// Consecutive-failure circuit breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    base_cooldown: Duration,
    max_cooldown: Duration,
    cooldown: Duration,
    failures: u32,
    state: State,
}

impl CircuitBreaker {
    /// Opens after `threshold` failures in a row, first for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration, max_cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base_cooldown: cooldown,
            max_cooldown: max_cooldown.max(cooldown),
            cooldown,
            failures: 0,
            state: State::Closed,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// How long to wait before a request may be made (zero when it may go now). When an open
    /// breaker's cool-down has passed, it turns half-open and lets this one request through.
    pub fn wait_before_request(&mut self, now: Instant) -> Duration {
        match self.state {
            State::Closed | State::HalfOpen => Duration::ZERO,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Duration::ZERO
            }
            State::Open { until } => until - now,
        }
    }

    /// A good answer: close and forget the failures.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.cooldown = self.base_cooldown;
        self.state = State::Closed;
    }

    /// A refused answer. Returns true when this failure opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            State::HalfOpen => {
                // The probe failed: open again, for longer.
                self.cooldown = (self.cooldown * 2).min(self.max_cooldown);
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                true
            }
            State::Closed if self.failures >= self.threshold => {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_half_open_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, Duration::from_secs(10), Duration::from_secs(60));
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert_eq!(
            b.wait_before_request(t0),
            Duration::ZERO,
            "still closed after 2 of 3"
        );
        assert!(b.on_failure(t0), "the third failure opens it");
        assert_eq!(b.state().code(), 1);
        assert_eq!(
            b.wait_before_request(t0 + Duration::from_secs(4)),
            Duration::from_secs(6)
        );
        assert_eq!(
            b.wait_before_request(t0 + Duration::from_secs(10)),
            Duration::ZERO
        );
        assert_eq!(b.state(), State::HalfOpen);
        b.on_success();
        assert_eq!(b.state(), State::Closed);
        assert!(!b.on_failure(t0), "failures count from zero again");
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(1, Duration::from_secs(10), Duration::from_secs(25));
        assert!(b.on_failure(t0));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..3 {
            let w = b.wait_before_request(now);
            now += w;
            assert_eq!(b.wait_before_request(now), Duration::ZERO);
            assert_eq!(b.state(), State::HalfOpen);
            assert!(b.on_failure(now));
            waits.push(w.as_secs());
        }
        assert_eq!(waits, vec![10, 20, 25]);
    }
}
