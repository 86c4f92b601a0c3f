//! Choosing between the ring (bandwidth-optimal) and the latency-optimal
//! algorithm (recursive doubling for all-reduce, Bruck for all-gather,
//! binomial tree for broadcast), by message size, overridable with
//! `ZCCL_ALGO=ring|tree|halving|auto`. All-reduce has a third algorithm for
//! medium sizes over power-of-two groups, Rabenseifner's
//! ([`crate::schedule::halving`]; [`choose_all_reduce`]), and reduce-scatter
//! takes its first half, recursive halving, up to a few MiB there
//! ([`choose_reduce_scatter`]).
//!
//! Every rank of a collective must make the same choice; the choice depends
//! only on the message size, the group size, `ZCCL_ALGO` (which must
//! therefore be set identically on every rank) and, for halving, the element
//! type (f16/bf16 take the ring), which ranks that pass matching buffers
//! share.

use crate::error::{Result, invalid};

/// Name of the override variable.
///
/// ```
/// use zccl_primitives::schedule::algo::{parse_algo, ENV};
/// assert_eq!(ENV, "ZCCL_ALGO");
/// // A bad value is reported under the variable's name.
/// let e = parse_algo(Some("fastest")).unwrap_err().to_string();
/// assert!(e.contains(&format!("{ENV}=\"fastest\"")), "{e}");
/// ```
pub const ENV: &str = "ZCCL_ALGO";

/// Messages of at most this many bytes use the latency-optimal algorithm
/// under [`AlgoChoice::Auto`].
///
/// ```
/// use zccl_primitives::schedule::algo::{choose, Algo, AlgoChoice, TREE_MAX_BYTES};
/// assert_eq!(choose(AlgoChoice::Auto, TREE_MAX_BYTES, 8), Algo::Tree);
/// assert_eq!(choose(AlgoChoice::Auto, TREE_MAX_BYTES + 1, 8), Algo::Ring);
/// ```
pub const TREE_MAX_BYTES: usize = 64 * 1024;

/// What the user asked for.
///
/// ```
/// use zccl_primitives::schedule::algo::{choose, Algo, AlgoChoice};
/// assert_eq!(AlgoChoice::default(), AlgoChoice::Auto);
/// // An explicit choice wins over the size.
/// assert_eq!(choose(AlgoChoice::Tree, 1 << 30, 8), Algo::Tree);
/// assert_eq!(choose(AlgoChoice::Ring, 1, 8), Algo::Ring);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AlgoChoice {
    /// Choose by size ([`TREE_MAX_BYTES`]).
    #[default]
    Auto,
    /// Always the ring.
    Ring,
    /// Always the latency-optimal algorithm.
    Tree,
    /// Rabenseifner's all-reduce and recursive-halving reduce-scatter
    /// wherever they apply (a power-of-two group, of 4 ranks or more for
    /// reduce-scatter, and a type that is its own accumulator), the ring
    /// elsewhere and for the other collectives.
    Halving,
}

/// The algorithm a collective runs.
///
/// ```
/// use zccl_primitives::{collectives::all_gather_with, schedule::algo::Algo, Fabric};
/// use zccl_primitives::sim::{try_run_ranks, SimConfig};
/// // Same result, different message pattern: over 4 ranks Bruck takes
/// // 2 steps and the ring 3, one message per rank and step.
/// let mut outcomes = Vec::new();
/// for algo in [Algo::Tree, Algo::Ring] {
///     let run = try_run_ranks(SimConfig::default(), 4, move |f| {
///         all_gather_with(f, 0, &[f.rank() as i32], algo).unwrap()
///     })
///     .unwrap();
///     assert!(run.results.iter().all(|v| v == &[0, 1, 2, 3]));
///     outcomes.push(run.log.len());
/// }
/// assert_eq!(outcomes, [4 * 2, 4 * 3]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algo {
    /// Ring (reduce-scatter + all-gather; ring all-gather; chain broadcast).
    Ring,
    /// Recursive doubling all-reduce / Bruck all-gather / binomial broadcast.
    Tree,
    /// Rabenseifner's all-reduce: reduce-scatter by recursive halving, then
    /// all-gather by recursive doubling ([`crate::schedule::halving`]); for
    /// reduce-scatter, the recursive halving alone. Only all-reduce over a
    /// power-of-two group, and reduce-scatter over one of 4 ranks or more,
    /// of a type that is its own accumulator (every type but f16/bf16) run
    /// it; elsewhere it means [`Algo::Ring`].
    Halving,
}

/// All-reduces of at least this many bytes (and at most
/// [`HALVING_MAX_BYTES`]) over a power-of-two group of 4 ranks or more use
/// Rabenseifner's algorithm ([`Algo::Halving`]) under [`AlgoChoice::Auto`];
/// smaller ones recursive doubling. Measured on 2 vCPUs (Intel Xeon VM,
/// shared memory, 4 ranks, f32 sum out of place, medians of 3-5 interleaved
/// rounds, µs, recursive doubling / halving): 16 KiB 24.1 / 32.5, 24 KiB
/// 35.7 / 37.0, 32 KiB 44.6 / 40.8, 64 KiB 69.2 / 61.9 (Open MPI 57.1),
/// 128 KiB 160.5 / 95.3. Recursive doubling sends the whole buffer at each
/// of its log2(n) steps; halving sends half, a quarter, ... and gathers
/// back, so it wins once the bytes, not the steps, dominate.
///
/// ```
/// use zccl_primitives::schedule::algo::{choose_all_reduce, Algo, AlgoChoice, HALVING_MIN_BYTES};
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, HALVING_MIN_BYTES, 4), Algo::Halving);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, HALVING_MIN_BYTES - 1, 4), Algo::Tree);
/// ```
pub const HALVING_MIN_BYTES: usize = 32 << 10;

/// The largest all-reduce that takes Rabenseifner's algorithm
/// ([`Algo::Halving`], from [`HALVING_MIN_BYTES`]) over a power-of-two
/// group of 4 ranks or more under [`AlgoChoice::Auto`]. Measured on
/// 2 vCPUs (shared memory, f32 sum, medians of 7–11 interleaved runs
/// against the ring): in place, 4 ranks 256 KiB 313 → 237 µs, 1 MiB
/// 909 → 649 µs, 4 MiB 4875 → 4799 µs; 8 ranks 1 MiB 3055 → 2183 µs;
/// out of place (where the ring reads the input without a copy), 4 ranks
/// 256 KiB 258 → 220 µs, 1 MiB 861 → 870 µs, 2 MiB 1900 → 1886 µs, but
/// 4 MiB 4203 → 4653 µs. Larger buffers keep the ring, whose pipelined
/// pieces overlap the copies with the reductions (64 MiB, 4 ranks: 59.7 ms
/// by the ring, 79.0 ms by halving).
///
/// ```
/// use zccl_primitives::schedule::algo::{choose_all_reduce, Algo, AlgoChoice, HALVING_MAX_BYTES};
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, HALVING_MAX_BYTES, 8), Algo::Halving);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, HALVING_MAX_BYTES + 1, 8), Algo::Ring);
/// ```
pub const HALVING_MAX_BYTES: usize = 2 << 20;

/// Parses a `ZCCL_ALGO` value (pure). Unset or empty means `auto`; case and
/// surrounding blanks are ignored; anything else is an error naming the value.
///
/// ```
/// use zccl_primitives::schedule::algo::{parse_algo, AlgoChoice};
/// assert_eq!(parse_algo(None).unwrap(), AlgoChoice::Auto);
/// assert_eq!(parse_algo(Some(" Ring ")).unwrap(), AlgoChoice::Ring);
/// assert_eq!(parse_algo(Some("tree")).unwrap(), AlgoChoice::Tree);
/// assert_eq!(parse_algo(Some("halving")).unwrap(), AlgoChoice::Halving);
/// assert!(parse_algo(Some("fast")).unwrap_err().to_string().contains("ZCCL_ALGO=\"fast\""));
/// ```
pub fn parse_algo(value: Option<&str>) -> Result<AlgoChoice> {
    let Some(v) = value else {
        return Ok(AlgoChoice::Auto);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(AlgoChoice::Auto),
        "ring" => Ok(AlgoChoice::Ring),
        "tree" => Ok(AlgoChoice::Tree),
        "halving" => Ok(AlgoChoice::Halving),
        _ => Err(invalid(format!(
            "{ENV}={v:?}: expected ring, tree, halving or auto"
        ))),
    }
}

/// Reads `ZCCL_ALGO` from the process environment, once per process (as
/// NCCL reads its variables at initialisation): every collective asks, and
/// a `getenv` walks the whole environment (3 % of a 2-rank 8 B all-reduce).
///
/// ```
/// use zccl_primitives::schedule::algo::{choice_from_env, parse_algo};
/// let v = std::env::var("ZCCL_ALGO").ok();
/// assert_eq!(choice_from_env().ok(), parse_algo(v.as_deref()).ok());
/// ```
pub fn choice_from_env() -> Result<AlgoChoice> {
    static CHOICE: std::sync::OnceLock<Result<AlgoChoice>> = std::sync::OnceLock::new();
    CHOICE
        .get_or_init(|| parse_algo(std::env::var(ENV).ok().as_deref()))
        .clone()
}

/// The algorithm for a message of `bytes` bytes over `n` ranks.
///
/// ```
/// use zccl_primitives::schedule::algo::{choose, Algo, AlgoChoice};
/// assert_eq!(choose(AlgoChoice::Auto, 1024, 8), Algo::Tree);
/// assert_eq!(choose(AlgoChoice::Auto, 1 << 20, 8), Algo::Ring);
/// assert_eq!(choose(AlgoChoice::Ring, 8, 8), Algo::Ring);
/// ```
pub fn choose(choice: AlgoChoice, bytes: usize, n: usize) -> Algo {
    match choice {
        AlgoChoice::Ring | AlgoChoice::Halving => Algo::Ring,
        AlgoChoice::Tree => Algo::Tree,
        AlgoChoice::Auto if n <= 1 || bytes <= TREE_MAX_BYTES => Algo::Tree,
        AlgoChoice::Auto => Algo::Ring,
    }
}

/// The all-reduce algorithm for `bytes` bytes over `n` ranks: [`choose`]'s,
/// except that medium sizes over a power-of-two group of 4 or more take
/// [`Algo::Halving`] ([`HALVING_MIN_BYTES`] to [`HALVING_MAX_BYTES`]); with
/// 2 ranks halving and the ring are the same two steps. (Where halving does
/// not apply to the element type, f16 and bf16, the collective takes
/// [`choose`]'s algorithm instead.)
///
/// ```
/// use zccl_primitives::schedule::algo::{choose_all_reduce, Algo, AlgoChoice};
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, 1024, 8), Algo::Tree);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, 64 << 10, 4), Algo::Halving);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, 64 << 10, 2), Algo::Tree);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, 1 << 20, 8), Algo::Halving);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, 1 << 20, 6), Algo::Ring);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, 1 << 20, 2), Algo::Ring);
/// assert_eq!(choose_all_reduce(AlgoChoice::Auto, 4 << 20, 8), Algo::Ring);
/// assert_eq!(choose_all_reduce(AlgoChoice::Ring, 1 << 20, 8), Algo::Ring);
/// assert_eq!(choose_all_reduce(AlgoChoice::Halving, 64 << 20, 8), Algo::Halving);
/// ```
pub fn choose_all_reduce(choice: AlgoChoice, bytes: usize, n: usize) -> Algo {
    match choice {
        AlgoChoice::Halving => Algo::Halving,
        AlgoChoice::Auto
            if n >= 4
                && n.is_power_of_two()
                && (HALVING_MIN_BYTES..=HALVING_MAX_BYTES).contains(&bytes) =>
        {
            Algo::Halving
        }
        _ => choose(choice, bytes, n),
    }
}

/// The reduce-scatter algorithm for an input of `bytes` bytes over `n`
/// ranks: [`Algo::Halving`] (recursive halving, `log₂ n` steps) over a
/// power-of-two group of 4 or more up to [`RS_HALVING_MAX_BYTES`], or
/// wherever it applies when asked for by name (`halving`, or `tree`: it is
/// also the latency-optimal one); the ring elsewhere (2 ranks: the ring's
/// one step is halving's). (Where halving does not apply to the element
/// type, f16 and bf16, the collective takes the ring.)
///
/// ```
/// use zccl_primitives::schedule::algo::{choose_reduce_scatter, Algo, AlgoChoice};
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Auto, 1024, 4), Algo::Halving);
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Auto, 1 << 20, 8), Algo::Halving);
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Auto, 1 << 20, 2), Algo::Ring);
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Auto, 1 << 20, 6), Algo::Ring);
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Auto, 1 << 30, 4), Algo::Ring);
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Tree, 1 << 30, 4), Algo::Halving);
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Ring, 1024, 4), Algo::Ring);
/// ```
pub fn choose_reduce_scatter(choice: AlgoChoice, bytes: usize, n: usize) -> Algo {
    let applies = n >= 4 && n.is_power_of_two();
    match choice {
        AlgoChoice::Halving | AlgoChoice::Tree if applies => Algo::Halving,
        AlgoChoice::Auto if applies && bytes <= RS_HALVING_MAX_BYTES => Algo::Halving,
        _ => Algo::Ring,
    }
}

/// The largest reduce-scatter input that takes recursive halving
/// ([`choose_reduce_scatter`]) over a power-of-two group of 4 ranks or more
/// under [`AlgoChoice::Auto`]; larger ones take the pipelined ring, whose
/// pieces overlap the copies with the reductions. Measured on 2 vCPUs
/// (shared memory, f32 sum out of place, `zccl bench reduce_scatter`,
/// medians of 3-5 interleaved rounds, µs, ring / halving): 4 ranks 1 KiB
/// 12.4 / 8.9, 16 KiB 16.8 / 17.6, 64 KiB 35.5 / 25.3, 128 KiB 57.8 / 46.6,
/// 256 KiB 129.5 / 84.8, 1 MiB 499.9 / 335.2, 4 MiB 1440 / 1305, but
/// 16 MiB 5191 / 6323; 8 ranks (4 per vCPU, noisy) 1 KiB 69.6 / 49.2,
/// 64 KiB 158.8 / 134.0, 256 KiB 470.6 / 465.5, 1 MiB 1636 / 1430, 4 MiB
/// 4627 / 4626.
///
/// ```
/// use zccl_primitives::schedule::algo::{choose_reduce_scatter, Algo, AlgoChoice, RS_HALVING_MAX_BYTES};
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Auto, RS_HALVING_MAX_BYTES, 4), Algo::Halving);
/// assert_eq!(choose_reduce_scatter(AlgoChoice::Auto, RS_HALVING_MAX_BYTES + 1, 4), Algo::Ring);
/// ```
pub const RS_HALVING_MAX_BYTES: usize = 4 << 20;
