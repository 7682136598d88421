//! A circuit breaker for one re-ranker: after `threshold` consecutive
//! failures it opens and callers fall back at once (no waiting on an
//! endpoint known to be down); after `open_ms` one trial call is let
//! through, whose outcome closes or re-opens it. Pure: time is passed in.

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Call,
    /// The one trial call after the breaker was open.
    Probe,
    /// Open: do not call (fall back).
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until_ms: u64,
    },
    /// A trial call is in flight.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_ms: u64,
    failures: u32,
    state: State,
}

impl Breaker {
    pub fn new(threshold: u32, open_ms: u64) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            open_ms,
            failures: 0,
            state: State::Closed,
        }
    }

    pub fn admit(&mut self, now_ms: u64) -> Admit {
        match self.state {
            State::Closed => Admit::Call,
            State::Open { until_ms } if now_ms >= until_ms => {
                self.state = State::HalfOpen;
                Admit::Probe
            }
            State::Open { .. } | State::HalfOpen => Admit::Reject,
        }
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    pub fn failed(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        if self.state == State::HalfOpen || self.failures >= self.threshold {
            self.state = State::Open {
                until_ms: now_ms.saturating_add(self.open_ms),
            };
        }
    }

    pub fn is_open(&self) -> bool {
        self.state != State::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let mut b = Breaker::new(3, 1_000);
        for t in 0..2 {
            assert_eq!(b.admit(t), Admit::Call);
            b.failed(t);
        }
        assert!(!b.is_open());
        b.failed(2);
        assert!(b.is_open());
        assert_eq!(b.admit(500), Admit::Reject);
        assert_eq!(b.admit(1_002), Admit::Probe);
        assert_eq!(b.admit(1_003), Admit::Reject, "one probe at a time");
        b.failed(1_010);
        assert_eq!(b.admit(1_500), Admit::Reject, "a failed probe re-opens it");
        assert_eq!(b.admit(2_010), Admit::Probe);
        b.succeeded();
        assert_eq!(b.admit(2_011), Admit::Call);
        assert!(!b.is_open());
    }

    proptest! {
        /// Whatever happens, a closed breaker lets calls through, an open
        /// one never does before its time, and `threshold` failures in a
        /// row always open it.
        #[test]
        fn never_calls_while_open(
            threshold in 1u32..5,
            events in proptest::collection::vec((0u64..50, any::<bool>()), 1..200),
        ) {
            let mut b = Breaker::new(threshold, 100);
            let mut now = 0;
            let mut run = 0u32;
            let mut opened_at: Option<u64> = None;
            for (dt, ok) in events {
                now += dt;
                match b.admit(now) {
                    Admit::Reject => {
                        prop_assert!(b.is_open());
                        continue;
                    }
                    Admit::Probe => prop_assert!(opened_at.is_some_and(|t| now >= t + 100)),
                    Admit::Call => prop_assert!(!b.is_open()),
                }
                if ok {
                    b.succeeded();
                    run = 0;
                    opened_at = None;
                } else {
                    b.failed(now);
                    run += 1;
                    if b.is_open() {
                        opened_at = Some(now);
                    }
                    prop_assert!(run < threshold || b.is_open());
                }
            }
        }
    }
}
