//! `zccl topo` end to end: the binary on this machine, on the real machines'
//! topology files and sysfs dumps in `../shared/fixtures/topologies/` (checked
//! against their ground truth), on fake sysfs trees, and on bad input.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn zccl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zccl"))
        .args(args)
        .env_remove("ZCCL_TOPO_FILE")
        .env_remove("ZCCL_SYSFS_ROOT")
        .env_remove("ZCCL_TOPO_DUMP_FILE")
        .env_remove("ZCCL_TOPO_MAX_BYTES")
        .output()
        .expect("run zccl")
}

fn ok_stdout(args: &[&str]) -> String {
    let out = zccl(args);
    assert!(
        out.status.success(),
        "zccl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok_stdout(args)).expect("valid JSON")
}

/// The shared fixtures, or None (with a message) on a checkout without them.
fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/topologies");
    if dir.join("ground_truth.json").exists() {
        Some(dir)
    } else {
        zccl_testbed::skip("../shared/fixtures/topologies not present");
        None
    }
}

fn ground_truth(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("ground_truth.json")).unwrap()).unwrap()
}

/// Extract one of the hwloc sysfs dumps and probe it with
/// `zccl topo --format json`; returns its ground truth, the temp dir (keep it
/// alive), the sysfs root inside it, and the JSON report.
fn hwloc_dump(dir: &Path, tarball: &str) -> (Value, tempfile::TempDir, PathBuf, Value) {
    let facts = ground_truth(dir)[tarball].clone();
    let tmp = tempfile::tempdir().unwrap();
    let file = std::fs::File::open(dir.join(tarball)).unwrap();
    let mut ar = tar::Archive::new(bzip2::read::BzDecoder::new(file));
    ar.set_preserve_permissions(false);
    ar.unpack(tmp.path()).unwrap();
    let root = tmp.path().join(facts["root_dir"].as_str().unwrap());
    let report = json(&[
        "topo",
        "--sysfs-root",
        root.to_str().unwrap(),
        "--format",
        "json",
    ]);
    (facts, tmp, root, report)
}

#[test]
fn live_probe_lists_every_interface_and_says_when_no_gpu() {
    let text = ok_stdout(&["topo"]);
    let mut ifaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ifaces.retain(|i| i != "lo");
    for i in &ifaces {
        assert!(
            text.contains(i.as_str()),
            "interface {i} missing from:\n{text}"
        );
    }
    let report = json(&["topo", "--format", "json"]);
    if report["gpus"].as_array().unwrap().is_empty() {
        assert!(text.contains("No GPU found"), "{text}");
    }
    assert_eq!(report["source"], "sysfs:/");
}

#[test]
fn xml_fixtures_match_ground_truth() {
    let Some(dir) = fixtures() else { return };
    let truth = ground_truth(&dir);
    let mut checked = 0;
    for (file, facts) in truth.as_object().unwrap() {
        if facts.get("format").and_then(Value::as_str) != Some("nccl-topo-xml") {
            continue;
        }
        let path = dir.join(file);
        let report = json(&[
            "topo",
            "--topo-file",
            path.to_str().unwrap(),
            "--format",
            "json",
        ]);
        let gpus = report["gpus"].as_array().unwrap();
        let want = facts["gpus"].as_array().unwrap();
        assert_eq!(gpus.len(), want.len(), "{file}: GPU count");
        for w in want {
            let busid = w["gpu_busid"].as_str().unwrap();
            let g = gpus
                .iter()
                .find(|g| g["busid"] == busid)
                .unwrap_or_else(|| panic!("{file}: GPU {busid} not found"));
            assert_eq!(g["dev"], w["dev"], "{file} {busid}: dev");
            assert_eq!(g["numa"], w["numa"], "{file} {busid}: numa");
            let closest: BTreeSet<&str> = g["closest_nics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let want_closest: BTreeSet<&str> = w["closest_nets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(closest, want_closest, "{file} {busid}: closest NICs");
            assert_eq!(
                g["primary_nic"], w["nccl_ch0_net"],
                "{file} {busid}: primary NIC"
            );
            let nics = g["nics"].as_array().unwrap();
            let all = w["all_nets"].as_object().unwrap();
            assert_eq!(nics.len(), all.len(), "{file} {busid}: NIC count");
            for (net, ptype) in all {
                let n = nics
                    .iter()
                    .find(|n| n["name"] == net.as_str())
                    .unwrap_or_else(|| panic!("{file} {busid}: NIC {net} missing"));
                assert_eq!(&n["path"], ptype, "{file} {busid} -> {net}: path type");
            }
            let best = nics.iter().find(|n| n["name"] == g["primary_nic"]).unwrap();
            let gbytes = best["bw_gbps"].as_f64().unwrap() / 8.0;
            let want_bw = w["nccl_path_bw_GBps"].as_f64().unwrap();
            assert!(
                (gbytes - want_bw).abs() < 1e-6,
                "{file} {busid}: bandwidth {gbytes} GB/s, want {want_bw}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 28, "only {checked} GPUs checked");
}

#[test]
fn hwloc_nec_dump_accelerators_are_pix_to_their_own_hca() {
    let Some(dir) = fixtures() else { return };
    let (facts, _tmp, _root, report) = hwloc_dump(&dir, "hwloc-sysfs-nec-ve-8acc-2ib.tar.bz2");
    let facts = &facts;
    let hcas = ["0000:1a:00.0", "0000:3e:00.0"];
    let nics = report["nics"].as_array().unwrap();
    for h in hcas {
        assert!(nics.iter().any(|n| n["busid"] == h), "HCA {h} not found");
    }
    let gpus = report["gpus"].as_array().unwrap();
    let want = facts["accelerators"].as_array().unwrap();
    assert_eq!(gpus.len(), want.len());
    for w in want {
        let g = gpus
            .iter()
            .find(|g| g["busid"] == w["bdf"])
            .expect("accelerator found");
        assert_eq!(g["class"], "accelerator");
        assert_eq!(g["name"], w["name"]);
        let own = w["closest_nics"][0].as_str().unwrap();
        let other = hcas.iter().find(|h| **h != own).unwrap();
        let by_busid = |b: &str| {
            g["nics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["busid"] == b)
                .cloned()
                .unwrap()
        };
        assert_eq!(by_busid(own)["path"], "PIX", "{}", w["name"]);
        assert_eq!(by_busid(own)["smi"], "PIX");
        assert_eq!(
            by_busid(other)["path"],
            facts["other_switch_nic"]["nccl_path_type"]
        );
        assert_eq!(
            by_busid(other)["smi"],
            facts["other_switch_nic"]["nvidia_smi_style"]
        );
        let primary = nics.iter().find(|n| n["name"] == g["primary_nic"]).unwrap();
        assert_eq!(primary["busid"], own, "{}: primary NIC", w["name"]);
    }
}

#[test]
fn hwloc_mlx4_dump_reads_the_ib_port() {
    let Some(dir) = fixtures() else { return };
    let (facts, _tmp, root, report) = hwloc_dump(&dir, "hwloc-sysfs-mic-mlx4.tar.bz2");
    let facts = &facts;
    let rdma = &facts["rdma"][0];
    let nic = report["nics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == rdma["ibdev"])
        .expect("mlx4_0 listed")
        .clone();
    assert_eq!(nic["kind"], "ib");
    assert_eq!(nic["busid"], rdma["bdf"]);
    assert_eq!(nic["numa"], rdma["numa"]);
    assert_eq!(nic["port"], rdma["port"]);
    assert_eq!(
        nic["speed_mbps"].as_u64(),
        Some(rdma["rate_gbps"].as_u64().unwrap() * 1000)
    );
    assert_eq!(nic["link_layer"], rdma["link_layer"]);
    assert_eq!(nic["state"], "up");
    assert_eq!(nic["netdev"], rdma["netdev"]);
    let acc = &facts["accelerators"][0];
    let g = &report["gpus"][0];
    assert_eq!(g["busid"], acc["bdf"]);
    assert_eq!(g["primary_nic"], rdma["ibdev"]);
    assert_eq!(g["nics"][0]["path"], acc["nccl_path_type"]);
    let text = ok_stdout(&["topo", "--sysfs-root", root.to_str().unwrap()]);
    assert!(
        text.contains("56 Gb/s") && text.contains("InfiniBand"),
        "{text}"
    );
}

#[test]
fn fake_dgx_probes_and_round_trips_through_xml() {
    let tmp = tempfile::tempdir().unwrap();
    zccl::topology::fake::FakeHost::dgx_h100_like()
        .write(tmp.path())
        .unwrap();
    let root = tmp.path().to_str().unwrap();
    let probed = json(&["topo", "--sysfs-root", root, "--format", "json"]);
    let gpus = probed["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 8);
    let primaries: BTreeSet<&str> = gpus
        .iter()
        .map(|g| g["primary_nic"].as_str().unwrap())
        .collect();
    assert_eq!(
        primaries.len(),
        8,
        "each GPU gets its own NIC: {primaries:?}"
    );
    for g in gpus {
        assert_eq!(g["nics"][0]["path"], "PIX");
        assert_eq!(g["closest_nics"].as_array().unwrap().len(), 2);
    }

    // Export with --format xml and with ZCCL_TOPO_DUMP_FILE; both read back the same.
    let xml_text = ok_stdout(&["topo", "--sysfs-root", root, "--format", "xml"]);
    let exported = tmp.path().join("exported.xml");
    std::fs::write(&exported, &xml_text).unwrap();
    let dump = tmp.path().join("dump.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_zccl"))
        .args(["topo", "--sysfs-root", root, "--format", "json"])
        .env("ZCCL_TOPO_DUMP_FILE", &dump)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&dump).unwrap(), xml_text);
    let back = json(&[
        "topo",
        "--topo-file",
        exported.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let strip = |r: &Value| -> Vec<Value> {
        r["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let nics: Vec<Value> = g["nics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| serde_json::json!([n["name"], n["path"], n["bw_gbps"], n["via"]]))
                    .collect();
                serde_json::json!([
                    g["dev"],
                    g["busid"],
                    g["numa"],
                    g["primary_nic"],
                    g["closest_nics"],
                    nics
                ])
            })
            .collect()
    };
    assert_eq!(strip(&probed), strip(&back));
    let again = ok_stdout(&[
        "topo",
        "--topo-file",
        exported.to_str().unwrap(),
        "--format",
        "xml",
    ]);
    assert_eq!(again, xml_text, "export of an import is identical");
}

#[test]
fn explain_gives_one_reason_line_per_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    zccl::topology::fake::FakeHost::dgx_h100_like()
        .write(tmp.path())
        .unwrap();
    let text = ok_stdout(&[
        "topo",
        "--sysfs-root",
        tmp.path().to_str().unwrap(),
        "--explain",
    ]);
    let reasons: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("GPU 0000:"))
        .collect();
    assert_eq!(reasons.len(), 8, "{text}");
    for r in reasons {
        assert!(r.contains(": PIX via switch "), "{r}");
        assert!(r.contains("Gb/s"), "{r}");
    }
    assert!(text.contains("NIC Legend"));
}

fn failing(args: &[&str]) -> String {
    let out = zccl(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "zccl {args:?} must fail cleanly (no panic)"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-root");
    let err = failing(&["topo", "--sysfs-root", missing.to_str().unwrap()]);
    assert!(err.contains("no-such-root"), "{err}");

    let bad = tmp.path().join("bad.xml");
    std::fs::write(&bad, "<system version=\"1\">\n  <cpu numaid=\"0\">\n    <pci class=\"0x030200\"/>\n  </cpu>\n</system>\n").unwrap();
    let err = failing(&["topo", "--topo-file", bad.to_str().unwrap()]);
    assert!(
        err.contains("bad.xml:3") && err.contains("<pci>") && err.contains("busid"),
        "{err}"
    );

    std::fs::write(&bad, "<system version=\"1\"><cpu numaid=\"0\"></system>").unwrap();
    let err = failing(&["topo", "--topo-file", bad.to_str().unwrap()]);
    assert!(err.contains("bad.xml"), "{err}");

    let err = failing(&[
        "topo",
        "--topo-file",
        tmp.path().join("absent.xml").to_str().unwrap(),
    ]);
    assert!(err.contains("absent.xml"), "{err}");

    let mut host = zccl::topology::fake::FakeHost::dgx_h100_like();
    host.sockets[1].numa_file = Some("one".into());
    let sys = tmp.path().join("badnuma");
    host.write(&sys).unwrap();
    let err = failing(&["topo", "--sysfs-root", sys.to_str().unwrap()]);
    assert!(
        err.contains("numa_node") && err.contains("\"one\""),
        "{err}"
    );
}

/// `zccl topo ARGS` with extra environment, killed (and the test failed)
/// if it runs longer than `limit`. Returns its output and how long it ran.
fn zccl_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zccl"))
        .args(args)
        .env_remove("ZCCL_TOPO_FILE")
        .env_remove("ZCCL_SYSFS_ROOT")
        .env_remove("ZCCL_TOPO_DUMP_FILE")
        .env_remove("ZCCL_TOPO_MAX_BYTES")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run zccl");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("zccl {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, elapsed)
}

/// Peak resident memory (VmHWM) of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a live process has used so far: fields 14 and
/// 15 of /proc/PID/stat, in clock ticks of 1/100 s (Linux's USER_HZ).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// What [`zccl_measured`] found.
struct Measured {
    output: Output,
    /// Peak resident memory, MiB.
    peak_mib: f64,
    /// CPU time used to build the output (the machine may be busy with
    /// other work: wall time says little there).
    cpu: Duration,
    wall: Duration,
}

/// Run `zccl ARGS`, whose output is larger than a pipe holds, and measure
/// it: the command builds its whole output before printing it, so once the
/// first byte arrives its peak memory and its work are behind it, and it is
/// still alive, blocked on the full pipe, when /proc is read.
fn zccl_measured(args: &[&str]) -> Measured {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zccl"))
        .args(args)
        .env_remove("ZCCL_TOPO_FILE")
        .env_remove("ZCCL_SYSFS_ROOT")
        .env_remove("ZCCL_TOPO_DUMP_FILE")
        .env_remove("ZCCL_TOPO_MAX_BYTES")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run zccl");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    let n = stdout.read(&mut first).unwrap();
    assert_eq!(n, 1, "zccl {args:?} printed nothing");
    let peak_kib = vm_hwm_kib(pid).expect("VmHWM of the running zccl");
    let cpu = cpu_time(pid).expect("CPU time of the running zccl");
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let wall = start.elapsed();
    let mut text = first.to_vec();
    text.append(&mut rest);
    assert!(
        text.len() > 128 << 10,
        "the measurement needs more output than a pipe holds (64 KiB; {} bytes)",
        text.len()
    );
    Measured {
        output: Output {
            status,
            stdout: text,
            stderr: Vec::new(),
        },
        peak_mib: peak_kib as f64 / 1024.0,
        cpu,
        wall,
    }
}

/// A 1600-GPU, 1600-NIC file (the size that took 25 s and 1.65 GB and
/// printed 577 MB of JSON) stays within 200 MB (75 MB measured), and
/// within 2 s of CPU time in a release build (0.2 s measured;
/// docs/topology.md, Limits) and 10 s in a debug one (under 2 s measured).
/// JSON, the table and --explain.
#[test]
fn a_1600_gpu_1600_nic_file_is_fast_and_small() {
    let cpu_limit = Duration::from_secs(if cfg!(debug_assertions) { 10 } else { 2 });
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.xml");
    std::fs::write(&file, zccl::topology::fake::many_devices_xml(1600, 1600)).unwrap();
    let file = file.to_str().unwrap();
    for args in [
        &["topo", "--topo-file", file, "--format", "json"][..],
        &["topo", "--topo-file", file][..],
        &["topo", "--topo-file", file, "--explain"][..],
    ] {
        let m = zccl_measured(args);
        let out = &m.output;
        assert!(out.status.success(), "zccl {args:?}: {}", out.status);
        eprintln!(
            "zccl {:?}: {:.2?} CPU, {:.2?} wall, peak {:.0} MiB, {} bytes out",
            &args[3..],
            m.cpu,
            m.wall,
            m.peak_mib,
            out.stdout.len()
        );
        assert!(
            m.peak_mib <= 200.0,
            "zccl {args:?}: peak memory {:.0} MiB",
            m.peak_mib
        );
        assert!(m.cpu <= cpu_limit, "zccl {args:?}: {:?} of CPU time", m.cpu);
        assert!(
            m.wall <= Duration::from_secs(120),
            "zccl {args:?}: {:?}",
            m.wall
        );
        assert!(
            out.stdout.len() <= 64 << 20,
            "{} bytes out",
            out.stdout.len()
        );
        if args.contains(&"json") {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let gpus = v["gpus"].as_array().unwrap();
            assert_eq!(gpus.len(), 1600);
            assert_eq!(v["nics"].as_array().unwrap().len(), 1600);
            for g in gpus {
                let nics = g["nics"].as_array().unwrap().len() as u64;
                assert_eq!(nics + g["nics_omitted"].as_u64().unwrap(), 1600);
                assert_eq!(g["closest_nics"].as_array().unwrap().len(), 2);
                assert_eq!(g["nics"][0]["path"], "PIX");
            }
        } else {
            let text = std::str::from_utf8(&out.stdout).unwrap();
            assert!(
                text.contains(
                    "Matrix (nvidia-smi topo -m labels): left out, 1600 GPUs and 1600 NICs"
                )
            );
            assert_eq!(
                text.contains("more NIC(s), not ranked here"),
                args.contains(&"--explain")
            );
        }
    }
}

#[test]
fn endless_and_oversized_files_are_refused() {
    let quick = Duration::from_secs(10);
    let (out, _) = zccl_within(&["topo", "--topo-file", "/dev/zero"], &[], quick);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("topology file /dev/zero is a character device, not a file or a pipe"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.xml");
    let mut text = String::from("<system version=\"1\">");
    text.push_str(&" ".repeat(16 << 20));
    text.push_str("</system>");
    std::fs::write(&big, &text).unwrap();
    let big = big.to_str().unwrap();
    let (out, _) = zccl_within(&["topo", "--topo-file", big], &[], quick);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "topology file {big} exceeds 16 MiB (ZCCL_TOPO_MAX_BYTES sets the limit)"
        )),
        "{err}"
    );
    // The limit can be raised, and lowered.
    let raised = [("ZCCL_TOPO_MAX_BYTES", "17M")];
    let (out, _) = zccl_within(
        &["topo", "--topo-file", big, "--format", "json"],
        &raised,
        quick,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let small = tmp.path().join("small.xml");
    std::fs::write(&small, zccl::topology::fake::many_devices_xml(2, 2)).unwrap();
    let small = small.to_str().unwrap();
    let lowered = [("ZCCL_TOPO_MAX_BYTES", "100")];
    let (out, _) = zccl_within(&["topo", "--topo-file", small], &lowered, quick);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("exceeds 100 bytes"), "{err}");
    let bad = [("ZCCL_TOPO_MAX_BYTES", "lots")];
    let (out, _) = zccl_within(&["topo", "--topo-file", small], &bad, quick);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("ZCCL_TOPO_MAX_BYTES=\"lots\" is not a number of bytes"),
        "{err}"
    );

    // Too many GPUs for one host (the 134k-GPU file ran for minutes): the
    // first one over the limit is named, at once.
    let many = tmp.path().join("many.xml");
    std::fs::write(&many, zccl::topology::fake::many_devices_xml(5000, 8)).unwrap();
    let (out, _) = zccl_within(&["topo", "--topo-file", many.to_str().unwrap()], &[], quick);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("many.xml:") && err.contains("<pci>: more than 4096 GPUs and accelerators"),
        "{err}"
    );
}

#[test]
fn nvlinks_to_garbage_are_refused_and_to_unknown_gpus_warned() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("nv.xml");
    let write = |links: &str| {
        std::fs::write(
            &file,
            format!(
                "<system version=\"1\">\n<cpu numaid=\"0\">\n\
                 <pci busid=\"0000:01:00.0\" class=\"0x030200\"><gpu dev=\"0\" sm=\"90\">\n{links}</gpu></pci>\n\
                 <pci busid=\"0000:02:00.0\" class=\"0x030200\"><gpu dev=\"1\" sm=\"90\"/></pci>\n\
                 </cpu>\n</system>\n"
            ),
        )
        .unwrap();
    };
    let path = file.to_str().unwrap();

    write("<nvlink target=\"not a bus id\" count=\"18\" tclass=\"0x030200\"/>\n");
    let err = failing(&["topo", "--topo-file", path]);
    assert!(
        err.contains("nv.xml:4: <nvlink>: target=\"not a bus id\" is not a PCI bus ID"),
        "{err}"
    );

    // A link to a GPU that is not in the file: ignored, as NCCL does, with
    // a warning.
    write("<nvlink target=\"0000:99:00.0\" count=\"18\" tclass=\"0x030200\"/>\n");
    let report = json(&["topo", "--topo-file", path, "--format", "json"]);
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].as_str().unwrap().contains(
            "<nvlink target=\"0000:99:00.0\"> of GPU 0000:01:00.0: no GPU has this bus ID"
        ),
        "{warnings:?}"
    );

    // A GPU's link to itself (Azure NC A100 v4 ships them) is accepted and
    // changes nothing; the link to the other GPU, in NVML's 8-digit form,
    // is an NVLink.
    write(
        "<nvlink target=\"0000:01:00.0\" count=\"12\" tclass=\"0x030200\"/>\n\
         <nvlink target=\"00000000:02:00.0\" count=\"12\" tclass=\"0x030200\"/>\n",
    );
    let report = json(&["topo", "--topo-file", path, "--format", "json"]);
    assert_eq!(report["warnings"], serde_json::json!([]));
    let text = ok_stdout(&["topo", "--topo-file", path]);
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("GPU0  ") && l.contains("NV12"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.split_whitespace().nth(1) == Some("X"), "{row}");
}
