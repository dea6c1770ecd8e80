//! A circuit breaker that really opens.
//!
//! Closed: every call goes through; `failure_threshold` consecutive transient failures open it.
//! Open: calls are rejected at once (a miss, no waiting) for `open_for`. Half-open: after the
//! cool-down exactly one probe call goes through; success closes the breaker, failure re-opens
//! it for another `open_for`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 disables the breaker).
    pub failure_threshold: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(2),
        }
    }
}

impl BreakerConfig {
    /// A breaker configuration.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        BreakerConfig {
            failure_threshold,
            open_for,
        }
    }
}

/// Breaker state, for health reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are rejected.
    Open,
    /// One probe is allowed.
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    epoch: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.open_until.load(Acquire) {
            0 => BreakerState::Closed,
            until if self.now() < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// A permit for one call, if the breaker lets it through now. In half-open state the permit
    /// is the one probe: report its outcome with [`Permit::success`] or [`Permit::failure`]. A
    /// permit dropped without an outcome (the caller's future was cancelled: the client gave
    /// up) releases the probe, so the next call probes instead of the breaker staying open for
    /// good.
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        match self.state() {
            BreakerState::Closed => Some(Permit {
                breaker: self,
                probe: false,
                reported: false,
            }),
            BreakerState::Open => None,
            BreakerState::HalfOpen => self
                .probing
                .compare_exchange(false, true, AcqRel, Acquire)
                .is_ok()
                .then_some(Permit {
                    breaker: self,
                    probe: true,
                    reported: false,
                }),
        }
    }

    pub(crate) fn success(&self) {
        self.failures.store(0, Release);
        if self.open_until.load(Acquire) != 0 {
            self.open_until.store(0, Release);
            self.probing.store(false, Release);
            tracing::info!("cache circuit breaker closed");
        }
    }

    /// The backend answered a health check (the readiness ping, outside the request path):
    /// an open breaker lets its next call probe now instead of waiting out the cool-down, so
    /// hits resume as soon as the backend is back. Closed and half-open breakers are
    /// unchanged, and the probe decides as always: a failing one re-opens the breaker.
    pub(crate) fn backend_answered(&self) {
        let until = self.open_until.load(Acquire);
        let now = self.now();
        if until != 0 && now < until {
            // A failure that re-opened it meanwhile wins.
            let _ = self
                .open_until
                .compare_exchange(until, now, AcqRel, Acquire);
        }
    }

    pub(crate) fn failure(&self) {
        if self.config.failure_threshold == 0 {
            return;
        }
        let open = self.open_until.load(Acquire) != 0;
        let failures = self.failures.fetch_add(1, AcqRel) + 1;
        if open || failures >= self.config.failure_threshold {
            let until = self.now() + self.config.open_for.as_nanos() as u64;
            self.open_until.store(until, Release);
            self.probing.store(false, Release);
            if !open {
                tracing::warn!(
                    failures,
                    open_for = ?self.config.open_for,
                    "cache circuit breaker opened: lookups and writes are skipped"
                );
            }
        }
    }
}

/// One call let through by the [`Breaker`]; see [`Breaker::try_acquire`].
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// The call succeeded (or failed in a way that says nothing about the backend's health).
    pub(crate) fn success(mut self) {
        self.reported = true;
        self.breaker.success();
    }

    /// The call failed transiently (timeout, connection).
    pub(crate) fn failure(mut self) {
        self.reported = true;
        self.breaker.failure();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.probing.store(false, Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_check_answer_lets_an_open_breaker_probe_at_once() {
        let b = Breaker::new(BreakerConfig::new(2, Duration::from_secs(60)));
        b.backend_answered();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a closed breaker stays closed"
        );
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        b.backend_answered();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("the probe");
        assert!(b.try_acquire().is_none(), "one probe at a time");
        // The probe still decides: a failure re-opens it for the whole cool-down.
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        b.backend_answered();
        b.try_acquire().expect("the probe").success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(BreakerConfig::new(3, Duration::from_millis(30)));
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("one probe");
        assert!(b.try_acquire().is_none(), "only one probe");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        let (x, y) = (b.try_acquire(), b.try_acquire());
        assert!(x.is_some() && y.is_some());
    }

    #[test]
    fn a_dropped_probe_is_released() {
        let b = Breaker::new(BreakerConfig::new(1, Duration::from_millis(20)));
        b.try_acquire().unwrap().failure();
        std::thread::sleep(Duration::from_millis(30));
        let probe = b.try_acquire().expect("probe");
        drop(probe); // the caller gave up mid-probe
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("the next call probes again");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(BreakerConfig::new(2, Duration::from_secs(10)));
        b.failure();
        b.success();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
