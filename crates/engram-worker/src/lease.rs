//! Read leases: why a copy that missed acknowledged writes never answers a
//! read after they were acknowledged.
//!
//! A copy answers reads only while its view of the shard map is known to
//! be recent: while it holds a *lease*, which a heartbeat answered by the
//! Raft leader grants for [`READ_LEASE`] counted from when the heartbeat
//! was *sent*. A copy paused, cut off or slow stops answering once its
//! lease runs out, before it could learn that it fell out of sync.
//!
//! The other half is on the primary: after it sees its shard's in-sync
//! set shrink (a replica marked out of sync, a primary failed over, a copy
//! moved away) or opens its copy, it holds acknowledgements back for
//! [`READ_LEASE`]. A lease granted before the change was committed has run
//! out by then; one granted after it came with a state showing the change,
//! so the dropped copy refuses reads itself ([`crate::replicas::Replica::check_readable`]).
//! Together: once a write or delete is acknowledged, no copy that lacks it
//! answers reads.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crate::wire::RpcError;

/// How long a heartbeat answered by the Raft leader lets a worker answer
/// reads, and how long a primary holds acknowledgements back after its
/// in-sync set shrank. Several heartbeat intervals long, so that one slow
/// heartbeat does not interrupt reads.
pub const READ_LEASE: Duration = Duration::from_secs(2);

/// A worker's read lease.
#[derive(Debug, Default)]
pub struct ReadLease {
    until: Mutex<Option<Instant>>,
}

impl ReadLease {
    /// Extends the lease after the Raft leader answered a heartbeat sent at
    /// `sent` (and the state it answered with is adopted).
    pub fn renew(&self, sent: Instant) {
        let until = sent + READ_LEASE;
        let mut held = self.until.lock();
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    /// Refuses reads unless the lease is held now.
    pub fn check(&self) -> Result<(), RpcError> {
        match *self.until.lock() {
            Some(until) if Instant::now() < until => Ok(()),
            _ => Err(RpcError::Unavailable(
                "this worker has not heard from the Raft leader recently; its copies may be out of date"
                    .into(),
            )),
        }
    }
}

/// When a primary may acknowledge writes again (see the module docs).
#[derive(Debug)]
pub struct AckHold {
    until: Mutex<Instant>,
}

impl AckHold {
    /// Starts held: a copy just opened does not know which leases other
    /// copies hold.
    pub fn new() -> AckHold {
        AckHold {
            until: Mutex::new(Instant::now() + READ_LEASE),
        }
    }

    /// Not held: for a copy created empty, which no lease can concern.
    pub fn released() -> AckHold {
        AckHold {
            until: Mutex::new(Instant::now()),
        }
    }

    /// Holds acknowledgements for a full lease from now.
    pub fn hold(&self) {
        let until = Instant::now() + READ_LEASE;
        let mut held = self.until.lock();
        if *held < until {
            *held = until;
        }
    }

    /// How long acknowledgements must still wait.
    pub fn remaining(&self) -> Option<Duration> {
        let until = *self.until.lock();
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

impl Default for AckHold {
    fn default() -> Self {
        AckHold::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_only_after_a_leader_answered_and_for_its_length() {
        let lease = ReadLease::default();
        assert!(lease.check().is_err(), "no heartbeat yet");
        lease.renew(Instant::now());
        assert!(lease.check().is_ok());
        // A renewal for an older heartbeat does not shorten it; one sent a
        // full lease ago has run out.
        let lease = ReadLease::default();
        lease.renew(Instant::now() - READ_LEASE - Duration::from_millis(1));
        assert!(lease.check().is_err());
        lease.renew(Instant::now());
        lease.renew(Instant::now() - READ_LEASE);
        assert!(lease.check().is_ok());
    }

    #[test]
    fn acknowledgements_wait_a_lease_after_opening_and_after_a_hold() {
        let hold = AckHold::new();
        let first = hold.remaining().expect("held after opening");
        assert!(first <= READ_LEASE && first > READ_LEASE / 2);
        let done = AckHold::released();
        assert_eq!(done.remaining(), None);
        done.hold();
        assert!(done.remaining().is_some_and(|d| d > READ_LEASE / 2));
    }
}
