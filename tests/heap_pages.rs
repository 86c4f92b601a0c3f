//! What `zccl run` giving its ranks `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
//! does (`zccl_runtime::malloc`'s notes): a 16 MiB buffer that a rank keeps
//! on the heap, as at a first communicator, is backed by transparent huge
//! pages with it and by 4 KiB pages without it (`ZCCL_MALLOC_TUNE=0`),
//! where the kernel backs advised memory alone (THP mode `madvise`).
//! Elsewhere, or on a glibc older than 2.35, it prints `SKIPPED` and why.
//!
//! Its own `main` (no test harness): the worker must allocate on the main
//! thread, whose heap (glibc's main arena) is the one the tunable advises;
//! libtest runs tests on threads of their own, whose arenas it does not.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = "ZCCL_HEAP_PAGES_WORKER";

fn main() {
    if std::env::var_os(WORKER).is_some() {
        worker();
        return;
    }
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !mode.contains("[madvise]") {
        println!(
            "SKIPPED: the kernel's THP mode is {:?}, not madvise: the tunable changes nothing there",
            mode.trim()
        );
        return;
    }
    let with = rank_line(&[]);
    if let Some(why) = with.strip_prefix("SKIPPED ") {
        println!("SKIPPED: {why}");
        return;
    }
    let without = rank_line(&[("ZCCL_MALLOC_TUNE", "0")]);
    assert!(kb(&with) >= 8 << 10, "with glibc.malloc.hugetlb=1: {with}");
    assert_eq!(kb(&without), 0, "without it: {without}");
    println!("heap_pages: ok ({with} with the tunable, {without} without)");
}

/// Runs this program as the one rank of `zccl run -n 1` (the launcher's
/// `GLIBC_TUNABLES` and `ZCCL_MALLOC_TUNE` removed, then `envs` set) and
/// returns what the worker said.
fn rank_line(envs: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zccl"))
        .args(["run", "-n", "1", "--"])
        .arg(&exe)
        .env_remove("GLIBC_TUNABLES")
        .env_remove("ZCCL_MALLOC_TUNE")
        .env_remove("ZCCL_DEBUG")
        .env(WORKER, "1")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start zccl run");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("zccl run did not end within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    out.lines()
        .find_map(|l| l.split_once("heap: ").map(|(_, w)| w.to_string()))
        .unwrap_or_else(|| panic!("no heap line in {out:?}"))
}

/// The kB of `AnonHugePages N kB`.
fn kb(line: &str) -> u64 {
    line.strip_prefix("AnonHugePages ")
        .and_then(|v| v.strip_suffix(" kB"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad heap line {line:?}"))
}

/// The rank: keeps buffers up to 32 MiB on the heap (as a first
/// communicator does), touches a 16 MiB one page by page, and says how much
/// of the process is on transparent huge pages.
fn worker() {
    // glibc.malloc.hugetlb came with glibc 2.35.
    // SAFETY: returns a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let v = v.to_string_lossy();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 35) {
        println!("heap: SKIPPED glibc {v} has no glibc.malloc.hugetlb (2.35 and later)");
        return;
    }
    zccl::runtime::malloc::tune_once();
    let mut buf = vec![0u8; 16 << 20];
    for i in (0..buf.len()).step_by(4096) {
        buf[i] = 1;
    }
    std::hint::black_box(&mut buf);
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let kb = rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
        .unwrap_or_else(|| "0".into());
    println!("heap: AnonHugePages {kb} kB");
}
