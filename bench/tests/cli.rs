//! The `zccl-bench` command end to end: real ranks (processes) on this host.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_zccl-bench");

/// Runs the command with a hard deadline (a hang fails the test instead of blocking it).
fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("ZCCL_TIMEOUT", "30")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in [
        "ZCCL_RANK",
        "RANK",
        "SLURM_PROCID",
        "OMPI_COMM_WORLD_RANK",
        "ZCCL_BENCH_CORRUPT",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().expect("start zccl-bench");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(90);
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait"));
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            // SAFETY: kill has no memory-safety preconditions; pid is our unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("zccl-bench {args:?} did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_with(args, &[])
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The table's data lines, split into fields.
fn rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Asserts a clean run: exit 0, `rows` rows, `#wrong` 0 in both halves, the footer.
fn assert_clean(args: &[&str], n_rows: usize) {
    let o = run(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?}: {:?}\n{out}\n{err}", o.status);
    let rs = rows(&out);
    assert_eq!(rs.len(), n_rows, "{args:?}:\n{out}");
    for r in &rs {
        assert_eq!(r.len(), 13, "{args:?}: {r:?}");
        assert_eq!(
            (r[8].as_str(), r[12].as_str()),
            ("0", "0"),
            "{args:?}: {r:?}"
        );
    }
    assert!(out.contains("# Out of bounds values : 0 OK"), "{out}");
    assert!(out.contains("# Avg bus bandwidth    : "), "{out}");
    assert!(out.contains("# Bytes sent by all ranks : "), "{out}");
}

const OPS: [&[&str]; 10] = [
    &["all_reduce"],
    &["all_gather"],
    &["reduce_scatter", "-o", "max"],
    &["broadcast", "-r", "1"],
    &["alltoall"],
    &["sendrecv"],
    &["ring_shift", "--offset", "-1"],
    &["pingpong"],
    &["token_ring"],
    &["all_scan", "--cols", "16", "--blocks", "2"],
];

fn sweep_all_ops(n: &str, dtype: &str) {
    for op in OPS {
        let mut args: Vec<&str> = op.to_vec();
        args.extend([
            "-N", n, "-b", "1K", "-e", "16K", "-f", "4", "-n", "2", "-c", "1",
        ]);
        if op[0] != "all_scan" {
            args.extend(["-d", dtype]);
        }
        assert_clean(&args, 3);
    }
}

#[test]
fn two_ranks_every_op_checks_clean() {
    sweep_all_ops("2", "float");
}

#[test]
fn three_ranks_every_op_checks_clean() {
    sweep_all_ops("3", "bfloat16");
}

#[test]
fn rank_lines_and_header() {
    let o = run(&[
        "all_reduce",
        "-N",
        "2",
        "-b",
        "1K",
        "-e",
        "1K",
        "-d",
        "int64",
        "-o",
        "avg",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("# zccl-bench version "), "{out}");
    assert!(out.contains("# nRanks 2 minBytes 1024 maxBytes 1024 step: 1048576(bytes) warmup iters: 1 iters: 20 validation: 1 blocking: 0"), "{out}");
    let ranks: Vec<&str> = out.lines().filter(|l| l.starts_with("#  Rank ")).collect();
    assert_eq!(ranks.len(), 2, "{out}");
    assert!(ranks[0].starts_with("#  Rank  0 Group  0 Pid "), "{out}");
    assert!(ranks[1].starts_with("#  Rank  1 Group  0 Pid "), "{out}");
    // The two ranks are two processes.
    assert_ne!(
        ranks[0].split_whitespace().nth(6),
        ranks[1].split_whitespace().nth(6)
    );
    let r = &rows(&out)[0];
    assert_eq!(&r[..5], ["1024", "128", "int64", "avg", "-1"]);
}

#[test]
fn the_corruption_hook_gives_a_nonzero_count() {
    let o = run_with(
        &[
            "all_reduce",
            "-N",
            "2",
            "-b",
            "1K",
            "-e",
            "4K",
            "-f",
            "4",
            "-n",
            "1",
            "-c",
            "1",
        ],
        &[("ZCCL_BENCH_CORRUPT", "1")],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    let rs = rows(&out);
    assert_eq!(rs.len(), 2, "{out}");
    for r in &rs {
        assert_eq!((r[8].as_str(), r[12].as_str()), ("1", "1"), "{out}");
    }
    assert!(out.contains("# Out of bounds values : 4 FAILED"), "{out}");
    assert!(err.contains("the check found 4 wrong element(s)"), "{err}");
}

#[test]
fn without_check_wrong_is_na() {
    let o = run(&[
        "alltoall", "-N", "2", "-b", "1K", "-e", "1K", "-c", "0", "-n", "1",
    ]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    let r = &rows(&out)[0];
    assert_eq!((r[8].as_str(), r[12].as_str()), ("N/A", "N/A"), "{out}");
}

#[test]
fn json_csv_and_plot_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let (json, csv, svg) = (p("r.json"), p("r.csv"), p("r.svg"));
    let o = run(&[
        "reduce_scatter",
        "-N",
        "2",
        "-b",
        "1K",
        "-e",
        "64K",
        "-f",
        "8",
        "-n",
        "2",
        "--json",
        &json,
        "--csv",
        &csv,
        "--plot",
        &svg,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let recs = v.as_array().unwrap();
    assert_eq!(recs.len(), 6); // 3 sizes x 2 halves
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["op"], "reduce_scatter");
        assert_eq!(r["nranks"], 2);
        assert_eq!(r["type"], "float");
        assert_eq!(r["redop"], "sum");
        assert_eq!(r["root"], -1);
        assert_eq!(r["in_place"], i % 2 == 1);
        assert_eq!(r["wrong"], 0);
        assert!(r["time_us"].as_f64().unwrap() > 0.0);
        // reduce_scatter of S bytes over 2 ranks: each rank sends S/2 per
        // iteration (1 warm-up + 2 timed + 1 check), plus a barrier.
        let size = r["size"].as_u64().unwrap();
        let sent = r["bytes_sent"].as_u64().unwrap();
        assert!(sent >= 2 * 4 * (size / 2), "{r}");
        let (alg, bus) = (r["algbw"].as_f64().unwrap(), r["busbw"].as_f64().unwrap());
        assert!((bus - alg * 0.5).abs() <= 1e-12 * alg.max(1.0), "{r}");
    }
    assert_eq!(recs[0]["size"], 1024);
    assert_eq!(recs[0]["count"], 128);
    assert_eq!(recs[4]["size"], 65536);
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv_text.lines().collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(
        lines[0],
        "op,nranks,size,count,type,redop,root,in_place,time_us,algbw,busbw,wrong,bytes_sent"
    );
    for l in &lines[1..] {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 13, "{l}");
        assert_eq!(f[0], "reduce_scatter");
        assert!(f[8].parse::<f64>().unwrap() > 0.0);
        assert_eq!(f[11], "0");
        assert!(f[12].parse::<u64>().unwrap() > 0, "{l}");
    }
    assert_well_formed_svg(Path::new(&svg));
}

fn assert_well_formed_svg(path: &Path) {
    use quick_xml::Reader;
    use quick_xml::events::Event;
    let doc = std::fs::read_to_string(path).unwrap();
    let mut reader = Reader::from_str(&doc);
    let (mut root, mut polylines, mut depth) = (None, 0, 0i32);
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        {
            Event::Start(e) => {
                depth += 1;
                root.get_or_insert_with(|| String::from_utf8_lossy(e.name().as_ref()).into_owned());
            }
            Event::Empty(e) if e.name().as_ref() == b"polyline" => polylines += 1,
            Event::End(_) => depth -= 1,
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0);
    assert_eq!(root.as_deref(), Some("svg"));
    assert_eq!(polylines, 2, "out-of-place and in-place");
}

#[test]
fn bad_flags_give_clear_errors() {
    let cases: [(&[&str], &str); 6] = [
        (&["all_reduce", "-d", "quad"], "unknown data type \"quad\""),
        (
            &["all_reduce", "-d", "int8"],
            "not supported by zccl's primitives",
        ),
        (&["all_reduce", "-b", "1X"], "invalid size \"1X\""),
        (
            &["all_reduce", "-b", "64K", "-e", "1K"],
            "-e/--maxbytes (1024) is smaller than -b/--minbytes (65536)",
        ),
        (
            &["broadcast", "-N", "2", "-r", "5"],
            "-r/--root 5 is not a rank of the job",
        ),
        (&["all_scan", "-d", "double"], "-d float only"),
    ];
    for (args, msg) in cases {
        let o = run(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}\n{err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
}

#[test]
fn under_a_launcher_every_process_joins() {
    use zccl_runtime::launcher::{pick_ports, rank_env};
    let ports = pick_ports(None).unwrap();
    let secret = "ab".repeat(16);
    let children: Vec<_> = (0..2u32)
        .map(|r| {
            let env: Vec<(String, String)> = rank_env(r, 2, ports, &secret)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                // -N 2 matches the job; each process is one rank.
                run_with(
                    &["sendrecv", "-N", "2", "-b", "4K", "-e", "4K", "-n", "2"],
                    &env,
                )
            })
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|h| h.join().unwrap()).collect();
    let (out0, err0) = text(&outs[0]);
    let (out1, err1) = text(&outs[1]);
    assert!(
        outs[0].status.success() && outs[1].status.success(),
        "{err0}\n{err1}"
    );
    assert_eq!(rows(&out0).len(), 1, "{out0}");
    assert_eq!(out0.matches("#  Rank ").count(), 2);
    assert!(out1.is_empty(), "only rank 0 prints: {out1}");
}

#[test]
fn an_unknown_operation_lists_the_operations() {
    let o = run(&["foo", "-N", "2"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err,
        "zccl-bench: error: unknown operation \"foo\"; the operations are all_reduce, all_gather, \
         reduce_scatter, broadcast, alltoall, sendrecv, ring_shift, pingpong, token_ring, all_scan, and route \
         (the router benchmark)\n"
    );
}

#[test]
fn n_is_capped() {
    let o = run(&["all_reduce", "-N", "65", "-b", "1K", "-e", "1K"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(
            "zccl-bench: error: -N/--ranks 65: at most 64 ranks can be started on one host"
        ),
        "{err}"
    );
}

/// Every rank fails at once (no such NIC) and each writes its error: the
/// lines come out whole, never mixed mid-line, and the command's name is
/// `zccl-bench`.
#[test]
fn errors_of_ranks_are_whole_lines() {
    let want = "zccl-bench: error: cannot join the job: ZCCL_SOCKET_IFNAME=\"zccl-no-such-nic0\": \
                no usable interface matches \"zccl-no-such-nic0\"";
    for _ in 0..3 {
        let o = run_with(
            &["all_reduce", "-N", "6", "-b", "1K", "-e", "1K"],
            &[("ZCCL_SOCKET_IFNAME", "zccl-no-such-nic0")],
        );
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 7, "{err}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(want)).count(),
            6,
            "{err}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains(want)).count(),
            6,
            "{err}"
        );
        let first: Vec<&&str> = lines
            .iter()
            .filter(|l| {
                l.starts_with("zccl-bench: rank ")
                    && l.ends_with(" exited with code 1: the first rank to fail")
            })
            .collect();
        assert_eq!(first.len(), 1, "{err}");
    }
}

/// A file that cannot be written: the OS error is shown once.
#[test]
fn an_os_error_is_shown_once() {
    // One 1 KiB all_reduce, writing to `files`.
    let one = |files: &[&str]| {
        let mut args = vec!["all_reduce", "-b", "1K", "-e", "1K", "-n", "1"];
        args.extend_from_slice(files);
        run(&args)
    };
    let o = one(&["--json", "/nonexistent/zccl/x.json"]);
    let (out, err) = text(&o);
    // Refused before the sweep (an argument error), not after it.
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(rows(&out).is_empty(), "{out}");
    assert!(
        err.contains("zccl-bench: error: cannot write the JSON file /nonexistent/zccl/x.json: "),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // Every output path is checked; an existing file is not truncated by
    // the check.
    let dir = std::env::temp_dir().join(format!("zccl-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kept = dir.join("kept.csv");
    std::fs::write(&kept, "old\n").unwrap();
    let o = one(&[
        "--csv",
        kept.to_str().unwrap(),
        "--plot",
        "/nonexistent/zccl/x.svg",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        rows(&out).is_empty() && err.contains("cannot write the plot file"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "old\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kill -9` of one rank of a running `-N` job: that rank is the first to
/// fail (its peers notice and exit after it), and its code is the job's.
#[test]
fn a_killed_rank_is_named_not_the_peers_that_noticed() {
    use std::io::{BufRead, BufReader, Read};
    for _ in 0..3 {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "all_reduce",
            "-N",
            "4",
            "-b",
            "1K",
            "-e",
            "1K",
            "-n",
            "100000000",
            "-c",
            "0",
        ])
        .env("ZCCL_TIMEOUT", "30")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for k in ["ZCCL_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"] {
            cmd.env_remove(k);
        }
        let mut child = cmd.spawn().expect("start zccl-bench");
        let pid = child.id() as i32;
        let mut stderr = child.stderr.take().unwrap();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        // Rank 0 prints every rank's pid before it measures.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut rank2 = None;
        while rank2.is_none() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                // SAFETY: kill has no memory-safety preconditions; pid is our unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the ranks did not start");
            };
            if let Some(rest) = line.strip_prefix("#  Rank  2 Group  0 Pid ") {
                rank2 = rest
                    .split_whitespace()
                    .next()
                    .map(|p| p.parse::<i32>().unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above; rank 2 is a child of our child, alive (the job runs).
        unsafe { libc::kill(rank2.unwrap(), libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("zccl-bench did not end after a rank was killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = err.join().unwrap();
        assert_eq!(status.code(), Some(137), "{err}");
        let first: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("the first rank to fail"))
            .collect();
        assert_eq!(
            first,
            ["zccl-bench: rank 2 was killed by signal 9 (SIGKILL): the first rank to fail"],
            "{err}"
        );
    }
}
