//! Replays the fuzz corpus on stable Rust, without libFuzzer: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the
//! same body the fuzz target runs (`fuzz/src/lib.rs`, included below), which
//! panics on a crash or a broken codec property. See docs/reliability.md,
//! "Fuzzing".

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod bodies;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs `body` over the corpus and the regressions of `target`; the corpus
/// must not be empty (a lost corpus would make this test vacuous).
fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files(&root.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing"
    );
    let regressions = files(&root.join("regressions").join(target));
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} ({} bytes) panicked",
            path.display(),
            data.len()
        );
    }
}

#[test]
fn frame_corpus() {
    replay("frame", bodies::frame);
}

#[test]
fn handshake_corpus() {
    replay("handshake", bodies::handshake);
}

#[test]
fn router_wire_corpus() {
    replay("router_wire", bodies::router_wire);
}

#[test]
fn topology_xml_corpus() {
    replay("topology_xml", bodies::topology_xml);
}
