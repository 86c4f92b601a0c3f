//! `zccl run` end to end: the real binary launching real processes.
//!
//! Every wait has a deadline; a launcher that overruns it is killed (its
//! ranks die with it) and the test fails instead of hanging. The `worker`
//! test is a rank program: under `zccl run` (with `ZCCL_RUN_TEST_WORKER` set)
//! it joins a real communicator; run directly it does nothing.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zccl::runtime::Communicator;

/// Deadline of any one launcher run: a bound on a hang, not a benchmark.
const LIMIT: Duration = Duration::from_secs(20);

fn zccl_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zccl"));
    cmd.args(args)
        .env_remove("ZCCL_DEBUG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Waits for `child` until `LIMIT`; kills it and panics past it.
fn wait_bounded(child: &mut Child, what: &str) -> (ExitStatus, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return (s, t0.elapsed());
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: zccl run did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = zccl_cmd(args);
    cmd.envs(envs.iter().copied());
    run_cmd(cmd, &format!("{args:?}"))
}

/// Runs `cmd` (stdout and stderr piped) to its end, within `LIMIT`.
fn run_cmd(mut cmd: Command, what: &str) -> Run {
    let mut child = cmd.spawn().expect("start zccl");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let (status, elapsed) = wait_bounded(&mut child, what);
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed,
    }
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// `pid N` lines a rank printed.
fn pids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter_map(|l| l.split_once("] pid ")?.1.trim().parse().ok())
        .collect()
}

fn assert_gone(pids: &[u32]) {
    let t0 = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "rank processes left running: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ranks_get_their_variables_and_tagged_output() {
    let r = run(
        &[
            "run",
            "-n",
            "3",
            "--",
            "sh",
            "-c",
            "echo rank $RANK of $WORLD_SIZE local $LOCAL_RANK/$LOCAL_WORLD_SIZE zccl $ZCCL_RANK/$ZCCL_WORLD_SIZE; \
             echo to stderr $ZCCL_RANK >&2; printf 'no newline'",
        ],
        &[],
    );
    assert!(r.status.success(), "{}\n{}", r.status, r.stderr);
    for rank in 0..3 {
        let want = format!("[{rank}] rank {rank} of 3 local {rank}/3 zccl {rank}/3");
        assert!(
            r.stdout.lines().any(|l| l == want),
            "missing {want:?} in\n{}",
            r.stdout
        );
        assert!(
            r.stdout
                .lines()
                .any(|l| l == format!("[{rank}] no newline")),
            "{}",
            r.stdout
        );
        assert!(
            r.stderr
                .lines()
                .any(|l| l == format!("[{rank}] to stderr {rank}")),
            "{}",
            r.stderr
        );
    }
    assert_eq!(r.stdout.lines().count(), 6, "{}", r.stdout);
}

#[test]
fn root_address_secret_and_ports_are_shared() {
    let r = run(
        &[
            "run",
            "-n",
            "2",
            "sh",
            "-c",
            "echo $ZCCL_ROOT_ADDR $ZCCL_JOB_SECRET $MASTER_ADDR $MASTER_PORT",
        ],
        &[("ZCCL_UNIQUE_ID", "stale"), ("ZCCL_ROOT_PORT", "1")],
    );
    assert!(r.status.success(), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().map(|l| &l[4..]).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], lines[1], "ranks must agree: {lines:?}");
    let f: Vec<&str> = lines[0].split(' ').collect();
    let master: u16 = f[3].parse().unwrap();
    assert_eq!(f[0], format!("127.0.0.1:{}", master + 1));
    assert_eq!(f[1].len(), 32);
    assert_eq!(f[2], "127.0.0.1");
    let again = run(
        &["run", "-n", "1", "sh", "-c", "echo $ZCCL_JOB_SECRET"],
        &[],
    );
    assert_ne!(
        again.stdout[4..].trim(),
        f[1],
        "the secret must be fresh per job"
    );
    let removed = run(
        &[
            "run",
            "-n",
            "1",
            "sh",
            "-c",
            "echo \"${ZCCL_UNIQUE_ID-unset} ${ZCCL_ROOT_PORT-unset}\"",
        ],
        &[("ZCCL_UNIQUE_ID", "stale"), ("ZCCL_ROOT_PORT", "1")],
    );
    assert_eq!(removed.stdout, "[0] unset unset\n");
}

#[test]
fn lines_of_concurrent_ranks_never_interleave() {
    let filler = "x".repeat(300);
    let script =
        format!("i=0; while [ $i -lt 300 ]; do echo \"$RANK:$i:{filler}\"; i=$((i+1)); done");
    let r = run(&["run", "-n", "4", "sh", "-c", &script], &[]);
    assert!(r.status.success(), "{}", r.stderr);
    let mut count = [0usize; 4];
    for line in r.stdout.lines() {
        let (tag, rest) = line.split_once(' ').expect("tagged line");
        let rank: usize = tag.trim_matches(['[', ']']).parse().expect("rank tag");
        let mut f = rest.splitn(3, ':');
        assert_eq!(
            f.next(),
            Some(rank.to_string().as_str()),
            "mixed line {line:?}"
        );
        assert_eq!(
            f.next(),
            Some(count[rank].to_string().as_str()),
            "order {line:?}"
        );
        assert_eq!(f.next(), Some(filler.as_str()), "torn line {line:?}");
        count[rank] += 1;
    }
    assert_eq!(count, [300; 4]);
}

#[test]
fn a_failing_rank_stops_the_job_with_its_exit_code() {
    let r = run(
        &[
            "run",
            "-n",
            "3",
            "--",
            "sh",
            "-c",
            "if [ $RANK = 1 ]; then sleep 0.3; echo failing; exit 3; fi; echo pid $$; exec sleep 30",
        ],
        &[],
    );
    assert_eq!(r.status.code(), Some(3), "{}\n{}", r.stdout, r.stderr);
    assert!(r.elapsed < Duration::from_secs(15), "took {:?}", r.elapsed);
    assert!(
        r.stderr.contains("rank 1") && r.stderr.contains("exited with code 3"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("[1] failing"), "{}", r.stdout);
    let p = pids(&r.stdout);
    assert_eq!(p.len(), 2, "{}", r.stdout);
    assert_gone(&p);
}

#[test]
fn a_rank_killed_by_a_signal_gives_128_plus_signal() {
    let r = run(
        &[
            "run",
            "-n",
            "2",
            "--grace",
            "1",
            "sh",
            "-c",
            "[ $RANK = 0 ] && kill -KILL $$; exec sleep 30",
        ],
        &[],
    );
    assert_eq!(r.status.code(), Some(137), "{}", r.stderr);
    assert!(
        r.stderr.contains("rank 0") && r.stderr.contains("SIGKILL"),
        "{}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(15), "took {:?}", r.elapsed);
}

#[test]
fn sigterm_to_the_launcher_ends_every_rank() {
    let mut child = zccl_cmd(&[
        "run",
        "-n",
        "2",
        "--",
        "sh",
        "-c",
        "echo pid $$; exec sleep 30",
    ])
    .spawn()
    .expect("start zccl");
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let err = collect(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    while pids(&lines.join("\n")).len() < 2 {
        match rx.recv_timeout(LIMIT) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("ranks did not start: {lines:?}");
            }
        }
    }
    let p = pids(&lines.join("\n"));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let (status, elapsed) = wait_bounded(&mut child, "SIGTERM");
    let stderr = err.join().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_gone(&p);
}

#[test]
fn a_missing_command_is_127_and_named() {
    let r = run(
        &["run", "-n", "2", "--", "zccl-no-such-program", "arg"],
        &[],
    );
    assert_eq!(r.status.code(), Some(127));
    assert!(r.stderr.contains("zccl-no-such-program"), "{}", r.stderr);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
}

#[test]
fn ranks_with_another_zccl_algo_fail_at_init_naming_it() {
    // Rank 0 runs the ring, the others recursive doubling: their
    // schedules would never meet (the timeout then blamed a stalled rank).
    let bin = env!("CARGO_BIN_EXE_zccl");
    let script = format!(
        "if [ \"$ZCCL_RANK\" = 0 ]; then export ZCCL_ALGO=ring; else export ZCCL_ALGO=tree; fi; \
         exec {bin} bench all_reduce -b 8K -e 8K -n 2 -w 0"
    );
    let t0 = std::time::Instant::now();
    let r = run(&["run", "-n", "3", "--", "sh", "-c", &script], &[]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    let want = "ZCCL_ALGO differs between ranks: rank 0 \"ring\", ranks 1-2 \"tree\"";
    assert_eq!(r.stderr.matches(want).count(), 3, "{}", r.stderr);
}

#[test]
fn a_directory_or_a_script_without_its_interpreter_is_126_and_said_so() {
    let dir = std::env::temp_dir().join(format!("zccl-run-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = run(&["run", "-n", "2", "--", dir.to_str().unwrap()], &[]);
    assert_eq!(r.status.code(), Some(126), "{}", r.stderr);
    assert!(r.stderr.contains("is a directory"), "{}", r.stderr);
    let script = dir.join("bad-interpreter.sh");
    std::fs::write(&script, "#!/nonexistent/zccl-interpreter\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = run(&["run", "-n", "1", "--", script.to_str().unwrap()], &[]);
    assert_eq!(r.status.code(), Some(126), "{}", r.stderr);
    assert!(r.stderr.contains("bad interpreter"), "{}", r.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The CPUs each rank of `zccl run -n n [extra] -- ...` may use, by rank,
/// as `/proc/self/status` lists them; the launcher itself runs under
/// `taskset -c cpus` when given.
fn rank_cpus(n: usize, extra: &[&str], cpus: Option<&str>, envs: &[(&str, &str)]) -> Vec<String> {
    let nn = n.to_string();
    let mut args = vec!["run", "-n", nn.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", "grep Cpus_allowed_list /proc/self/status"]);
    let r = match cpus {
        None => run(&args, envs),
        Some(c) => {
            // Through taskset: the launcher's own mask is `c`.
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c, env!("CARGO_BIN_EXE_zccl")])
                .args(&args)
                .envs(envs.iter().copied())
                .env_remove("ZCCL_DEBUG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            run_cmd(cmd, "taskset zccl run")
        }
    };
    assert!(r.status.success(), "{}\n{}", r.status, r.stderr);
    (0..n)
        .map(|rank| {
            let prefix = format!("[{rank}] Cpus_allowed_list:");
            r.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no line of rank {rank} in\n{}", r.stdout))
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn ranks_are_bound_only_when_asked() {
    use zccl::runtime::binding::{cores, sysfs_core};
    let cpus = zccl::runtime::binding::allowed_cpus();
    if cpus.len() < 2 {
        eprintln!(
            "SKIP: this process may use {} CPU(s); binding needs 2",
            cpus.len()
        );
        return;
    }
    let mine = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|s| s.trim().to_string())
        })
        .unwrap();
    // By default (as torchrun) and with none: the launcher's own mask.
    assert_eq!(
        rank_cpus(2, &[], None, &[]),
        vec![mine.clone(), mine.clone()]
    );
    assert_eq!(
        rank_cpus(2, &["--bind-to", "none"], None, &[]),
        vec![mine.clone(), mine.clone()]
    );
    // Two ranks on two CPUs, bound (flag or variable): a core each, so
    // different CPUs when the two are cores of their own (not two hardware
    // threads of one core, which cannot give each rank a core).
    let pair = format!("{},{}", cpus[0], cpus[1]);
    if cores(&cpus[..2], sysfs_core).len() == 2 {
        for (extra, envs) in [
            (&["--bind-to", "core"][..], &[][..]),
            (&["--bind-to", "auto"][..], &[][..]),
            (&[][..], &[("ZCCL_BIND_TO", "core")][..]),
        ] {
            let two = rank_cpus(2, extra, Some(&pair), envs);
            assert_ne!(two[0], two[1], "{extra:?} {envs:?}: {two:?}");
        }
    } else {
        eprintln!("SKIP (part): CPUs {pair} are threads of one core");
    }
    // More ranks than CPUs (oversubscribed): left to the scheduler.
    let c0 = cpus[0].to_string();
    assert_eq!(
        rank_cpus(2, &["--bind-to", "core"], Some(&c0), &[]),
        vec![c0.clone(), c0.clone()]
    );
    let bad = run(&["run", "-n", "1", "--bind-to", "socket", "true"], &[]);
    assert_eq!(bad.status.code(), Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("auto, core or none"), "{}", bad.stderr);
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["run", "-n", "0", "true"][..],
        &["run", "-n", "2"],
        &["run", "true"],
        &["run", "-n", "x", "true"],
    ] {
        let r = run(args, &[]);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("error:"), "{}", r.stderr);
    }
}

/// A real 3-rank job: `Communicator::from_env()` under `zccl run`, ring shift.
#[test]
fn a_real_zccl_job_runs_under_zccl_run() {
    let exe = std::env::current_exe().unwrap();
    let r = run(
        &[
            "run",
            "-n",
            "3",
            "--",
            exe.to_str().unwrap(),
            "--exact",
            "worker",
            "--nocapture",
            "--test-threads=1",
        ],
        &[
            ("ZCCL_RUN_TEST_WORKER", "1"),
            ("ZCCL_SOCKET_IFNAME", "lo"),
            ("ZCCL_NTHREADS", "1"),
            ("ZCCL_TIMEOUT", "15"),
        ],
    );
    assert!(
        r.status.success(),
        "{}\n{}\n{}",
        r.status,
        r.stdout,
        r.stderr
    );
    for rank in 0..3 {
        // libtest prints `test worker ... ` before the worker's own line.
        let want = format!("ring OK rank {rank} of 3 got {}", (rank + 2) % 3);
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with(&format!("[{rank}] ")) && l.ends_with(&want)),
            "missing {want:?} from rank {rank} in\n{}",
            r.stdout
        );
    }
}

#[test]
fn worker() {
    if std::env::var_os("ZCCL_RUN_TEST_WORKER").is_none() {
        return;
    }
    let comm = Communicator::from_env().expect("communicator from zccl run's variables");
    let (r, n) = (comm.rank(), comm.size());
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let sent = comm.isend(right, vec![r as i32; 16]).unwrap();
    let got = comm
        .irecv::<i32>(left, 16)
        .unwrap()
        .wait()
        .unwrap()
        .into_vec();
    sent.wait().unwrap();
    assert_eq!(got, vec![left as i32; 16]);
    println!("ring OK rank {r} of {n} got {left}");
}

#[test]
fn ranks_get_huge_pages_for_their_heap_unless_told_otherwise() {
    // What each rank is given.
    let tunables = |envs: &[(&str, &str)]| {
        let mut cmd = zccl_cmd(&[
            "run",
            "-n",
            "2",
            "--",
            "sh",
            "-c",
            "echo \"[$GLIBC_TUNABLES]\"",
        ]);
        cmd.env_remove("GLIBC_TUNABLES")
            .env_remove("ZCCL_MALLOC_TUNE")
            .envs(envs.iter().copied());
        let r = run_cmd(cmd, "tunables");
        assert!(r.status.success(), "{}", r.stderr);
        let mut lines: Vec<String> = r.stdout.lines().map(|l| l[4..].to_string()).collect();
        lines.dedup();
        assert_eq!(lines.len(), 1, "every rank alike: {}", r.stdout);
        lines.remove(0)
    };
    assert_eq!(tunables(&[]), "[glibc.malloc.hugetlb=1]");
    assert_eq!(
        tunables(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")]),
        "[glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1]"
    );
    assert_eq!(
        tunables(&[("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")]),
        "[glibc.malloc.hugetlb=0]"
    );
    assert_eq!(tunables(&[("ZCCL_MALLOC_TUNE", "0")]), "[]");
    // What it does: tests/heap_pages.rs.
}

/// The one line that names the first rank to fail.
fn first_failure(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the first rank to fail"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0]
}

/// The failure that came first is reported, with its code, though the
/// launcher then kills lower-numbered ranks.
#[test]
fn the_first_failure_is_the_earliest_not_the_lowest_rank() {
    let r = run(
        &[
            "run",
            "-n",
            "4",
            "--grace",
            "0.5",
            "--",
            "sh",
            "-c",
            "if [ $RANK = 2 ]; then sleep 0.3; exit 3; fi; echo pid $$; exec sleep 30",
        ],
        &[],
    );
    assert_eq!(r.status.code(), Some(3), "{}\n{}", r.stdout, r.stderr);
    let line = first_failure(&r.stderr);
    assert!(
        line.starts_with("zccl run: rank 2 (pid ") && line.contains(") exited with code 3: "),
        "{}",
        r.stderr
    );
    let p = pids(&r.stdout);
    assert_eq!(p.len(), 3, "{}", r.stdout);
    assert_gone(&p);
}

/// Two ranks fail 50 ms apart, the higher rank first (the lower one is
/// killed, a third exits 1): the higher rank and its code win, though
/// all three may have ended by the time the launcher looks.
#[test]
fn of_two_close_failures_the_earlier_wins() {
    let r = run(
        &[
            "run",
            "-n",
            "4",
            "--grace",
            "0.5",
            "--",
            "sh",
            "-c",
            "case $RANK in \
               3) sleep 0.3; exit 3;; \
               0) sleep 0.35; exit 1;; \
               1) sleep 0.35; kill -KILL $$;; \
             esac; echo pid $$; exec sleep 30",
        ],
        &[],
    );
    assert_eq!(r.status.code(), Some(3), "{}\n{}", r.stdout, r.stderr);
    let line = first_failure(&r.stderr);
    assert!(
        line.starts_with("zccl run: rank 3 (pid ") && line.contains(") exited with code 3: "),
        "{}",
        r.stderr
    );
    let p = pids(&r.stdout);
    assert_eq!(p.len(), 1, "{}", r.stdout);
    assert_gone(&p);
}

/// `zccl`'s error line shows an OS error once, not once per error in the
/// chain that displays it.
#[test]
fn an_os_error_is_shown_once() {
    let r = run(&["topo", "--topo-file", "/nonexistent/zccl-topo.xml"], &[]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.starts_with("zccl: error: "), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr
    );
}

/// Under `zccl bench` the bench's messages say `zccl bench:` (never
/// `zccl-bench:`), its launcher's and its ranks' too; an unknown operation
/// lists the operations.
#[test]
fn zccl_bench_messages_say_zccl_bench() {
    let r = run(&["bench", "foo"], &[]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.starts_with(
            "zccl bench: error: unknown operation \"foo\"; the operations are all_reduce, all_gather, \
             reduce_scatter, broadcast, alltoall, sendrecv, ring_shift, pingpong, token_ring, all_scan, and route"
        ),
        "{}",
        r.stderr
    );
    let r = run(&["bench", "all_reduce", "-b", "64K", "-e", "1K"], &[]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.starts_with("zccl bench: error: -e"),
        "{}",
        r.stderr
    );
    let r = run(&["bench", "all_reduce", "-N", "65"], &[]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("zccl bench: error: -N/--ranks 65: at most 64 ranks"),
        "{}",
        r.stderr
    );
    // Two ranks that cannot join: their errors and the launcher's line.
    let r = run(
        &["bench", "all_reduce", "-N", "2", "-b", "1K", "-e", "1K"],
        &[("ZCCL_SOCKET_IFNAME", "zccl-no-such-nic0")],
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stderr);
    for l in &lines {
        assert!(l.starts_with("zccl bench: "), "{}", r.stderr);
    }
    assert!(!r.stderr.contains("zccl-bench"), "{}", r.stderr);
}
