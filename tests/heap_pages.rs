//! What `zccl run` giving its ranks `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
//! does (`zccl_runtime::malloc`'s notes): a 16 MiB buffer that a rank keeps
//! on the heap, as at a first communicator, is backed by transparent huge
//! pages with it and by 4 KiB pages without it (`ZCCL_MALLOC_TUNE=0`),
//! where the kernel backs advised memory alone (THP mode `madvise`).
//! Elsewhere, or on a glibc older than 2.35, it prints `SKIPPED` and why.
//!
//! Its own `main` (no test harness): the worker must allocate on the main
//! thread, whose heap grows advised with the tunable; libtest runs tests
//! on threads of their own, whose arenas' later growth is not. Where the
//! kernel gives no huge page even to a fresh advised mapping (memory
//! fragmented, THP off for the process), it skips too, and so it does where
//! glibc was given the tunable but did not advise its heap (no `hg` among
//! the heap's `VmFlags`: seen at random with Debian's glibc 2.36 on an
//! Intel VM; zccl's part, giving the tunable, still fails the test if it
//! is missing). `--list` lists it
//! as one test; a filter that does not match `heap_pages` skips it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = "ZCCL_HEAP_PAGES_WORKER";

fn main() {
    if std::env::var_os(WORKER).is_some() {
        worker();
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("heap_pages: test");
        }
        return;
    }
    if let Some(f) = args.iter().find(|a| !a.starts_with('-'))
        && !"heap_pages".contains(f.as_str())
    {
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
    if let Some(why) = unsupported() {
        println!("heap: SKIPPED {why}");
        return;
    }
    // A control: a fresh mapping, aligned and advised, must get huge pages
    // here, or the kernel gives none at all (the heap's 0 would say
    // nothing).
    let control = anon_huge_kb_after(|| {
        let len = 4 << 20;
        // SAFETY: a private anonymous mapping of our own, checked below,
        // touched inside it, unmapped after the reading.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                2 * len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            let start = (p as usize).next_multiple_of(2 << 20) as *mut u8;
            libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
            for i in (0..len).step_by(4096) {
                start.add(i).write_volatile(1);
            }
            Box::new(move || {
                libc::munmap(p, 2 * len);
            }) as Box<dyn FnOnce()>
        }
    });
    if control == 0 {
        println!("heap: SKIPPED the kernel gave no huge page to a fresh advised mapping either");
        return;
    }
    zccl::runtime::malloc::tune_once();
    let mut heap_advised = false;
    let heap = anon_huge_kb_after(|| {
        let mut buf = vec![0u8; 16 << 20];
        for i in (0..buf.len()).step_by(4096) {
            buf[i] = 1;
        }
        std::hint::black_box(&mut buf);
        heap_advised = advised(buf.as_ptr() as usize);
        Box::new(move || drop(buf)) as Box<dyn FnOnce()>
    });
    let given = std::env::var("GLIBC_TUNABLES")
        .is_ok_and(|t| t.split(':').any(|e| e == "glibc.malloc.hugetlb=1"));
    if given && !heap_advised {
        // zccl gave the tunable (without it the 0 kB below fails the
        // test), but glibc did not act on it in this process: seen with
        // Debian's glibc 2.36 on an Intel VM in about half the launches,
        // where it read the THP mode and then did not advise its heap.
        println!(
            "heap: SKIPPED glibc was given glibc.malloc.hugetlb=1 but did not advise its heap \
             (no `hg` among the heap's VmFlags) in this process"
        );
        return;
    }
    println!("heap: AnonHugePages {heap} kB");
}

/// Whether the mapping holding `addr` is advised for huge pages: `hg`
/// among its `VmFlags` in `/proc/self/smaps`.
fn advised(addr: usize) -> bool {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    for l in smaps.lines() {
        let range = l.split_once(' ').and_then(|(r, _)| r.split_once('-'));
        if let Some((a, b)) = range
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = (a..b).contains(&addr);
        } else if inside && let Some(flags) = l.strip_prefix("VmFlags:") {
            return flags.split_whitespace().any(|f| f == "hg");
        }
    }
    false
}

/// Why the tunable cannot be tried here, if it cannot.
fn unsupported() -> Option<String> {
    (!zccl::runtime::malloc::glibc_reads_hugetlb())
        .then(|| "this libc does not read glibc.malloc.hugetlb (glibc 2.35 and later do)".into())
}

/// The growth of this process's `AnonHugePages` (kB) from before `touch`
/// to after it; then runs what `touch` returned (freeing what it touched).
fn anon_huge_kb_after(touch: impl FnOnce() -> Box<dyn FnOnce()>) -> u64 {
    let read = || {
        std::fs::read_to_string("/proc/self/smaps_rollup")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = read();
    let free = touch();
    let after = read();
    free();
    after.saturating_sub(before)
}
