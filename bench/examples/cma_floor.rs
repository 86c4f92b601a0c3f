//! The floor of a same-host exchange of large messages: two processes,
//! each copying N bytes out of the other's memory at the same time with
//! one `process_vm_readv` (the single copy zccl and Open MPI's `vader`
//! make), and nothing else: no rings, no matching, no wake-ups. A 2-rank
//! `zccl bench sendrecv` or Open MPI's sendrecv of N bytes cannot beat it
//! by much; see docs/performance.md ("The floor of the 64 MiB cells").
//!
//! ```sh
//! cargo run --release -p zccl-bench --example cma_floor -- 64 20      # 64 MiB, 20 rounds
//! cargo run --release -p zccl-bench --example cma_floor -- 64 20 4k   # without huge pages
//! ```
//!
//! Buffers are 2 MiB aligned and advised for transparent huge pages
//! (`MADV_HUGEPAGE`, as the bench's buffers and numpy's large arrays are),
//! unless the third argument is `4k`. Prints the mean, median and best time
//! of a round (the slower of the two copies' starts to both ends, measured
//! by the parent). Linux only (it exits with a note elsewhere).

#[cfg(target_os = "linux")]
fn main() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().map_or(64, |a| a.parse().expect("size in MiB"));
    let rounds: u64 = args.get(1).map_or(20, |a| a.parse().expect("rounds"));
    assert!(rounds > 0, "at least one round");
    let huge = args.get(2).map(String::as_str) != Some("4k");
    let n = mib << 20;

    // One shared page: [0..2] each side's buffer address, [2..4] its pid,
    // [4] arrivals, [5] round starts, [6] round ends.
    // SAFETY: a fresh anonymous shared mapping of one page.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "mmap");
    // SAFETY: the page holds 512 aligned u64s, zeroed, shared by both.
    let word = |i: usize| unsafe { &*(page as *const AtomicU64).add(i) };
    let barrier = |i: usize, target: u64| {
        word(i).fetch_add(1, Ordering::SeqCst);
        while word(i).load(Ordering::SeqCst) < target {
            std::hint::spin_loop();
        }
    };

    // SAFETY: plain fork of a single-threaded process.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    let me = usize::from(child == 0);
    let layout = std::alloc::Layout::from_size_align(n.max(1), 2 << 20).expect("layout");
    // SAFETY: a non-zero layout; both buffers live until the process exits.
    let (src, dst) = unsafe { (std::alloc::alloc(layout), std::alloc::alloc(layout)) };
    assert!(!src.is_null() && !dst.is_null(), "alloc");
    if huge {
        for b in [src, dst] {
            // SAFETY: advice on memory this process owns.
            unsafe { libc::madvise(b.cast(), n, libc::MADV_HUGEPAGE) };
        }
    }
    // SAFETY: `n` bytes each, owned here.
    unsafe {
        std::ptr::write_bytes(src, me as u8 + 1, n);
        std::ptr::write_bytes(dst, 0, n);
    }
    word(me).store(src as u64, Ordering::SeqCst);
    // SAFETY: getpid cannot fail.
    word(2 + me).store(unsafe { libc::getpid() } as u64, Ordering::SeqCst);
    barrier(4, 2);
    let (from, pid) = (
        word(1 - me).load(Ordering::SeqCst),
        word(3 - me).load(Ordering::SeqCst),
    );

    let mut times = Vec::new();
    for r in 1..=rounds {
        barrier(5, 2 * r);
        let t = Instant::now();
        let mut off = 0;
        while off < n {
            let local = libc::iovec {
                // SAFETY: `off < n`.
                iov_base: unsafe { dst.add(off) }.cast(),
                iov_len: n - off,
            };
            let remote = libc::iovec {
                iov_base: (from as usize + off) as *mut libc::c_void,
                iov_len: n - off,
            };
            // SAFETY: `local` is ours; the kernel checks `remote`.
            let got = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
            assert!(
                got > 0,
                "process_vm_readv: {}",
                std::io::Error::last_os_error()
            );
            off += got as usize;
        }
        barrier(6, 2 * r);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // SAFETY: `n` bytes, copied above.
    let ok = unsafe { std::slice::from_raw_parts(dst, n) }
        .iter()
        .all(|&b| b == 2 - me as u8);
    assert!(ok, "the copy differs from the peer's bytes");
    if me == 1 {
        std::process::exit(0);
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(status, 0, "the other process failed");
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    println!(
        "{mib} MiB each way ({}): mean {mean:.2} ms, median {:.2} ms, best {:.2} ms, {:.2} GB/s per process (median)",
        if huge { "huge pages" } else { "4 KiB pages" },
        times[times.len() / 2],
        times[0],
        n as f64 / times[times.len() / 2] / 1e6,
    );
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("cma_floor: process_vm_readv is Linux only");
}
