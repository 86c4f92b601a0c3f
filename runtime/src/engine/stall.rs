//! Stalls: how long an overdue op waits for the reports of ranks that
//! timed out with it, and which rank a chain of "rank a waited on rank b"
//! reports ends at. Pure; tested below.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::Duration;

/// How long an op past its deadline waits (at most; a tenth of its timeout
/// if that is shorter) for the `Control::Waiting` reports of ranks that
/// time out at the same moment, so that its error can name the rank they
/// all waited on instead of the nearest waiting one.
pub(super) const STALL_NOTICE: Duration = Duration::from_millis(300);

/// The rank that stalled: the end of the chain of "rank a waited on rank b"
/// reports that starts at `peer` (the rank this one waited on). A rank that
/// reported no wait of its own is where the chain ends; so is a cycle.
///
/// Pure; tested below.
pub(crate) fn culprit<S: BuildHasher>(peer: u32, waits: &HashMap<u32, u32, S>) -> u32 {
    let mut cur = peer;
    let mut seen = HashSet::from([cur]);
    while let Some(&next) = waits.get(&cur) {
        if !seen.insert(next) {
            break;
        }
        cur = next;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprit_follows_the_chain_of_waits() {
        // Rank 1 stalled in a 4-rank ring: 2 waited on 1, 3 on 2, 0 on 3.
        let waits = HashMap::from([(2, 1), (3, 2), (0, 3)]);
        // Whichever neighbour a survivor timed out on, the chain ends at 1.
        for peer in [1, 2, 3] {
            assert_eq!(culprit(peer, &waits), 1);
        }
        // Nobody reported: the peer itself.
        assert_eq!(culprit(5, &HashMap::<u32, u32>::new()), 5);
        // A cycle (every rank waiting on the next) stops where it closes.
        let ring = HashMap::from([(0, 1), (1, 2), (2, 0)]);
        assert!([0, 1, 2].contains(&culprit(1, &ring)));
    }
}
