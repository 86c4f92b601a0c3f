//! Sizes: parsing `1K`/`64M`/`1G` and the sweep from `-b` to `-e` (pure).
//!
//! Suffixes are powers of 1024, as in nccl-tests' `parsesize` (`K` = 1024,
//! `M` = 1024², `G` = 1024³, either case); a plain number is bytes. The
//! sweep is nccl-tests' loop: `size = minbytes`, then `size × f` (`-f`) or
//! `size + i` (`-i`), while `size ≤ maxbytes`.

/// Most sizes one sweep may have (`-b 1 -e 1G -i 1` would otherwise never end).
pub const MAX_SIZES: usize = 10_000;

/// How the sweep steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Multiply by this (`-f`, at least 2).
    Factor(u64),
    /// Add this many bytes (`-i`, at least 1).
    Bytes(u64),
}

impl Step {
    /// nccl-tests' header form: `2(factor)` or `1048576(bytes)`.
    pub fn describe(self) -> String {
        match self {
            Step::Factor(f) => format!("{f}(factor)"),
            Step::Bytes(b) => format!("{b}(bytes)"),
        }
    }
}

/// Parses a size: digits with an optional `K`, `M` or `G` suffix (powers of 1024).
///
/// ```
/// use zccl_bench::sweep::parse_size;
/// assert_eq!(parse_size("64M"), Ok(64 << 20));
/// assert_eq!(parse_size("8"), Ok(8));
/// assert!(parse_size("1X").unwrap_err().contains("K, M or G"));
/// ```
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(bad_size(s)),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_size(s));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|v| v.checked_mul(mult))
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn bad_size(s: &str) -> String {
    format!(
        "invalid size {s:?}: expected a number of bytes with an optional K, M or G suffix \
         (powers of 1024), e.g. 1K, 64M, 1G"
    )
}

/// The sizes from `min` to `max` (both in bytes).
///
/// ```
/// use zccl_bench::sweep::{sizes, Step};
/// assert_eq!(sizes(1024, 16384, Step::Factor(4)).unwrap(), vec![1024, 4096, 16384]);
/// assert_eq!(sizes(10, 35, Step::Bytes(10)).unwrap(), vec![10, 20, 30]);
/// ```
pub fn sizes(min: usize, max: usize, step: Step) -> Result<Vec<usize>, String> {
    if max < min {
        return Err(format!(
            "-e/--maxbytes ({max}) is smaller than -b/--minbytes ({min})"
        ));
    }
    match step {
        Step::Factor(f) if f < 2 => {
            return Err(format!(
                "-f/--stepfactor must be at least 2 (got {f}); use -i for an additive step"
            ));
        }
        Step::Factor(_) if min == 0 && max > 0 => {
            return Err("-b 0 with -f never grows: start at -b 1 or more".into());
        }
        Step::Bytes(0) => return Err("-i/--stepbytes must be at least 1".into()),
        _ => {}
    }
    let mut out = Vec::new();
    let mut s = min as u64;
    while s <= max as u64 {
        if out.len() == MAX_SIZES {
            return Err(format!(
                "the sweep from {min} to {max} B with step {} has more than {MAX_SIZES} sizes",
                step.describe()
            ));
        }
        out.push(s as usize);
        let next = match step {
            Step::Factor(f) => s.saturating_mul(f),
            Step::Bytes(b) => s.saturating_add(b),
        };
        if next == s || next == u64::MAX {
            break; // 0 × f, or the top of the range
        }
        s = next;
    }
    Ok(out)
}

/// A size in the `K`/`M`/`G` form where it is exact (`64M`), else bytes.
///
/// ```
/// assert_eq!(zccl_bench::sweep::human(64 << 20), "64M");
/// assert_eq!(zccl_bench::sweep::human(1000), "1000");
/// ```
pub fn human(bytes: usize) -> String {
    for (shift, unit) in [(30, 'G'), (20, 'M'), (10, 'K')] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_powers_of_1024() {
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64M"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size(" 12 "), Ok(12));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "K", "1X", "1.5M", "-1", "1KB", "M1", "0x10"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("invalid size"), "{bad}: {e}");
        }
        assert!(
            parse_size("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_size("17179869184G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sweeps() {
        assert_eq!(
            sizes(1024, 64 << 20, Step::Factor(4)).unwrap().len(),
            9 // 1K 4K 16K 64K 256K 1M 4M 16M 64M
        );
        assert_eq!(sizes(8, 8, Step::Factor(2)).unwrap(), vec![8]);
        // max not on the grid: stop below it.
        assert_eq!(sizes(3, 20, Step::Factor(2)).unwrap(), vec![3, 6, 12]);
        // nccl-tests' default: -b 32M -e 32M -i 1M.
        assert_eq!(
            sizes(32 << 20, 32 << 20, Step::Bytes(1 << 20)).unwrap(),
            vec![32 << 20]
        );
        assert_eq!(sizes(0, 0, Step::Factor(2)).unwrap(), vec![0]);
        assert_eq!(sizes(0, 2, Step::Bytes(1)).unwrap(), vec![0, 1, 2]);
        assert!(
            sizes(4096, 1024, Step::Factor(2))
                .unwrap_err()
                .contains("smaller than")
        );
        assert!(
            sizes(1, 8, Step::Factor(1))
                .unwrap_err()
                .contains("at least 2")
        );
        assert!(
            sizes(0, 8, Step::Factor(2))
                .unwrap_err()
                .contains("never grows")
        );
        assert!(
            sizes(1, 8, Step::Bytes(0))
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            sizes(1, 1 << 30, Step::Bytes(1))
                .unwrap_err()
                .contains("more than")
        );
        // Near the top of the range: no overflow.
        let top = usize::MAX - 1;
        assert_eq!(sizes(top, usize::MAX, Step::Factor(2)).unwrap(), vec![top]);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0");
        assert_eq!(human(1024), "1K");
        assert_eq!(human(1536), "1536");
        assert_eq!(human(3 << 30), "3G");
    }
}
