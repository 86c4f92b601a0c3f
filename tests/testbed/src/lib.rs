//! # zccl-testbed
//!
//! A multi-host, multi-NIC network on one Linux machine, for testing and
//! measuring what crosses a network: each **host** is a network namespace,
//! each host has `nics` **NICs** (`nic0`, `nic1`, ...), and NIC `k` of every
//! host sits on **rail** `k`: a bridge in a fabric namespace, with its own
//! subnet `10.77.k.0/24` (host `i` is `10.77.k.(i+1)`). Every NIC can be
//! rate-limited with the `tbf` qdisc in both directions, taken down and
//! brought back, and its transmit counter read.
//!
//! ```text
//!   host 0 (ns)            fabric (ns)             host 1 (ns)
//!   nic0 10.77.0.1 ==tbf== [br0] ==tbf== nic0 10.77.0.2
//!   nic1 10.77.1.1 ==tbf== [br1] ==tbf== nic1 10.77.1.2
//! ```
//!
//! Needs root and iproute2 (`ip`, `tc`); [`Testbed::up`] returns
//! [`TestbedError::Unavailable`] otherwise, so that tests can skip with a
//! clear message. The namespaces have no route to anything else: traffic
//! only ever goes between addresses the testbed made. Everything is removed
//! when the [`Testbed`] is dropped (on a panic too), and [`sweep_stale`]
//! removes what a killed run left behind.
//!
//! ```no_run
//! use zccl_testbed::{Spec, Testbed};
//! let tb = Testbed::up(&Spec { hosts: 2, nics: 4, rate: Some("400mbit".into()), ..Spec::default() })?;
//! let out = tb.command(1, "ip").args(["-br", "addr"]).output()?;
//! assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.3.2"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::Ipv4Addr;
use std::process::Command;

/// What to build.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Number of hosts (namespaces), at least 1.
    pub hosts: usize,
    /// NICs per host (rails), 1 to 64.
    pub nics: usize,
    /// `tbf` rate per NIC and direction, in `tc` syntax (`400mbit`); `None`
    /// leaves the veth unlimited.
    pub rate: Option<String>,
    /// `tbf` burst (`256kb`).
    pub burst: String,
    /// `tbf` latency (`20ms`).
    pub latency: String,
    /// MTU of every NIC.
    pub mtu: u32,
    /// First two octets of every address; must be a private range.
    pub net: [u8; 2],
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            hosts: 2,
            nics: 2,
            rate: None,
            burst: "256kb".into(),
            latency: "20ms".into(),
            mtu: 1500,
            net: [10, 77],
        }
    }
}

/// Why a testbed could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// This machine cannot host a testbed (not root, no iproute2...). Tests
    /// skip on this one.
    #[error("testbed unavailable: {0}")]
    Unavailable(String),
    /// The spec asks for something impossible.
    #[error("bad testbed spec: {0}")]
    Spec(String),
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Entering a namespace or running a command failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The prefix of every namespace a testbed makes: `zccltb<pid>-`.
pub const NS_PREFIX: &str = "zccltb";

/// A running testbed; dropped, it removes everything it made.
#[derive(Debug)]
pub struct Testbed {
    spec: Spec,
    prefix: String,
    namespaces: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<String, TestbedError> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TestbedError::Command {
            cmd: format!("{cmd:?}").replace('"', ""),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, TestbedError> {
    run(Command::new("ip").args(args))
}

/// Check that this machine can host a testbed: root, `ip` and `tc`.
///
/// ```
/// // Either Ok, or an error that says what is missing.
/// if let Err(e) = zccl_testbed::available() {
///     assert!(e.to_string().starts_with("testbed unavailable"));
/// }
/// ```
pub fn available() -> Result<(), TestbedError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(TestbedError::Unavailable(
            "needs root to create network namespaces".into(),
        ));
    }
    for tool in ["ip", "tc"] {
        let ok = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Err(TestbedError::Unavailable(format!(
                "`{tool}` (iproute2) not found"
            )));
        }
    }
    Ok(())
}

/// Says that the calling test skips, and why: writes
/// `SKIPPED <test>: <reason>` to the process's standard error, where
/// `cargo test` shows it without `--nocapture` (libtest captures only what
/// the `print!`/`eprint!` macros write, not writes to [`std::io::stderr`]).
/// The test then returns; libtest still counts it as passed (stable Rust
/// cannot mark a test ignored at run time), so the line is what tells.
///
/// ```
/// zccl_testbed::skip("needs root"); // SKIPPED <the test's name>: needs root
/// ```
pub fn skip(reason: impl std::fmt::Display) {
    use std::io::Write;
    let thread = std::thread::current();
    // libtest names each test's thread after the test.
    let test = thread.name().filter(|n| *n != "main").unwrap_or("test");
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Remove namespaces left by testbeds whose process is gone (a run killed
/// with SIGKILL cannot clean up after itself). Returns what was removed.
pub fn sweep_stale() -> Vec<String> {
    let Ok(list) = ip(&["netns", "list"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive && ip(&["netns", "del", name]).is_ok() {
            removed.push(name.to_string());
        }
    }
    removed
}

impl Testbed {
    /// Build the testbed. On any failure, what was already made is removed.
    pub fn up(spec: &Spec) -> Result<Testbed, TestbedError> {
        available()?;
        if spec.hosts == 0 || spec.hosts > 200 {
            return Err(TestbedError::Spec(format!(
                "hosts = {} (1..=200)",
                spec.hosts
            )));
        }
        if spec.nics == 0 || spec.nics > 64 {
            return Err(TestbedError::Spec(format!("nics = {} (1..=64)", spec.nics)));
        }
        let private = spec.net[0] == 10 || (spec.net[0] == 192 && spec.net[1] == 168);
        if !private {
            return Err(TestbedError::Spec(format!(
                "net {}.{} is not a private range (10.x or 192.168)",
                spec.net[0], spec.net[1]
            )));
        }
        sweep_stale();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("{NS_PREFIX}{}-{seq}", std::process::id());
        let mut tb = Testbed {
            spec: spec.clone(),
            prefix,
            namespaces: Vec::new(),
        };
        tb.build()?; // on error, Drop removes the namespaces made so far
        Ok(tb)
    }

    fn build(&mut self) -> Result<(), TestbedError> {
        let fab = format!("{}-fab", self.prefix);
        self.add_ns(&fab)?;
        for k in 0..self.spec.nics {
            let br = format!("br{k}");
            ip(&["-n", &fab, "link", "add", &br, "type", "bridge"])?;
            ip(&["-n", &fab, "link", "set", &br, "up"])?;
        }
        let mtu = self.spec.mtu.to_string();
        for h in 0..self.spec.hosts {
            let ns = self.host_ns(h).to_string();
            self.add_ns(&ns)?;
            for k in 0..self.spec.nics {
                let nic = format!("nic{k}");
                let port = format!("h{h}n{k}");
                ip(&[
                    "link", "add", "name", &port, "netns", &fab, "mtu", &mtu, "type", "veth",
                    "peer", "name", &nic, "netns", &ns, "mtu", &mtu,
                ])?;
                ip(&[
                    "-n",
                    &fab,
                    "link",
                    "set",
                    &port,
                    "master",
                    &format!("br{k}"),
                ])?;
                ip(&["-n", &fab, "link", "set", &port, "up"])?;
                let addr = format!("{}/24", self.addr(h, k));
                ip(&["-n", &ns, "addr", "add", &addr, "dev", &nic])?;
                ip(&["-n", &ns, "link", "set", &nic, "up"])?;
                if let Some(rate) = self.spec.rate.clone() {
                    self.tbf(&ns, &nic, &rate, "add")?;
                    self.tbf(&fab, &port, &rate, "add")?;
                }
            }
        }
        Ok(())
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), TestbedError> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn tbf(&self, ns: &str, dev: &str, rate: &str, verb: &str) -> Result<(), TestbedError> {
        let s = &self.spec;
        run(Command::new("tc").args([
            "-n", ns, "qdisc", verb, "dev", dev, "root", "tbf", "rate", rate, "burst", &s.burst,
            "latency", &s.latency,
        ]))
        .map(|_| ())
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Namespace name of host `h`.
    pub fn host_ns(&self, h: usize) -> String {
        format!("{}-h{h}", self.prefix)
    }

    /// Namespace of the fabric (the rails' bridges).
    pub fn fabric_ns(&self) -> String {
        format!("{}-fab", self.prefix)
    }

    /// Interface name of NIC `k` inside a host.
    pub fn nic_name(k: usize) -> String {
        format!("nic{k}")
    }

    /// Address of host `h` on rail `k`: `10.77.k.(h+1)`.
    pub fn addr(&self, h: usize, k: usize) -> Ipv4Addr {
        let [a, b] = self.spec.net;
        Ipv4Addr::new(a, b, k as u8, (h + 1) as u8)
    }

    /// A command that runs `program` inside host `h`'s namespace.
    pub fn command(&self, h: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host_ns(h), program]);
        c
    }

    /// Run `f` on a new thread that has entered host `h`'s network
    /// namespace: sockets it opens live in that host.
    pub fn in_host<T: Send + 'static>(
        &self,
        h: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, TestbedError>> {
        let path = format!("/run/netns/{}", self.host_ns(h));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| TestbedError::Io(std::io::Error::from(e)))?;
            Ok(f())
        })
    }

    /// Take NIC `k` of host `h` down (`false`) or bring it back (`true`).
    pub fn set_link(&self, h: usize, k: usize, up: bool) -> Result<(), TestbedError> {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.host_ns(h),
            "link",
            "set",
            &Self::nic_name(k),
            state,
        ])
        .map(|_| ())
    }

    /// Change the rate of NIC `k` of host `h`, both directions.
    pub fn set_rate(&self, h: usize, k: usize, rate: &str) -> Result<(), TestbedError> {
        let verb = if self.spec.rate.is_some() {
            "change"
        } else {
            "replace"
        };
        self.tbf(&self.host_ns(h), &Self::nic_name(k), rate, verb)?;
        self.tbf(&self.fabric_ns(), &format!("h{h}n{k}"), rate, verb)
    }

    /// Bytes sent by NIC `k` of host `h` since it was made.
    pub fn tx_bytes(&self, h: usize, k: usize) -> Result<u64, TestbedError> {
        self.counter(h, k, "tx_bytes")
    }

    /// Bytes received by NIC `k` of host `h` since it was made.
    pub fn rx_bytes(&self, h: usize, k: usize) -> Result<u64, TestbedError> {
        self.counter(h, k, "rx_bytes")
    }

    fn counter(&self, h: usize, k: usize, name: &str) -> Result<u64, TestbedError> {
        let file = format!("/sys/class/net/{}/statistics/{name}", Self::nic_name(k));
        let out = run(self.command(h, "cat").arg(&file))?;
        out.trim().parse().map_err(|_| TestbedError::Command {
            cmd: format!("cat {file}"),
            stderr: format!("not a number: {out:?}"),
        })
    }

    /// An NCCL topology XML for host `h` with `ranks` GPUs: GPU `r` shares a
    /// PCIe switch with NIC `r % nics` (the layout of Azure's and AWS's
    /// files), and each NIC is a `<net>` named like its interface, with its
    /// rate as speed and its rail. Read it with `ZCCL_TOPO_FILE`.
    pub fn topo_xml(&self, ranks: usize) -> String {
        topo_xml(&self.spec, ranks)
    }
}

/// The topology file [`Testbed::topo_xml`] writes, from the spec alone.
/// Supports up to 127 ranks per host.
///
/// ```
/// let xml = zccl_testbed::topo_xml(&zccl_testbed::Spec::default(), 2);
/// assert!(xml.contains("<net name=\"nic1\""));
/// ```
pub fn topo_xml(spec: &Spec, ranks: usize) -> String {
    let speed = spec.rate.as_deref().and_then(rate_mbps).unwrap_or(10_000);
    let nics = spec.nics;
    let mut out = String::from("<system version=\"1\">\n  <cpu numaid=\"0\" arch=\"x86_64\">\n");
    for k in 0..nics {
        out.push_str(&format!(
                "    <pci busid=\"ffff:ff:{:02x}.0\" class=\"0x060400\" link_speed=\"16.0 GT/s PCIe\" link_width=\"16\">\n",
                k + 1
            ));
        for r in (k..ranks).step_by(nics) {
            out.push_str(&format!(
                    "      <pci busid=\"0000:{:02x}:00.0\" class=\"0x030200\" link_speed=\"16.0 GT/s PCIe\" link_width=\"16\"/>\n",
                    r + 1
                ));
        }
        out.push_str(&format!(
                "      <pci busid=\"0000:{:02x}:00.0\" class=\"0x020000\" link_speed=\"16.0 GT/s PCIe\" link_width=\"16\">\n        <nic>\n          <net name=\"nic{k}\" dev=\"{k}\" speed=\"{speed}\" port=\"0\" rail=\"{k}\" netdev=\"nic{k}\"/>\n        </nic>\n      </pci>\n",
                0x80 + k
            ));
        out.push_str("    </pci>\n");
    }
    out.push_str("  </cpu>\n</system>\n");
    out
}

/// Parse a `tc` rate into bits per second: a number with a unit, decimal
/// (`bit`, `kbit`, `mbit`, `gbit`, `tbit`; `bps`, `kbps`, `mbps`, `gbps`,
/// `tbps`, which are *bytes* per second as in `tc`) or binary (`kibit`,
/// `mibit`, `gibit`, `tibit`; `kibps` ...), any case; a bare number is bits
/// per second, as in `tc`.
///
/// ```
/// assert_eq!(zccl_testbed::rate_bps("200mbit"), Some(200_000_000));
/// assert_eq!(zccl_testbed::rate_bps("1.5Gbit"), Some(1_500_000_000));
/// assert_eq!(zccl_testbed::rate_bps("10mbps"), Some(80_000_000));
/// assert_eq!(zccl_testbed::rate_bps("1kibit"), Some(1024));
/// assert_eq!(zccl_testbed::rate_bps("5000"), Some(5000));
/// assert_eq!(zccl_testbed::rate_bps("fast"), None);
/// assert_eq!(zccl_testbed::rate_bps("-1mbit"), None);
/// ```
pub fn rate_bps(rate: &str) -> Option<u64> {
    let r = rate.trim().to_ascii_lowercase();
    let split = r
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(r.len());
    let (num, unit) = r.split_at(split);
    let v: f64 = num.parse().ok()?;
    let (prefix, bytes) = if let Some(p) = unit.strip_suffix("bit") {
        (p, false)
    } else if let Some(p) = unit.strip_suffix("bps") {
        (p, true)
    } else if unit.is_empty() {
        ("", false)
    } else {
        return None;
    };
    let scale: f64 = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bps = v * scale * if bytes { 8.0 } else { 1.0 };
    (bps.is_finite() && bps >= 1.0).then(|| bps.round() as u64)
}

/// Parse a `tc` rate (`400mbit`, `1gbit`, `500kbit`) into Mb/s.
///
/// ```
/// assert_eq!(zccl_testbed::rate_mbps("400mbit"), Some(400));
/// assert_eq!(zccl_testbed::rate_mbps("1gbit"), Some(1000));
/// assert_eq!(zccl_testbed::rate_mbps("fast"), None);
/// ```
pub fn rate_mbps(rate: &str) -> Option<u64> {
    let r = rate.to_ascii_lowercase();
    let split = r.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = r.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mbps = match unit {
        "kbit" => v / 1000.0,
        "mbit" => v,
        "gbit" => v * 1000.0,
        _ => return None,
    };
    Some(mbps.round() as u64)
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}
