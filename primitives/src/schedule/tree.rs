//! Binomial-tree broadcast (small messages) and the pipelined chain
//! broadcast (large messages).
//!
//! Ranks are renumbered relative to the root, `v = (r - root) mod n`. In the
//! binomial tree, `v > 0` receives from `v - lowbit(v)` and sends to `v + 2^k`
//! for every `2^k < lowbit(v)` (every `2^k < n` for the root) that is `< n`,
//! largest subtree first. Depth `⌈log₂ n⌉`.
//!
//! In the chain, the buffer is cut into segments; rank `v` receives each
//! segment from `v-1` and forwards it to `v+1` before receiving the next.

/// Parent and children of `rank` in the binomial broadcast tree rooted at `root`.
///
/// ```
/// use zccl_primitives::schedule::tree::{binomial, TreeNode};
/// let (n, root) = (6, 3);
/// assert_eq!(binomial(4, root, n), TreeNode { parent: Some(3), children: vec![] });
/// assert_eq!(binomial(root, root, n).parent, None);
/// // Every other rank is a child of its parent.
/// for r in (0..n).filter(|&r| r != root) {
///     let p = binomial(r, root, n).parent.unwrap();
///     assert!(binomial(p, root, n).children.contains(&r));
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// The rank this one receives from (`None` for the root).
    pub parent: Option<usize>,
    /// The ranks this one sends to, in send order.
    pub children: Vec<usize>,
}

/// The binomial-tree node of `rank`.
///
/// ```
/// use zccl_primitives::schedule::tree::binomial;
/// let root = binomial(0, 0, 5);
/// assert_eq!((root.parent, root.children), (None, vec![4, 2, 1]));
/// assert_eq!(binomial(2, 0, 5).children, vec![3]);
/// assert_eq!(binomial(3, 0, 5).parent, Some(2));
/// ```
pub fn binomial(rank: usize, root: usize, n: usize) -> TreeNode {
    let v = (rank + n - root) % n;
    let to_rank = |x: usize| (x + root) % n;
    let limit = if v == 0 {
        n.next_power_of_two().max(1)
    } else {
        v & v.wrapping_neg()
    };
    let parent = (v != 0).then(|| to_rank(v - (v & v.wrapping_neg())));
    let mut children = Vec::new();
    let mut k = 1;
    while k < limit {
        if v + k < n {
            children.push(to_rank(v + k));
        }
        k *= 2;
    }
    children.reverse();
    TreeNode { parent, children }
}

/// Previous and next rank of `rank` on the broadcast chain starting at `root`.
///
/// ```
/// use zccl_primitives::schedule::tree::chain;
/// assert_eq!(chain(2, 2, 3), (None, Some(0)));
/// assert_eq!(chain(1, 2, 3), (Some(0), None));
/// ```
pub fn chain(rank: usize, root: usize, n: usize) -> (Option<usize>, Option<usize>) {
    let v = (rank + n - root) % n;
    let prev = (v > 0).then(|| (rank + n - 1) % n);
    let next = (v + 1 < n).then(|| (rank + 1) % n);
    (prev, next)
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tree_reaches_everyone_once() {
        for n in 1..=17 {
            for root in 0..n {
                let mut got = vec![0; n];
                got[root] += 1;
                for r in 0..n {
                    let t = binomial(r, root, n);
                    for &c in &t.children {
                        assert_eq!(binomial(c, root, n).parent, Some(r));
                        got[c] += 1;
                    }
                }
                assert!(got.iter().all(|&g| g == 1), "n={n} root={root} {got:?}");
            }
        }
    }
}
