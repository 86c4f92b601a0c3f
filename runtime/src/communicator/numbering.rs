//! The numbering of a communicator's ops: each channel's ops in issue
//! order, and the send and receive sequence numbers with each peer (what
//! a message is matched by).

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;

/// The numbering of the ops issued on each channel of a communicator.
#[derive(Default)]
pub(super) struct IssueState {
    pub(super) channels: HashMap<u32, ChannelSeqs>,
}

/// One channel's numbering: the next ordered op's position among the
/// channel's ordered ops, the next position in each completion lane its
/// peerwise ops used (`engine::lane_of`, keyed by lane), and the next send
/// and receive sequence number with each peer it used, ordered and
/// peerwise ops alike (one map lookup per op, for the channel).
#[derive(Default)]
pub(super) struct ChannelSeqs {
    pub(super) index: u64,
    pub(super) lanes: PeerSeqs,
    pub(super) send: PeerSeqs,
    pub(super) recv: PeerSeqs,
}

/// The next sequence number with each peer a channel used (or the next
/// position in each completion lane: the same counter by another key): a short list
/// (most channels talk to one or two peers: a ring's neighbours), a map
/// once it holds more than [`PeerSeqs::FEW`] (an all-to-all's channel).
/// Memory follows the peers used, not the communicator's size (Python
/// gives every tag a channel of its own).
pub(super) enum PeerSeqs {
    Few(SmallVec<[(u32, u64); 4]>),
    Many(HashMap<u32, u64>),
}

impl Default for PeerSeqs {
    fn default() -> Self {
        PeerSeqs::Few(SmallVec::new())
    }
}

impl PeerSeqs {
    const FEW: usize = 8;

    /// `peer`'s next sequence number, counted as taken.
    pub(super) fn take(&mut self, peer: u32) -> u64 {
        match self {
            PeerSeqs::Few(v) => {
                if let Some((_, s)) = v.iter_mut().find(|(p, _)| *p == peer) {
                    *s += 1;
                    return *s - 1;
                }
                if v.len() < Self::FEW {
                    v.push((peer, 1));
                    return 0;
                }
                let mut m: HashMap<u32, u64> = v.drain(..).collect();
                m.insert(peer, 1);
                *self = PeerSeqs::Many(m);
                0
            }
            PeerSeqs::Many(m) => {
                let s = m.entry(peer).or_insert(0);
                *s += 1;
                *s - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PeerSeqs;

    #[test]
    fn each_peer_counts_its_own_sequence_across_the_switch_to_a_map() {
        let mut s = PeerSeqs::default();
        // Peers 0..12 twice each, interleaved: the list becomes a map at
        // the ninth peer, and no count restarts or jumps.
        let mut got = Vec::new();
        for round in 0..2 {
            for peer in 0..12u32 {
                got.push((peer, round, s.take(peer)));
            }
        }
        assert!(matches!(s, PeerSeqs::Many(_)));
        for (peer, round, seq) in got {
            assert_eq!(seq, round, "peer {peer}");
        }
        assert_eq!(s.take(3), 2);
        assert_eq!(s.take(11), 2);
    }
}
