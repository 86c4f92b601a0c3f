//! The Python package's test suite (python/tests, pytest), run from the
//! README's test command.
//!
//! Which interpreter: `ZCCL_TEST_PYTHON` if set (CI points it at a virtual
//! environment where the wheel built by maturin is installed), else Debian's
//! `/usr/bin/python3` (where `python3-torch` installs torch) with the
//! extension built here by cargo and staged next to the package's Python
//! sources under `target/`. Without an interpreter that has torch, numpy and
//! pytest the test says so and skips; CI installs them (`.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `python` imports all of `modules`.
fn imports(python: &Path, modules: &str, pythonpath: Option<&Path>) -> bool {
    let mut c = Command::new(python);
    c.args(["-c", &format!("import {modules}")]);
    if let Some(p) = pythonpath {
        c.env("PYTHONPATH", p);
    }
    c.output().is_ok_and(|o| o.status.success())
}

/// Builds the extension with cargo and stages `zccl/` (sources + the
/// extension) in a folder of its own; returns the folder for PYTHONPATH.
fn stage_package() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "zccl-python"])
        .current_dir(repo())
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the extension (cargo build -p zccl-python) failed"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let so = target.join("debug").join("lib_zccl.so");
    assert!(so.exists(), "{} not built", so.display());
    let stage = target.join("pytest-stage");
    let pkg = stage.join("zccl");
    let _ = std::fs::remove_dir_all(&pkg);
    std::fs::create_dir_all(&pkg).expect("stage folder");
    for e in std::fs::read_dir(repo().join("python/zccl")).expect("python/zccl") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "py") {
            std::fs::copy(&p, pkg.join(p.file_name().expect("name"))).expect("copy source");
        }
    }
    std::fs::copy(&so, pkg.join("_zccl.abi3.so")).expect("copy extension");
    stage
}

#[test]
fn python_package_tests() {
    let (python, explicit) = match std::env::var_os("ZCCL_TEST_PYTHON") {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from("/usr/bin/python3"), false),
    };
    if !imports(&python, "torch, numpy, pytest", None) {
        assert!(
            !explicit,
            "ZCCL_TEST_PYTHON={} lacks torch, numpy or pytest",
            python.display()
        );
        zccl_testbed::skip(format!(
            "{} cannot import torch, numpy and pytest \
             (apt-get install python3-torch python3-pytest; .ci/run does)",
            python.display()
        ));
        return;
    }
    // The wheel installed in ZCCL_TEST_PYTHON's environment, or a staged build.
    let pythonpath = if explicit && imports(&python, "zccl.torch", None) {
        None
    } else {
        Some(stage_package())
    };
    let mut c = Command::new(&python);
    c.args(["-m", "pytest", "-q", "-rs", "python/tests"])
        .current_dir(repo())
        .env("ZCCL_BIN", env!("CARGO_BIN_EXE_zccl"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some(p) = &pythonpath {
        c.env("PYTHONPATH", p);
    }
    let status = c.status().expect("pytest runs");
    assert!(status.success(), "pytest python/tests failed ({status})");
}
