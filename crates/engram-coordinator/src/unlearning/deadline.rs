//! When the node starts the work that meets a receipt's erasure deadline.
//!
//! Not at once: rewriting a segment for every delete would rewrite a large
//! segment once per delete, where waiting lets one rewrite take many. The
//! work starts halfway to the deadline, or earlier when the deadline is
//! close enough that the remaining checks might not finish it: at least
//! [`MIN_LEAD_CHECKS`] check intervals (and [`MIN_LEAD_S`]) before it.

use std::time::{Duration, SystemTime};

/// Check intervals left before the deadline when the work starts at the
/// latest (a check to rewrite, one to delete the objects it freed, one
/// spare).
pub const MIN_LEAD_CHECKS: u64 = 3;
/// Seconds left before the deadline when the work starts at the latest.
pub const MIN_LEAD_S: u64 = 60;

/// RFC 3339 `seconds` from now.
pub fn deadline_after(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(seconds)).to_string()
}

/// Unix seconds of RFC 3339 `at`, if it parses.
pub fn unix_s(at: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(at).ok()?;
    Some(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    )
}

/// Whether the erasure work of a receipt issued at `at` with deadline
/// `erase_by` (Unix seconds) is due at `now`, checks running every
/// `check_s` seconds.
pub fn erasure_due(at: i64, erase_by: i64, now: i64, check_s: u64) -> bool {
    let window = (erase_by - at).max(0);
    let lead = (window / 2)
        .max((MIN_LEAD_CHECKS * check_s) as i64)
        .max(MIN_LEAD_S as i64);
    now >= erase_by - lead
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn work_starts_halfway_or_a_few_checks_before() {
        // A day's deadline, checks every minute: at noon.
        assert!(!erasure_due(0, 86_400, 43_199, 60));
        assert!(erasure_due(0, 86_400, 43_200, 60));
        // Ten minutes, checks every 5 minutes: 15 minutes of lead is more
        // than the window, so at once.
        assert!(erasure_due(0, 600, 0, 300));
        // Past the deadline: always.
        assert!(erasure_due(0, 600, 10_000, 1));
    }

    #[test]
    fn timestamps_round_trip() {
        let later = deadline_after(3_600);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let at = unix_s(&later).unwrap();
        assert!((now + 3_599..=now + 3_601).contains(&at), "{at} vs {now}");
        assert_eq!(unix_s("yesterday"), None);
    }

    proptest! {
        /// The work is due with at least a few checks (and half the
        /// window) to spare, and never before the receipt exists when the
        /// window allows waiting.
        #[test]
        fn due_leaves_time_to_finish(at in 0i64..1_000_000, window in 0i64..10_000_000, check_s in 1u64..3_600) {
            let erase_by = at + window;
            let lead = (MIN_LEAD_CHECKS * check_s).max(MIN_LEAD_S) as i64;
            prop_assert!(erasure_due(at, erase_by, erase_by - lead, check_s));
            prop_assert!(erasure_due(at, erase_by, at + window / 2 + window % 2, check_s));
            if window > 2 * lead + 2 {
                prop_assert!(!erasure_due(at, erase_by, at, check_s));
            }
        }
    }
}
