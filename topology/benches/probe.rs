//! Probing the 8-GPU fake sysfs tree (2 sockets, 4 PCIe switches, 8 GPUs,
//! 8 NICs), and the affinity computed from it. Target: probe under 50 ms.
//!
//! `cargo bench -p zccl-topology`

use std::sync::OnceLock;
use zccl_topology::{affinity::affinity, fake::FakeHost, probe_sysfs};

fn tree() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        FakeHost::dgx_h100_like()
            .write(dir.path())
            .expect("write fake sysfs");
        dir
    })
    .path()
}

#[divan::bench]
fn probe_dgx_like() -> zccl_topology::Topology {
    probe_sysfs(divan::black_box(tree())).expect("probe")
}

#[divan::bench]
fn affinity_dgx_like(bencher: divan::Bencher) {
    let topo = probe_sysfs(tree()).expect("probe");
    bencher.bench(|| affinity(divan::black_box(&topo)));
}

fn main() {
    divan::main();
}
