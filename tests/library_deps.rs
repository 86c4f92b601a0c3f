//! The library a Rust trainer depends on (`zccl` with `default-features =
//! false`) must not pull in the command's or the bench's dependencies.

use std::collections::BTreeSet;
use std::process::Command;

/// Package names (without versions) `cargo tree` prints for `zccl` without
/// default features, normal dependencies only, plus `extra` arguments.
fn library_tree(extra: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", "zccl", "--no-default-features"])
        .args(["-e", "normal", "--prefix", "none", "--offline"])
        .args(extra)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn library_build_has_no_cli_or_bench_deps() {
    let tree = library_tree(&[]);
    assert!(tree.contains("zccl-runtime"), "unexpected tree: {tree:?}");
    for dep in ["clap", "indicatif", "zccl-bench", "zccl-testbed"] {
        assert!(
            !tree.contains(dep),
            "`zccl` without default features depends on {dep}; keep it behind the `cli` feature \
             (tree: {tree:?})"
        );
    }
}

/// tiny_http serves the runtime's own `/metrics` endpoint (`ZCCL_METRICS_ADDR`,
/// zccl-runtime's metrics.rs), which a trainer uses; nothing else may bring it.
#[test]
fn tiny_http_only_through_the_runtime_metrics_endpoint() {
    if !library_tree(&[]).contains("tiny_http") {
        return;
    }
    let users = library_tree(&["--invert", "tiny_http", "--depth", "1"]);
    let expected: BTreeSet<String> = ["tiny_http", "zccl-runtime"].map(str::to_owned).into();
    assert_eq!(users, expected);
}
