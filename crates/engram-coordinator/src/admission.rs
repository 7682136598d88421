//! Back-pressure: how much work the API takes on at once.
//!
//! Every request's body is counted against a budget of bytes in flight as
//! it is read ([`Permit::grow`]: what arrived, not what a header declares,
//! so a client that announces a large body and sends it a byte a second
//! holds a few bytes of the budget, not all of it), and queries (search,
//! classify, batches, embedding) against a global and a per-client number
//! of queries in flight. A request that would pass a limit is refused at
//! once with 429 and `Retry-After`, before it runs: under overload the
//! server answers quickly and its memory stays bounded, instead of
//! queueing work until it runs out. This module is the pure bookkeeping;
//! the HTTP layer maps a [`Refusal`] to the answer.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The limits, from `[limits]` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_queries: usize,
    pub max_queries_per_client: usize,
    pub max_body_bytes_in_flight: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{limit} queries are already in flight from this client (limits.max_concurrent_queries_per_client); retry later"
    )]
    ClientQueries { limit: usize },
    #[error(
        "{limit} queries are already in flight (limits.max_concurrent_queries); the server is overloaded, retry later"
    )]
    Queries { limit: usize },
    #[error(
        "{in_flight} bytes of request bodies are in flight and this one brings {bytes} more, past limits.max_body_bytes_in_flight = {limit}; retry later"
    )]
    BodyBytes {
        in_flight: u64,
        bytes: u64,
        limit: u64,
    },
}

#[derive(Debug, Default)]
struct InFlight {
    queries: usize,
    per_client: HashMap<IpAddr, usize>,
    body_bytes: u64,
}

/// The shared counters; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: AdmissionLimits,
    in_flight: Arc<Mutex<InFlight>>,
}

/// What one admitted request holds; dropping it gives it back.
#[derive(Debug)]
pub struct Permit {
    in_flight: Arc<Mutex<InFlight>>,
    /// The client whose query this is, for queries.
    query_of: Option<IpAddr>,
    body_bytes: u64,
    /// `max_body_bytes_in_flight`, for [`Permit::grow`].
    limit: u64,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            in_flight: Arc::new(Mutex::new(InFlight::default())),
        }
    }

    /// Admits a request with `body_bytes` of body from `client`; `query`
    /// says whether it is a query (counted against the query limits).
    pub fn try_admit(
        &self,
        client: IpAddr,
        query: bool,
        body_bytes: u64,
    ) -> Result<Permit, Refusal> {
        let mut in_flight = self.in_flight.lock();
        let limit = self.limits.max_body_bytes_in_flight;
        // A body larger than the whole budget is still admitted when
        // nothing else is in flight, so that a budget below the body limit
        // cannot refuse a request for ever.
        if in_flight.body_bytes > 0 && in_flight.body_bytes.saturating_add(body_bytes) > limit {
            return Err(Refusal::BodyBytes {
                in_flight: in_flight.body_bytes,
                bytes: body_bytes,
                limit,
            });
        }
        if query {
            let mine = in_flight.per_client.get(&client).copied().unwrap_or(0);
            if mine >= self.limits.max_queries_per_client {
                return Err(Refusal::ClientQueries {
                    limit: self.limits.max_queries_per_client,
                });
            }
            if in_flight.queries >= self.limits.max_queries {
                return Err(Refusal::Queries {
                    limit: self.limits.max_queries,
                });
            }
            in_flight.queries += 1;
            *in_flight.per_client.entry(client).or_insert(0) += 1;
        }
        in_flight.body_bytes += body_bytes;
        Ok(Permit {
            in_flight: self.in_flight.clone(),
            query_of: query.then_some(client),
            body_bytes,
            limit,
        })
    }

    /// Queries and body bytes in flight now (for metrics and tests).
    pub fn in_flight(&self) -> (usize, u64) {
        let in_flight = self.in_flight.lock();
        (in_flight.queries, in_flight.body_bytes)
    }
}

impl Permit {
    /// Counts `bytes` more of this request's body, just read; refused when
    /// they would pass the budget while other bodies are in flight (a body
    /// larger than the whole budget still passes alone).
    pub fn grow(&mut self, bytes: u64) -> Result<(), Refusal> {
        let mut in_flight = self.in_flight.lock();
        let others = in_flight.body_bytes - self.body_bytes;
        let after = in_flight.body_bytes.saturating_add(bytes);
        if others > 0 && after > self.limit {
            return Err(Refusal::BodyBytes {
                in_flight: in_flight.body_bytes,
                bytes,
                limit: self.limit,
            });
        }
        in_flight.body_bytes = after;
        self.body_bytes += bytes;
        Ok(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock();
        in_flight.body_bytes -= self.body_bytes;
        if let Some(client) = self.query_of {
            in_flight.queries -= 1;
            if let Some(n) = in_flight.per_client.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    in_flight.per_client.remove(&client);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn admission(queries: usize, per_client: usize, bytes: u64) -> Admission {
        Admission::new(AdmissionLimits {
            max_queries: queries,
            max_queries_per_client: per_client,
            max_body_bytes_in_flight: bytes,
        })
    }

    #[test]
    fn one_client_is_held_to_its_share_and_others_still_get_in() {
        let a = admission(10, 2, 1 << 20);
        let p1 = a.try_admit(ip(1), true, 10).unwrap();
        let _p2 = a.try_admit(ip(1), true, 10).unwrap();
        assert_eq!(
            a.try_admit(ip(1), true, 10).unwrap_err(),
            Refusal::ClientQueries { limit: 2 }
        );
        // Writes are not queries; another client has its own share.
        let _w = a.try_admit(ip(1), false, 10).unwrap();
        let _q = a.try_admit(ip(2), true, 10).unwrap();
        drop(p1);
        let _p3 = a.try_admit(ip(1), true, 10).unwrap();
    }

    #[test]
    fn the_global_query_limit_holds_across_clients() {
        let a = admission(2, 5, 1 << 20);
        let _p1 = a.try_admit(ip(1), true, 0).unwrap();
        let _p2 = a.try_admit(ip(2), true, 0).unwrap();
        assert_eq!(
            a.try_admit(ip(3), true, 0).unwrap_err(),
            Refusal::Queries { limit: 2 }
        );
    }

    #[test]
    fn body_bytes_are_budgeted_but_one_large_body_alone_gets_in() {
        let a = admission(10, 10, 100);
        let big = a.try_admit(ip(1), false, 500).unwrap();
        assert!(matches!(
            a.try_admit(ip(2), false, 1),
            Err(Refusal::BodyBytes { .. })
        ));
        drop(big);
        let _p1 = a.try_admit(ip(1), false, 60).unwrap();
        assert!(a.try_admit(ip(1), false, 60).is_err());
        let _p2 = a.try_admit(ip(1), false, 40).unwrap();
        assert_eq!(a.in_flight(), (0, 100));
    }

    #[test]
    fn bodies_are_counted_as_they_are_read() {
        let a = admission(10, 10, 100);
        let mut slow = a.try_admit(ip(1), false, 0).unwrap();
        let mut other = a.try_admit(ip(2), false, 0).unwrap();
        slow.grow(1).unwrap();
        other.grow(90).unwrap();
        assert_eq!(a.in_flight(), (0, 91));
        assert!(matches!(slow.grow(10), Err(Refusal::BodyBytes { .. })));
        slow.grow(9).unwrap();
        drop(other);
        // Alone, a body may pass the budget.
        slow.grow(500).unwrap();
        drop(slow);
        assert_eq!(a.in_flight(), (0, 0));
    }

    proptest! {
        /// Whatever the order of admissions and releases, the limits are
        /// never passed and everything is given back in the end.
        #[test]
        fn limits_hold_and_permits_give_everything_back(
            steps in proptest::collection::vec((0u8..4, any::<bool>(), 0u64..50, any::<bool>()), 0..200)
        ) {
            let a = admission(5, 2, 120);
            let mut held: Vec<Permit> = Vec::new();
            for (client, query, bytes, release) in steps {
                if release && !held.is_empty() {
                    held.swap_remove(bytes as usize % held.len());
                    continue;
                }
                if bytes % 3 == 0 && !held.is_empty() {
                    let i = bytes as usize % held.len();
                    let _ = held[i].grow(bytes);
                }
                if let Ok(p) = a.try_admit(ip(client), query, bytes) {
                    held.push(p);
                }
                let (queries, body) = a.in_flight();
                prop_assert!(queries <= 5);
                let with_bytes = held.iter().filter(|p| p.body_bytes > 0).count();
                prop_assert!(body <= 120 || with_bytes == 1);
                for c in 0..4 {
                    let mine = held.iter().filter(|p| p.query_of == Some(ip(c))).count();
                    prop_assert!(mine <= 2);
                }
            }
            held.clear();
            prop_assert_eq!(a.in_flight(), (0, 0));
            prop_assert!(a.in_flight.lock().per_client.is_empty());
        }
    }
}
