//! Pure schedule generators: which rank sends what to whom at each step.
//!
//! Nothing here touches a fabric; every function is a function of the rank,
//! the group size and the message geometry, tested on its own. The executors
//! ([`crate::collectives`], [`crate::alltoall`], [`crate::ring`],
//! [`crate::token_ring`], [`crate::scan`]) follow these plans step by step.

pub mod algo;
pub mod bruck;
pub mod chunks;
pub mod halving;
pub mod pairwise;
pub mod rd;
pub mod ring;
pub mod scan;
pub mod shift;
pub mod token_ring;
pub mod tree;

/// `(a mod n)` for a possibly negative `a`, as a rank index.
///
/// ```
/// assert_eq!(zccl_primitives::schedule::wrap(-1, 4), 3);
/// assert_eq!(zccl_primitives::schedule::wrap(9, 4), 1);
/// ```
pub fn wrap(a: isize, n: usize) -> usize {
    a.rem_euclid(n as isize) as usize
}
